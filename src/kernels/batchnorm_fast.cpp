// The default BatchNorm kernels. Statistics are per channel, i.e. reductions
// over the rows of x, so the threads split the rows, not the channels:
//   (N,C), L = 1: each thread sums its rows per channel in one pass (shifted
//     sums for the forward, see forward_train_rows), the partial sums are
//     merged per channel, and a second pass over the thread's rows applies the
//     per-channel multiply-add. x is read twice, y written once.
//   (N,C,L), L > 1: each channel's N segments of L contiguous values belong to
//     one thread (OpenMP over channels); segment moments are Chan-merged.
// Large means stay exact by summing x - shift with a shift near each channel's
// mean (a value of the data or a block mean, see shifted_moments). Derivations:
// docs/derivations.md; why: docs/performance.md.
#include <cmath>

#include "kernels/norm_common.hpp"
#include "normlab/kernels.hpp"

namespace normlab {
namespace {

using detail::chan_merge;

// ---- (N,C): rows split across threads, per-thread per-channel partial sums ----

// The rows [r0, r1) of the thread's block: s1[c] += sum (x - K[c]), s2[c] += sum (x - K[c])^2.
// Four rows per step, so the sums are loaded and stored once per four rows.
template <typename T>
void add_shifted_sums(T* s1, T* s2, const T* x, const T* K, int64_t r0, int64_t r1, int64_t C) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const T* x0 = x + r * C;
    const T *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d0 = x0[c] - K[c], d1 = x1[c] - K[c], d2 = x2[c] - K[c], d3 = x3[c] - K[c];
      s1[c] += (d0 + d1) + (d2 + d3);
      s2[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (; r < r1; ++r) {
    const T* xr = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d = xr[c] - K[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// The rows [r0, r1): s[c] += sum dy, q[c] += sum dy * (x - mean[c]),
// p[c] += sum (x - mean[c]); four rows per step. p measures how far the saved
// (float-rounded) mean is from the data's: see backward_rows.
template <typename T>
void add_grad_sums(T* s, T* q, T* p, const T* dy, const T* x, const T* mean, int64_t r0, int64_t r1,
                   int64_t C) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const T *x0 = x + r * C, *g0 = dy + r * C;
    const T *x1 = x0 + C, *x2 = x1 + C, *x3 = x2 + C, *g1 = g0 + C, *g2 = g1 + C, *g3 = g2 + C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d0 = x0[c] - mean[c], d1 = x1[c] - mean[c], d2 = x2[c] - mean[c],
              d3 = x3[c] - mean[c];
      s[c] += (g0[c] + g1[c]) + (g2[c] + g3[c]);
      q[c] += (g0[c] * d0 + g1[c] * d1) + (g2[c] * d2 + g3[c] * d3);
      p[c] += (d0 + d1) + (d2 + d3);
    }
  }
  for (; r < r1; ++r) {
    const T *xr = x + r * C, *gr = dy + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const T d = xr[c] - mean[c];
      s[c] += gr[c];
      q[c] += gr[c] * d;
      p[c] += d;
    }
  }
}

// Adds the block sums (T) into the thread's totals (double) and clears them.
template <typename T>
void flush_block(double* t1, double* t2, T* b1, T* b2, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    t1[c] += b1[c];
    t2[c] += b2[c];
    b1[c] = b2[c] = T(0);
  }
}
template <typename T>
void flush_block(double* t1, double* t2, double* t3, T* b1, T* b2, T* b3, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    t1[c] += b1[c];
    t2[c] += b2[c];
    t3[c] += b3[c];
    b1[c] = b2[c] = b3[c] = T(0);
  }
}

// Statistics in one pass over x: each thread sums x - K and (x - K)^2 per
// channel, with K its first block's mean (one extra pass over that cached
// block). With K within a few standard deviations of the mean the one-pass
// variance S2 - S1^2 / n loses almost nothing, and large means stay exact;
// the threads' (n, mean, M2) are then Chan-merged in double.
template <typename T>
void forward_train_rows(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                        int64_t N, int64_t C, T eps) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C);
  // Per thread: shift K, block sums b1, b2 (T); totals S1, S2 (double). Shared: K, a, b for y.
  T* work = detail::scratch<T>(Cp * (3 * threads + 3));
  double* totals = detail::scratch<double, 1>(2 * Cp * threads);
  T* shift = work + 3 * Cp * threads;
  T* a = shift + Cp;
  T* b = a + Cp;
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    T* K = work + 3 * Cp * t;
    T* b1 = K + Cp;
    T* b2 = b1 + Cp;
    double* S1 = totals + 2 * Cp * t;
    double* S2 = S1 + Cp;
    std::fill(b1, b1 + 2 * Cp, T(0));
    std::fill(S1, S1 + 2 * Cp, 0.0);
    if (r0 < r1) {  // K = mean of the first block, summed around its first row
      const int64_t e = std::min(r0 + detail::kBlockRows, r1);
      std::copy(x + r0 * C, x + r0 * C + C, K);
      add_shifted_sums(b1, b2, x, K, r0, e, C);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        K[c] += b1[c] / static_cast<T>(e - r0);
        b1[c] = b2[c] = T(0);
      }
    }
    for (int64_t b0 = r0; b0 < r1; b0 += detail::kBlockRows) {
      add_shifted_sums(b1, b2, x, K, b0, std::min(b0 + detail::kBlockRows, r1), C);
      flush_block(S1, S2, b1, b2, C);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double n = 0, m = 0, q = 0;
      for (int u = 0; u < nt; ++u) {
        const double nu = static_cast<double>(N * (u + 1) / nt - N * u / nt);
        if (nu == 0) continue;
        const double s1 = totals[2 * Cp * u + c], s2 = totals[2 * Cp * u + Cp + c];
        chan_merge(n, m, q, nu, work[3 * Cp * u + c] + s1 / nu, std::max(0.0, s2 - s1 * s1 / nu));
      }
      const double v = q / n, r = 1.0 / std::sqrt(v + eps);
      const double ac = gamma ? r * gamma[c] : r;
      mean[c] = static_cast<T>(m);
      rstd[c] = static_cast<T>(r);
      if (var) var[c] = static_cast<T>(v);
      // y = (x - shift) * a + b with shift = mean rounded to T: x - shift is exact
      // near the mean, and the rounding of the mean goes into b.
      shift[c] = static_cast<T>(m);
      a[c] = static_cast<T>(ac);
      b[c] = static_cast<T>((beta ? beta[c] : 0.0) - (m - shift[c]) * ac);
    }
    // Rows in plain order: visiting the newest block first (hoping for L3 hits)
    // measured 3-9 % slower here, interleaved in one process (docs/performance.md).
    for (int64_t r = r0; r < r1; ++r)
      detail::map_row(
          y + r * C, C, stream, [](auto v, auto k, auto ac, auto bc) { return (v - k) * ac + bc; },
          x + r * C, shift, a, b);
    if (stream) detail::stream_fence();
  }
}

// Backward, train and eval. With xhat = (x - mean) * rstd, A = gamma * rstd, M = N:
//   train: dx = A * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M)
//        = A * dy + (x - mean) * Bc + Cc, with per-channel Bc, Cc;
//   eval:  dx = A * dy (the statistics are constants), written in the reduction pass.
// One pass gathers both per-channel sums (per-thread partial sums).
template <typename T>
void backward_rows(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                   const T* rstd, const T* gamma, int64_t N, int64_t C) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C);
  // Per thread: block sums of dy, dy * (x - mean) and x - mean (T), their
  // totals (double). Shared: A, Bc, Cc.
  T* work = detail::scratch<T>(Cp * (3 * threads + 3));
  double* totals = detail::scratch<double, 1>(3 * Cp * threads);
  T* A = work + 3 * Cp * threads;
  T* Bc = A + Cp;
  T* Cc = Bc + Cp;
  for (int64_t c = 0; c < C; ++c) A[c] = gamma ? gamma[c] * rstd[c] : rstd[c];
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    T* bs = work + 3 * Cp * t;
    T* bq = bs + Cp;
    T* bp = bq + Cp;
    double* ts = totals + 3 * Cp * t;
    double* tq = ts + Cp;
    double* tp = tq + Cp;
    std::fill(bs, bs + 3 * Cp, T(0));
    std::fill(ts, ts + 3 * Cp, 0.0);
    for (int64_t b0 = r0; b0 < r1; b0 += detail::kBlockRows) {
      const int64_t b1 = std::min(b0 + detail::kBlockRows, r1);
      add_grad_sums(bs, bq, bp, dy, x, mean, b0, b1, C);
      flush_block(ts, tq, tp, bs, bq, bp, C);
      if (dx && !train)  // eval: dx = A * dy while the block is in cache
        for (int64_t r = b0; r < b1; ++r)
          detail::map_row(
              dx + r * C, C, stream, [](auto dv, auto ac) { return dv * ac; }, dy + r * C, A);
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sdy = 0, sdyx = 0, sx = 0;
      for (int u = 0; u < nt; ++u) {
        sdy += totals[3 * Cp * u + c];
        sdyx += totals[3 * Cp * u + Cp + c];
        sx += totals[3 * Cp * u + 2 * Cp + c];
      }
      // Training: the saved mean is the batch mean rounded to T; for inputs like
      // 1e4 + 0.01 * randn that rounding is a few % of the spread. The exact
      // mean is mean + delta with delta = mean(x - mean), so every (x - mean)
      // becomes (x - mean) - delta: sdyx loses delta * sdy and the dx map's
      // constant absorbs -delta * Bc. Eval statistics are constants: no delta.
      const double delta = train ? sx / N : 0.0;
      sdyx = (sdyx - delta * sdy) * rstd[c];  // sum(dy * xhat)
      if (dgamma) dgamma[c] += static_cast<T>(sdyx);
      if (dbeta) dbeta[c] += static_cast<T>(sdy);
      const double bc = -A[c] * static_cast<double>(rstd[c]) * sdyx / N;
      Bc[c] = static_cast<T>(bc);
      Cc[c] = static_cast<T>(-A[c] * sdy / N - delta * bc);
    }
    if (dx && train)
      for (int64_t r = r0; r < r1; ++r)
        detail::map_row(
            dx + r * C, C, stream,
            [](auto v, auto dv, auto m, auto ac, auto bc, auto cc) {
              return dv * ac + (v - m) * bc + cc;
            },
            x + r * C, dy + r * C, mean, A, Bc, Cc);
    if (stream) detail::stream_fence();
  }
}

// ---- (N,C,L), L > 1: one thread per channel, segments of L contiguous values ----

template <typename T>
void forward_train_segments(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
#pragma omp parallel for schedule(static) num_threads(detail::kernel_threads(N* C* L))
  for (int64_t c = 0; c < C; ++c) {
    const T shift = x[c * L];
    double n = 0, m = 0, q = 0;
    for (int64_t i = 0; i < N; ++i) {
      const auto [sm, sq] = detail::shifted_moments(x + (i * C + c) * L, L, shift);
      chan_merge(n, m, q, static_cast<double>(L), sm, sq);
    }
    const double v = q / n, r = 1.0 / std::sqrt(v + eps);
    const double ac = gamma ? r * gamma[c] : r;
    mean[c] = static_cast<T>(shift + m);
    rstd[c] = static_cast<T>(r);
    if (var) var[c] = static_cast<T>(v);
    const T a = static_cast<T>(ac), b = static_cast<T>((beta ? beta[c] : 0.0) - m * ac);
    for (int64_t i = 0; i < N; ++i) {
      const T* xs = x + (i * C + c) * L;
      T* ys = y + (i * C + c) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) ys[l] = (xs[l] - shift) * a + b;
    }
  }
}

template <typename T>
void backward_segments(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                       const T* mean, const T* rstd, const T* gamma, int64_t N, int64_t C,
                       int64_t L) {
  const double M = static_cast<double>(N * L);
#pragma omp parallel for schedule(static) num_threads(detail::kernel_threads(N* C* L))
  for (int64_t c = 0; c < C; ++c) {
    const T m = mean[c], A = gamma ? gamma[c] * rstd[c] : rstd[c];
    double sdy = 0, sdyx = 0, sx = 0;
    for (int64_t i = 0; i < N; ++i) {
      const T* xs = x + (i * C + c) * L;
      const T* dys = dy + (i * C + c) * L;
      T s = 0, q = 0, p = 0;
#pragma omp simd reduction(+ : s, q, p)
      for (int64_t l = 0; l < L; ++l) {
        s += dys[l];
        q += dys[l] * (xs[l] - m);
        p += xs[l] - m;
      }
      sdy += s;
      sdyx += q;
      sx += p;
      if (dx && !train) {
        T* dxs = dx + (i * C + c) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) dxs[l] = dys[l] * A;
      }
    }
    const double delta = train ? sx / M : 0.0;  // the saved mean's rounding: see backward_rows
    sdyx = (sdyx - delta * sdy) * rstd[c];
    if (dgamma) dgamma[c] += static_cast<T>(sdyx);
    if (dbeta) dbeta[c] += static_cast<T>(sdy);
    if (!dx || !train) continue;
    const double bc = -A * static_cast<double>(rstd[c]) * sdyx / M;
    const T Bc = static_cast<T>(bc);
    const T Cc = static_cast<T>(-A * sdy / M - delta * bc);
    for (int64_t i = 0; i < N; ++i) {
      const T* xs = x + (i * C + c) * L;
      const T* dys = dy + (i * C + c) * L;
      T* dxs = dx + (i * C + c) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) dxs[l] = dys[l] * A + (xs[l] - m) * Bc + Cc;
    }
  }
}

}  // namespace

template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  if (N * C * L == 0) return;
  if (L == 1)
    forward_train_rows(y, mean, rstd, var, x, gamma, beta, N, C, eps);
  else
    forward_train_segments(y, mean, rstd, var, x, gamma, beta, N, C, L, eps);
}

// y = (x - mean_c) * a_c + beta_c with a_c = gamma_c / sqrt(var_c + eps): one pass.
template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  const bool stream = detail::stream_output<T>(N * C * L);
  const int64_t Cp = detail::padded(C);
  T* a = detail::scratch<T>(2 * Cp);
  T* b = a + Cp;
  for (int64_t c = 0; c < C; ++c) {
    a[c] = static_cast<T>((gamma ? gamma[c] : 1.0) / std::sqrt(static_cast<double>(var[c]) + eps));
    b[c] = beta ? beta[c] : T(0);
  }
#pragma omp parallel num_threads(detail::kernel_threads(N* C* L))
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) {
      if (L == 1) {
        detail::map_row(
            y + i * C, C, stream,
            [](auto v, auto m, auto ac, auto bc) { return (v - m) * ac + bc; }, x + i * C, mean, a,
            b);
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        const T m = mean[c], ac = a[c], bc = b[c];
        const T* xs = x + (i * C + c) * L;
        T* ys = y + (i * C + c) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) ys[l] = (xs[l] - m) * ac + bc;
      }
    }
    if (stream) detail::stream_fence();
  }
}

template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  if (L == 1)
    backward_rows(true, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C);
  else
    backward_segments(true, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
}

template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  if (L == 1)
    backward_rows(false, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C);
  else
    backward_segments(false, dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
}

#define NORMLAB_INSTANTIATE(T)                                                                    \
  template void batchnorm_forward_train<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t, \
                                           int64_t, int64_t, T);                                  \
  template void batchnorm_forward_eval<T>(T*, const T*, const T*, const T*, const T*, const T*,   \
                                          int64_t, int64_t, int64_t, T);                          \
  template void batchnorm_backward_train<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                            const T*, int64_t, int64_t, int64_t);                 \
  template void batchnorm_backward_eval<T>(T*, T*, T*, const T*, const T*, const T*, const T*,    \
                                           const T*, int64_t, int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
