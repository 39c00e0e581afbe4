// WeightNorm: w = g * v / ||v||. Per-row norms (the common case) share their
// row code with the fused WeightNormLinear kernels (weightnorm_rows.hpp); the
// whole-matrix norm and the notebook's per-column norms sum in double.
#include <cmath>
#include <vector>

#include "kernels/weightnorm_rows.hpp"
#include "normlab/kernels.hpp"

namespace normlab {

template <typename T>
void weightnorm_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I, bool per_row) {
  if (per_row) {
#pragma omp parallel for schedule(static) if (O * I > (1 << 16))
    for (int64_t o = 0; o < O; ++o) detail::weightnorm_rows_forward(w, norm, v, g, I, o, o + 1);
  } else {
    double ss = 0;
    for (int64_t k = 0; k < O * I; ++k) ss += static_cast<double>(v[k]) * v[k];
    norm[0] = static_cast<T>(std::sqrt(ss));
    const T scale = static_cast<T>(g[0] / std::sqrt(ss));
    for (int64_t k = 0; k < O * I; ++k) w[k] = v[k] * scale;
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
  const double a = g[0] / n, b = g[0] * s / (n * n * n);
  for (int64_t k = 0; k < O * I; ++k) dv[k] += static_cast<T>(a * dw[k] - b * v[k]);
}

namespace {
std::vector<double>& column_sums(int64_t I) {
  thread_local std::vector<double> sums;
  sums.assign(static_cast<size_t>(I), 0.0);
  return sums;
}
}  // namespace

template <typename T>
void weightnorm_columns_forward(T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I) {
  std::vector<double>& ss = column_sums(I);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) ss[i] += static_cast<double>(v[o * I + i]) * v[o * I + i];
  for (int64_t i = 0; i < I; ++i) norm[i] = static_cast<T>(std::sqrt(ss[i]));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) w[o * I + i] = g[o * I + i] * v[o * I + i] / norm[i];
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
      dg[o * I + i] += static_cast<T>(dw[o * I + i] * v[o * I + i] / n);
      dv[o * I + i] +=
          static_cast<T>(dw[o * I + i] * g[o * I + i] / n - s[i] * v[o * I + i] / (n * n * n));
    }
}

#define NORMLAB_INSTANTIATE(T)                                                                  \
  template void weightnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, bool);      \
  template void weightnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, \
                                       int64_t, bool);                                          \
  template void weightnorm_columns_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t);    \
  template void weightnorm_columns_backward<T>(T*, T*, const T*, const T*, const T*, const T*,  \
                                               int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
