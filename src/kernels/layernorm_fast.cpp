// The default LayerNorm kernels: OpenMP over rows, vector loops over a row.
// A row (D values) stays in L1/L2 while it is worked on, so x is read from
// memory once and y (or dx) written once. Tested against ref:: in
// tests/test_kernels_fast.cpp; timings in docs/performance.md.
#include <cmath>

#include "kernels/norm_common.hpp"
#include "normlab/kernels.hpp"

namespace normlab {

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps) {
  const bool stream = detail::stream_output<T>(N * D);
#pragma omp parallel num_threads(detail::kernel_threads(N* D))
  {
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      T* yr = y + n * D;
      // Moments around the row's first value (exact centring for large means, see
      // shifted_moments); m is the mean of x - shift.
      if (n + 1 < N) detail::prefetch_row(xr + D, D);
      const T shift = xr[0];
      const detail::Moments<T> mo = detail::shifted_moments(xr, D, shift);
      const T m = mo.mean, r = T(1) / std::sqrt(mo.m2 / static_cast<T>(D) + eps);
      mean[n] = shift + m;
      rstd[n] = r;
      // Normalize and affine in one multiply-add per element (gamma varies along the row).
      if (gamma && beta)
        detail::map_row(
            yr, D, stream, [=](auto v, auto g, auto b) { return (v - shift - m) * (r * g) + b; },
            xr, gamma, beta);
      else if (gamma)
        detail::map_row(
            yr, D, stream, [=](auto v, auto g) { return (v - shift - m) * (r * g); }, xr, gamma);
      else if (beta)
        detail::map_row(
            yr, D, stream, [=](auto v, auto b) { return (v - shift) * r + (b - m * r); }, xr, beta);
      else
        detail::map_row(
            yr, D, stream, [=](auto v) { return (v - shift) * r - m * r; }, xr);
    }
    if (stream) detail::stream_fence();
  }
}

// Per row, with g = dy * gamma and xhat = (x - mean) * rstd:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))     (docs/derivations.md)
// The row is read from memory once (by the first row sum); the second sum, the
// row's share of dgamma and dbeta (into this thread's partial sums) and dx work
// on it in L1. Without dx, the sums are skipped.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D) {
  const int threads = detail::kernel_threads(N * D);
  const bool stream = detail::stream_output<T>(N * D);
  const int64_t Dp = detail::padded(D);
  T* partial = detail::scratch<T>(2 * Dp * threads);  // per thread: dgamma (D), dbeta (D)
#pragma omp parallel num_threads(threads)
  {
    T* dg = partial + 2 * Dp * omp_get_thread_num();
    T* db = dg + Dp;
    std::fill(dg, dg + 2 * Dp, T(0));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      const T* dyr = dy + n * D;
      const T m = mean[n], r = rstd[n];
      if (n + 1 < N) {
        detail::prefetch_row(xr + D, D);
        detail::prefetch_row(dyr + D, D);
      }
      // The saved mean is the row mean rounded to T; for inputs like 1e4 + 0.01 * randn
      // that rounding is a few % of the spread. The exact mean is m + delta with
      // delta = mean(x - m), so every (x - m) below becomes xc = (x - m) - delta.
      // With g = dy * gamma: dx = g * r + xc * c1 + c0, where c1 = -r^3 * mean(g * xc)
      // and c0 = -r * mean(g); folded: (x - m) * c1 + (c0 - delta * c1). The row sums
      // come first: loads only, so the row streams in from memory at full speed.
      const T inv_d = T(1) / static_cast<T>(D);
      const T delta = detail::sum_row<T>(
                          D, [=](auto v) { return v - m; }, xr) *
                      inv_d;
      T sg = 0, sgx = 0;
      if (dx && gamma) {
        sg = detail::sum_row<T>(
            D, [](auto dv, auto gm) { return dv * gm; }, dyr, gamma);
        sgx = detail::sum_row<T>(
            D, [=](auto v, auto dv, auto gm) { return dv * gm * (v - m); }, xr, dyr, gamma);
      } else if (dx) {
        sg = detail::sum_row<T>(
            D, [](auto dv) { return dv; }, dyr);
        sgx = detail::sum_row<T>(
            D, [=](auto v, auto dv) { return dv * (v - m); }, xr, dyr);
      }
      // The row's share of dgamma (dy * xhat) and dbeta (dy), from L1.
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        dg[d] += dyr[d] * (((xr[d] - m) - delta) * r);
        db[d] += dyr[d];
      }
      if (!dx) continue;
      // Multiplied in this order so that r^3 never underflows on its own (spreads near 1e17).
      const T c1 = -((((sgx - delta * sg) * inv_d) * r) * r) * r, c0 = -r * sg * inv_d - delta * c1;
      if (gamma)
        detail::map_row(
            dx + n * D, D, stream,
            [=](auto v, auto dv, auto gm) { return dv * gm * r + (v - m) * c1 + c0; }, xr, dyr,
            gamma);
      else
        detail::map_row(
            dx + n * D, D, stream, [=](auto v, auto dv) { return dv * r + (v - m) * c1 + c0; }, xr,
            dyr);
    }
    if (stream) detail::stream_fence();
    // The threads' partial sums, added into the accumulating parameter gradients.
    const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      T sg = 0, sb = 0;
      for (int t = 0; t < nt; ++t) {
        sg += partial[2 * Dp * t + d];
        sb += partial[2 * Dp * t + Dp + d];
      }
      if (dgamma) dgamma[d] += sg;
      if (dbeta) dbeta[d] += sb;
    }
  }
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t);

}  // namespace normlab
