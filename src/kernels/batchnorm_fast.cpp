// The default BatchNorm kernels. Statistics are per channel, i.e. reductions
// over the rows of x, so the threads split the rows, not the channels:
//   (N,C), L = 1: each thread walks its rows in cache-sized blocks and keeps
//     per-channel partial sums (for the forward: block mean and M2 from two
//     passes over the cached block, Chan-merged into the thread's running
//     summary); the partials are merged per channel; a last pass over the
//     thread's rows, newest first (still in its cache), applies the per-channel
//     multiply-add. x is read twice from memory at most, y written once.
//   (N,C,L), L > 1: each channel's N segments of L contiguous values belong to
//     one thread (OpenMP over channels); segment moments are Chan-merged.
// Large means stay exact by shifting every channel by one of its own values
// (see shifted_moments). Derivations: docs/derivations.md; why: docs/performance.md.
#include <cmath>

#include "kernels/norm_common.hpp"
#include "normlab/kernels.hpp"

namespace normlab {
namespace {

using detail::chan_merge;

// ---- (N,C): row blocks with per-thread partial sums ----

template <typename T>
void forward_train_rows(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                        int64_t N, int64_t C, T eps) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C), B = detail::block_rows(C);
  // Per thread: block mean, block M2, running mean, running M2. Shared: shift, a, b.
  T* work = detail::scratch<T>(Cp * (4 * threads + 3));
  T* shift = work + 4 * Cp * threads;
  T* a = shift + Cp;
  T* b = a + Cp;
  std::copy(x, x + C, shift);  // row 0 (a copy: y may alias x)
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    T* bm = work + 4 * Cp * t;
    T* bq = bm + Cp;
    T* tm = bq + Cp;
    T* tq = tm + Cp;
    std::fill(tm, tm + 2 * Cp, T(0));
    T count = 0;
    for (int64_t b0 = r0; b0 < r1; b0 += B) {
      const int64_t b1 = std::min(b0 + B, r1);
      const T nb = static_cast<T>(b1 - b0);
      std::fill(bm, bm + 2 * Cp, T(0));
      for (int64_t r = b0; r < b1; ++r) {
        const T* xr = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) bm[c] += xr[c] - shift[c];
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) bm[c] /= nb;
      for (int64_t r = b0; r < b1; ++r) {  // second pass: the block is in cache now
        const T* xr = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const T d = xr[c] - shift[c] - bm[c];
          bq[c] += d * d;
        }
      }
      const T n = count + nb, wm = nb / n, wq = count * nb / n;  // Chan merge weights
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T delta = bm[c] - tm[c];
        tm[c] += delta * wm;
        tq[c] += bq[c] + delta * delta * wq;
      }
      count = n;
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double n = 0, m = 0, q = 0;
      for (int u = 0; u < nt; ++u) {
        const T* tu = work + 4 * Cp * u + 2 * Cp;
        chan_merge(n, m, q, static_cast<double>(N * (u + 1) / nt - N * u / nt), tu[c], tu[Cp + c]);
      }
      const double v = q / n, r = 1.0 / std::sqrt(v + eps);
      const double ac = gamma ? r * gamma[c] : r;
      mean[c] = static_cast<T>(shift[c] + m);
      rstd[c] = static_cast<T>(r);
      if (var) var[c] = static_cast<T>(v);
      a[c] = static_cast<T>(ac);
      b[c] = static_cast<T>((beta ? beta[c] : 0.0) - m * ac);
    }
    // y = (x - shift) * a + b; newest rows first: they are still in this core's caches.
    for (int64_t r = r1 - 1; r >= r0; --r)
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
// One pass gathers both per-channel sums (blocked partial sums per thread).
template <typename T>
void backward_rows(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                   const T* rstd, const T* gamma, int64_t N, int64_t C) {
  const int threads = detail::kernel_threads(N * C);
  const bool stream = detail::stream_output<T>(N * C);
  const int64_t Cp = detail::padded(C), B = detail::block_rows(C);
  // Per thread: block sums of dy and dy * (x - mean), thread sums of both. Shared: A, Bc, Cc.
  T* work = detail::scratch<T>(Cp * (4 * threads + 3));
  T* A = work + 4 * Cp * threads;
  T* Bc = A + Cp;
  T* Cc = Bc + Cp;
  for (int64_t c = 0; c < C; ++c) A[c] = gamma ? gamma[c] * rstd[c] : rstd[c];
  const bool fused_dx = dx && !train;
#pragma omp parallel num_threads(threads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
    T* bs = work + 4 * Cp * t;
    T* bq = bs + Cp;
    T* ts = bq + Cp;
    T* tq = ts + Cp;
    std::fill(ts, ts + 2 * Cp, T(0));
    for (int64_t b0 = r0; b0 < r1; b0 += B) {
      const int64_t b1 = std::min(b0 + B, r1);
      std::fill(bs, bs + 2 * Cp, T(0));  // block sums keep float rounding at ~B + N/B terms
      for (int64_t r = b0; r < b1; ++r) {
        const T* xr = x + r * C;
        const T* dyr = dy + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          bs[c] += dyr[c];
          bq[c] += dyr[c] * (xr[c] - mean[c]);
        }
        if (fused_dx)
          detail::map_row(
              dx + r * C, C, stream, [](auto dv, auto ac) { return dv * ac; }, dyr, A);
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        ts[c] += bs[c];
        tq[c] += bq[c];
      }
    }
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sdy = 0, sdyx = 0;
      for (int u = 0; u < nt; ++u) {
        sdy += work[4 * Cp * u + 2 * Cp + c];
        sdyx += work[4 * Cp * u + 3 * Cp + c];
      }
      sdyx *= rstd[c];  // sum(dy * xhat)
      if (dgamma) dgamma[c] += static_cast<T>(sdyx);
      if (dbeta) dbeta[c] += static_cast<T>(sdy);
      Bc[c] = static_cast<T>(-A[c] * static_cast<double>(rstd[c]) * sdyx / N);
      Cc[c] = static_cast<T>(-A[c] * sdy / N);
    }
    if (dx && train) {
      // Newest rows first: they are still in this core's caches.
      for (int64_t r = r1 - 1; r >= r0; --r)
        detail::map_row(
            dx + r * C, C, stream,
            [](auto v, auto dv, auto m, auto ac, auto bc, auto cc) {
              return dv * ac + (v - m) * bc + cc;
            },
            x + r * C, dy + r * C, mean, A, Bc, Cc);
    }
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
    double sdy = 0, sdyx = 0;
    for (int64_t i = 0; i < N; ++i) {
      const T* xs = x + (i * C + c) * L;
      const T* dys = dy + (i * C + c) * L;
      T s = 0, q = 0;
#pragma omp simd reduction(+ : s, q)
      for (int64_t l = 0; l < L; ++l) {
        s += dys[l];
        q += dys[l] * (xs[l] - m);
      }
      sdy += s;
      sdyx += q;
      if (dx && !train) {
        T* dxs = dx + (i * C + c) * L;
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) dxs[l] = dys[l] * A;
      }
    }
    sdyx *= rstd[c];
    if (dgamma) dgamma[c] += static_cast<T>(sdyx);
    if (dbeta) dbeta[c] += static_cast<T>(sdy);
    if (!dx || !train) continue;
    const T Bc = static_cast<T>(-A * static_cast<double>(rstd[c]) * sdyx / M);
    const T Cc = static_cast<T>(-A * sdy / M);
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
