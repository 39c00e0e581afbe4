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
  const int threads = detail::kernel_threads(N * D);
  const bool stream = detail::stream_output<T>(N * D, D);
  const int64_t Dp = detail::padded(D);
  T* rows = stream ? detail::scratch<T>(Dp * threads) : nullptr;  // per thread: one output row
#pragma omp parallel num_threads(threads)
  {
    T* row = stream ? rows + Dp * omp_get_thread_num() : nullptr;
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      T* yr = stream ? row : y + n * D;
      // Moments around the row's first value (exact centring for large means, see
      // shifted_moments); m is the mean of x - shift.
      const T shift = xr[0];
      const auto [m, m2] = detail::shifted_moments(xr, D, shift);
      const T r = T(1) / std::sqrt(m2 / static_cast<T>(D) + eps);
      mean[n] = shift + m;
      rstd[n] = r;
      if (gamma && beta) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - shift - m) * (r * gamma[d]) + beta[d];
      } else if (gamma) {
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - shift - m) * (r * gamma[d]);
      } else {
        const T b0 = -m * r;  // normalize folded into one multiply-add: y = (x - shift) * r + b0
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] - shift) * r + (beta ? beta[d] + b0 : b0);
      }
      if (stream) detail::stream_store(y + n * D, row, D);
    }
    if (stream) detail::stream_fence();
  }
}

// Per row, with g = dy * gamma and xhat = (x - mean) * rstd:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))     (docs/derivations.md)
// One pass over the row gathers both means and the row's share of dgamma and
// dbeta (into this thread's partial sums); a second pass, from L1, writes dx.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D) {
  const int threads = detail::kernel_threads(N * D);
  const bool stream = detail::stream_output<T>(N * D, D);
  const int64_t Dp = detail::padded(D);
  // Per thread: dgamma (D) and dbeta (D) partial sums, one dx row for streaming.
  T* partial = detail::scratch<T>(3 * Dp * threads);
#pragma omp parallel num_threads(threads)
  {
    T* dg = partial + 3 * Dp * omp_get_thread_num();
    T* db = dg + Dp;
    T* row = db + Dp;
    std::fill(dg, dg + 2 * Dp, T(0));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      const T* dyr = dy + n * D;
      const T m = mean[n], r = rstd[n];
      T sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t d = 0; d < D; ++d) {
        const T xhat = (xr[d] - m) * r;
        const T g = gamma ? dyr[d] * gamma[d] : dyr[d];
        sum_g += g;
        sum_gx += g * xhat;
        dg[d] += dyr[d] * xhat;
        db[d] += dyr[d];
      }
      if (!dx) continue;
      const T mg = sum_g / static_cast<T>(D), mgx = sum_gx / static_cast<T>(D);
      T* dxr = stream ? row : dx + n * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        const T xhat = (xr[d] - m) * r;
        const T g = gamma ? dyr[d] * gamma[d] : dyr[d];
        dxr[d] = r * (g - mg - xhat * mgx);
      }
      if (stream) detail::stream_store(dx + n * D, row, D);
    }
    if (stream) detail::stream_fence();
    // The threads' partial sums, added into the accumulating parameter gradients.
    const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      T sg = 0, sb = 0;
      for (int t = 0; t < nt; ++t) {
        sg += partial[3 * Dp * t + d];
        sb += partial[3 * Dp * t + Dp + d];
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
