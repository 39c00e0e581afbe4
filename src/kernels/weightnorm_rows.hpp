// WeightNorm with one norm per output row (PyTorch dim=0), over a range of
// rows [o0, o1), for weightnorm_forward / weightnorm_backward (per_row).
// Sums run in T with vector lanes (float for float: a row has ~1e3 values,
// so the rounding stays near float's epsilon); derivation in docs/derivations.md.
#pragma once
#include <cmath>
#include <cstdint>

namespace normlab::detail {

// w[o, :] = g[o] * v[o, :] / ||v[o, :]||, norm[o] = ||v[o, :]|| for o in [o0, o1).
// g may alias norm (then w = v): norm[o] is written before g[o] is read.
template <typename T>
void weightnorm_rows_forward(T* w, T* norm, const T* v, const T* g, int64_t I, int64_t o0,
                             int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* vr = v + o * I;
    T* wr = w + o * I;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < I; ++i) ss += vr[i] * vr[i];
    const T n = std::sqrt(ss);
    norm[o] = n;
    const T scale = g[o] / n;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) wr[i] = vr[i] * scale;
  }
}

// With s = sum_i dw[o,i] v[o,i] and n = norm[o]:
//   dg[o] += s / n,   dv[o,:] += (g/n) dw[o,:] - (g s / n^3) v[o,:].
template <typename T>
void weightnorm_rows_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                              int64_t I, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* vr = v + o * I;
    const T* dwr = dw + o * I;
    T* dvr = dv + o * I;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < I; ++i) s += dwr[i] * vr[i];
    const double n = norm[o];
    dg[o] += static_cast<T>(s / n);
    const T a = static_cast<T>(g[o] / n), b = static_cast<T>(g[o] * s / (n * n * n));
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) dvr[i] += a * dwr[i] - b * vr[i];
  }
}

}  // namespace normlab::detail
