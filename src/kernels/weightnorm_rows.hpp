// WeightNorm with one norm per output row (PyTorch dim=0), over a range of
// rows [o0, o1), for weightnorm_forward / weightnorm_backward (per_row).
// Norms through norm2 (kernels/vector_norm.hpp); derivation in docs/derivations.md.
#pragma once
#include <cmath>
#include <cstdint>
#include "kernels/isa.hpp"

#include "kernels/vector_norm.hpp"

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

// w[o, :] = g[o] * v[o, :] / ||v[o, :]||, norm[o] = ||v[o, :]|| for o in [o0, o1).
// g may alias norm (then w = v): norm[o] is written before g[o] is read. The
// norm comes from norm2 (no overflow or underflow) and g / norm is applied in
// double, so w is right wherever it is a finite float.
template <typename T>
void weightnorm_rows_forward(T* w, T* norm, const T* v, const T* g, int64_t I, int64_t o0,
                             int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* vr = v + o * I;
    T* wr = w + o * I;
    const double n = norm2(vr, I);
    norm[o] = static_cast<T>(n);
    const double scale = g[o] / n;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) wr[i] = static_cast<T>(vr[i] * scale);
  }
}

// With s = sum_i dw[o,i] v[o,i] and n = norm[o]:
//   dg[o] += s / n,   dv[o,:] += (g/n) dw[o,:] - (g s / n^3) v[o,:]
// (s summed and the coefficients applied in double: n^3 overflows float at
// n = 7e12).
template <typename T>
void weightnorm_rows_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                              int64_t I, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* vr = v + o * I;
    const T* dwr = dw + o * I;
    T* dvr = dv + o * I;
    const double s = sum_row_wide<T>(
        I, [](auto a, auto b) { return a * b; }, dwr, vr);
    const double n = norm[o];
    dg[o] += static_cast<T>(s / n);
    const double a = g[o] / n, b = a * (s / n) / n;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) dvr[i] += static_cast<T>(a * dwr[i] - b * vr[i]);
  }
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
