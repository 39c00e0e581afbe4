// Fast kernels of the BatchNorm variants (normlab/bn_family_kernels.hpp) that
// are not a statistics pass: the training forwards share BatchNorm's
// (batchnorm_fast.cpp). Batch Renormalization's backward is BatchNorm's with
// gamma * r; mean-only BatchNorm's is one sum and one map per channel, split
// like BatchNorm's (rows across threads for (N,C), channels for (N,C,L)).
// Derivations: docs/derivations.md.
#include <cstring>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/bn_family_kernels.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

template <typename T>
void batchrenorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                                const T* rstd, const T* r, const T* d, const T* gamma, int64_t N,
                                int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  // BatchNorm's backward with gamma' = gamma * r gives dx; its dgamma is
  // sum dy * xhat and its dbeta sum dy, from which dgamma = r * sum dy * xhat
  // + d * sum dy. (Slot 2: batchnorm_backward_train takes slots 0 and 1.)
  const int64_t Cp = detail::padded(C);
  T* g2 = detail::scratch<T, 2>(3 * Cp);
  T* sdyx = g2 + Cp;
  T* sdy = sdyx + Cp;
  for (int64_t c = 0; c < C; ++c) {
    g2[c] = gamma ? static_cast<T>(static_cast<double>(gamma[c]) * r[c]) : r[c];
    sdyx[c] = sdy[c] = T(0);
  }
  batchnorm_backward_train(dx, dgamma ? sdyx : static_cast<T*>(nullptr), sdy, dy, x, mean, rstd, g2,
                           N, C, L);
  for (int64_t c = 0; c < C; ++c) {
    if (dgamma)
      dgamma[c] +=
          static_cast<T>(static_cast<double>(r[c]) * sdyx[c] + static_cast<double>(d[c]) * sdy[c]);
    if (dbeta) dbeta[c] += sdy[c];
  }
}

template <typename T>
void meanonly_batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* bias, int64_t N,
                                     int64_t C, int64_t L) {
  if (N * C * L == 0) return;
  // BatchNorm's eval map with var = 0 and eps = 1: rstd = 1 exactly, so
  // y = (x - mean) * 1 + bias, with its overflow handling.
  T* zero = detail::scratch<T, 2>(C);
  std::fill(zero, zero + C, T(0));
  batchnorm_forward_eval(y, x, mean, zero, static_cast<const T*>(nullptr), bias, N, C, L, T(1));
}

template <typename T>
void meanonly_batchnorm_backward(bool train, T* dx, T* dbias, const T* dy, int64_t N, int64_t C,
                                 int64_t L) {
  if (N * C * L == 0) return;
  const bool stream = detail::stream_output<T>(N * C * L);
  const int threads = detail::kernel_threads(N * C * L);
  const double M = static_cast<double>(N * L);
  if (L == 1) {
    const int64_t Cp = detail::padded(C);
    double* totals = detail::scratch<double, 1>(Cp * threads);
    T* mdy = detail::scratch<T>(Cp);
#pragma omp parallel num_threads(threads)
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t r0 = N * t / nt, r1 = N * (t + 1) / nt;
      double* s = totals + Cp * t;
      std::fill(s, s + Cp, 0.0);
      for (int64_t r = r0; r < r1; ++r) {
        const T* g = dy + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) s[c] += g[c];
        if (dx && !train) std::memcpy(dx + r * C, g, sizeof(T) * static_cast<size_t>(C));
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        double sum = 0;
        for (int u = 0; u < nt; ++u) sum += totals[Cp * u + c];
        if (dbias) dbias[c] += static_cast<T>(sum);
        mdy[c] = static_cast<T>(sum / M);
      }
      if (dx && train) {
        for (int64_t r = r0; r < r1; ++r)
          detail::map_row(
              dx + r * C, C, stream, [](auto g, auto m) { return g - m; }, dy + r * C, mdy);
        if (stream) detail::stream_fence();
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0;
    for (int64_t i = 0; i < N; ++i)
      sum += detail::sum_row_wide<T>(
          L, [](auto g) { return g; }, dy + (i * C + c) * L);
    if (dbias) dbias[c] += static_cast<T>(sum);
    if (!dx) continue;
    const T m = train ? static_cast<T>(sum / M) : T(0);
    for (int64_t i = 0; i < N; ++i) {
      const T* g = dy + (i * C + c) * L;
      T* o = dx + (i * C + c) * L;
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) o[l] = g[l] - m;
    }
  }
}

template <typename T>
void ghost_batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                                    const T* mean, const T* rstd, const T* gamma, int64_t N,
                                    int64_t C, int64_t L, int64_t K, const char* exact) {
  if (N * C * L == 0) return;
  const int64_t G = (N + K - 1) / K, S = C * L;
  // Each virtual batch's gradients go to sums of its thread (acc: dgamma, dbeta
  // of 2 * Cp), added to dgamma, dbeta at the end.
  const auto one = [&](int64_t g, T* dg, T* db) {
    const int64_t n0 = g * K, ng = std::min(K, N - n0);
    (exact && exact[g] ? ref::batchnorm_backward_train<T>
                       : batchnorm_backward_train<T>)(dx ? dx + n0 * S : nullptr, dg, db,
                                                      dy + n0 * S, x + n0 * S, mean + g * C,
                                                      rstd + g * C, gamma, ng, C, L);
  };
  if (!detail::ghost_by_batches(G, N, C, L)) {
    for (int64_t g = 0; g < G; ++g) one(g, dgamma, dbeta);
    return;
  }
  if (L == 1)
    return ghost_batchnorm_backward_rows(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, K,
                                         exact);
  const int threads = detail::kernel_threads(N * C * L);
  const int64_t Cp = detail::padded(C);
  T* acc = detail::scratch<T, 3>(2 * Cp * threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    T* dg = dgamma ? acc + 2 * Cp * t : nullptr;
    T* db = dbeta ? acc + 2 * Cp * t + Cp : nullptr;
    std::fill(acc + 2 * Cp * t, acc + 2 * Cp * (t + 1), T(0));
#pragma omp for schedule(static)
    for (int64_t g = 0; g < G; ++g) one(g, dg, db);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      for (int u = 0; u < omp_get_num_threads(); ++u) {
        if (dgamma) dgamma[c] += acc[2 * Cp * u + c];
        if (dbeta) dbeta[c] += acc[2 * Cp * u + Cp + c];
      }
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                  \
  NORMLAB_KERNEL(batchrenorm_backward_train, T, T*, T*, T*, const T*, const T*, const T*,       \
                 const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t)             \
  NORMLAB_KERNEL(meanonly_batchnorm_forward_eval, T, T*, const T*, const T*, const T*, int64_t, \
                 int64_t, int64_t)                                                              \
  NORMLAB_KERNEL(meanonly_batchnorm_backward, T, bool, T*, T*, const T*, int64_t, int64_t,      \
                 int64_t)                                                                       \
  NORMLAB_KERNEL(ghost_batchnorm_backward_train, T, T*, T*, T*, const T*, const T*, const T*,   \
                 const T*, const T*, int64_t, int64_t, int64_t, int64_t, const char*)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
