// WeightNorm: w = g * v / ||v||. Per-row norms (the common case) share their
// row code with the fused WeightNormLinear kernels (weightnorm_rows.hpp); every
// norm goes through kernels/vector_norm.hpp (no overflow or underflow), and
// g / norm is applied in double.
#include <cmath>
#include <vector>

#include "kernels/isa.hpp"
#include "kernels/vector_norm.hpp"
#include "kernels/weightnorm_rows.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

template <typename T>
void weightnorm_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I, bool per_row) {
  if (per_row) {
#pragma omp parallel for schedule(static) if (O * I > (1 << 16))
    for (int64_t o = 0; o < O; ++o) detail::weightnorm_rows_forward(w, norm, v, g, I, o, o + 1);
  } else {
    const double n = detail::norm2(v, O * I);
    norm[0] = static_cast<T>(n);
    const double scale = g[0] / n;
    for (int64_t k = 0; k < O * I; ++k) w[k] = static_cast<T>(v[k] * scale);
  }
}

// With s = sum(dw * v) over the normalized group and n = ||v||:
//   dg += s / n,   dv += (g / n) * (dw - (s / n^2) * v).
template <typename T>
void weightnorm_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                         int64_t O, int64_t I, bool per_row) {
  if (per_row) {
#pragma omp parallel for schedule(static) if (O * I > (1 << 16))
    for (int64_t o = 0; o < O; ++o)
      detail::weightnorm_rows_backward(dv, dg, dw, v, g, norm, I, o, o + 1);
    return;
  }
  double s = 0;
  for (int64_t k = 0; k < O * I; ++k) s += static_cast<double>(dw[k]) * v[k];
  const double n = norm[0];
  dg[0] += static_cast<T>(s / n);
  const double a = g[0] / n, b = a * (s / n) / n;
  for (int64_t k = 0; k < O * I; ++k) dv[k] += static_cast<T>(a * dw[k] - b * v[k]);
}

namespace {
// Per-column scratch: I doubles for the sums (slot 0), 3 * I for the norms (slot 1).
std::vector<double>& column_sums(int64_t I) {
  thread_local std::vector<double> sums;
  sums.assign(static_cast<size_t>(I), 0.0);
  return sums;
}
double* column_norm_work(int64_t I) {
  thread_local std::vector<double> work;
  if (static_cast<int64_t>(work.size()) < 3 * I) work.resize(static_cast<size_t>(3 * I));
  return work.data();
}
}  // namespace

template <typename T>
void weightnorm_columns_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I) {
  double* n = column_norm_work(I);
  detail::column_norms(n, n + I, v, O, I);
  for (int64_t i = 0; i < I; ++i) norm[i] = static_cast<T>(n[i]);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      w[o * I + i] = static_cast<T>(static_cast<double>(g[o * I + i]) * (v[o * I + i] / n[i]));
}

// w[o,i] = g[o,i] v[o,i] / n_i with n_i = ||v[:,i]||; s_i = sum_k dw[k,i] g[k,i] v[k,i]:
//   dg[o,i] += dw[o,i] v[o,i] / n_i,   dv[o,i] += dw[o,i] g[o,i] / n_i - s_i v[o,i] / n_i^3.
template <typename T>
void weightnorm_columns_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                                 int64_t O, int64_t I) {
  std::vector<double>& s = column_sums(I);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i)
      s[i] += static_cast<double>(dw[o * I + i]) * g[o * I + i] * v[o * I + i];
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      const double n = norm[i];
      dg[o * I + i] += static_cast<T>(dw[o * I + i] * (v[o * I + i] / n));
      dv[o * I + i] +=
          static_cast<T>(dw[o * I + i] * (g[o * I + i] / n) - (s[i] / n) / n * (v[o * I + i] / n));
    }
}

// PyTorch's dim=1 on an (O, I) weight: one norm and one g per input column,
// w[o,i] = g[i] v[o,i] / n_i, n_i = ||v[:,i]||; with c_i = sum_o dw[o,i] v[o,i]:
//   dg[i] += c_i / n_i,   dv[o,i] += (g_i / n_i) dw[o,i] - (g_i c_i / n_i^3) v[o,i]
// (docs/derivations.md). Norms by column_norms: no overflow or underflow.
template <typename T>
void weightnorm_dim1_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I) {
  double* n = column_norm_work(I);
  double* scale = n + 2 * I;  // column_norms uses n[0, 2I) as its scratch, then scale
  detail::column_norms(n, n + I, v, O, I);
  for (int64_t i = 0; i < I; ++i) {
    norm[i] = static_cast<T>(n[i]);
    scale[i] = g[i] / n[i];  // g may alias norm: read after it is written
  }
  for (int64_t o = 0; o < O; ++o) {
    const T* vr = v + o * I;
    T* wr = w + o * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) wr[i] = static_cast<T>(vr[i] * scale[i]);
  }
}

template <typename T>
void weightnorm_dim1_backward(T* dv, T* dg, const T* dw, const T* v, const T* g, const T* norm,
                              int64_t O, int64_t I) {
  std::vector<double>& c = column_sums(I);
  for (int64_t o = 0; o < O; ++o) {
    const T* vr = v + o * I;
    const T* dwr = dw + o * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) c[i] += static_cast<double>(dwr[i]) * vr[i];
  }
  double* a = column_norm_work(I);  // a[i] = g_i / n_i, b[i] = g_i c_i / n_i^3
  double* b = a + I;
  for (int64_t i = 0; i < I; ++i) {
    const double n = norm[i];
    dg[i] += static_cast<T>(c[i] / n);
    a[i] = g[i] / n;
    b[i] = a[i] * (c[i] / n) / n;
  }
  for (int64_t o = 0; o < O; ++o) {
    const T* vr = v + o * I;
    const T* dwr = dw + o * I;
    T* dvr = dv + o * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) dvr[i] += static_cast<T>(a[i] * dwr[i] - b[i] * vr[i]);
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                    \
  NORMLAB_KERNEL(weightnorm_forward, T, T*, T*, const T*, const T*, int64_t, int64_t, bool)       \
  NORMLAB_KERNEL(weightnorm_backward, T, T*, T*, const T*, const T*, const T*, const T*, int64_t, \
                 int64_t, bool)                                                                   \
  NORMLAB_KERNEL(weightnorm_columns_forward, T, T*, T*, const T*, const T*, int64_t, int64_t)     \
  NORMLAB_KERNEL(weightnorm_columns_backward, T, T*, T*, const T*, const T*, const T*, const T*,  \
                 int64_t, int64_t)                                                                \
  NORMLAB_KERNEL(weightnorm_dim1_forward, T, T*, T*, const T*, const T*, int64_t, int64_t)        \
  NORMLAB_KERNEL(weightnorm_dim1_backward, T, T*, T*, const T*, const T*, const T*, const T*,     \
                 int64_t, int64_t)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
