// SyncBatchNorm's kernels (include/normlab/syncbn.hpp): the per-channel
// moments in double, their exact merge across ranks, the normalization and the
// backward from global sums. OpenMP over blocks of channels (each thread owns
// whole channels, so the sums are the same for any thread count); the inner
// loops are unit-stride and vectorised, compiled once per ISA level (kernels/isa.hpp). Plain twins:
// syncbn_ref.cpp. Derivation: docs/derivations.md ("SyncBatchNorm").
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/syncbn.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {
namespace {

constexpr int64_t kChannelBlock = 32;

int threads_for(int64_t N, int64_t C, int64_t L) {
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
  return static_cast<int>(std::min<int64_t>(detail::kernel_threads(N * C * L), blocks));
}

// Calls f(cb, ce) for blocks of channels, spread over the threads.
template <typename F>
void over_channel_blocks(int64_t N, int64_t C, int64_t L, F f) {
  const int64_t blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static) num_threads(threads_for(N, C, L))
  for (int64_t b = 0; b < blocks; ++b) f(b * kChannelBlock, std::min(C, (b + 1) * kChannelBlock));
}

}  // namespace

template <typename T>
void syncbn_moments(double* moments, const T* x, int64_t N, int64_t C, int64_t L) {
  over_channel_blocks(N, C, L, [&](int64_t cb, int64_t ce) {
    double s[kChannelBlock] = {}, q[kChannelBlock] = {};
    if (L == 1) {
      for (int64_t n = 0; n < N; ++n) {
        const T* row = x + n * C;
#pragma omp simd
        for (int64_t c = cb; c < ce; ++c) s[c - cb] += static_cast<double>(row[c]);
      }
    } else {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = cb; c < ce; ++c) {
          const T* seg = x + (n * C + c) * L;
          double a = 0;
#pragma omp simd reduction(+ : a)
          for (int64_t l = 0; l < L; ++l) a += static_cast<double>(seg[l]);
          s[c - cb] += a;
        }
    }
    const double count = static_cast<double>(N * L);
    double m[kChannelBlock];
    for (int64_t c = cb; c < ce; ++c) m[c - cb] = count > 0 ? s[c - cb] / count : 0.0;
    if (L == 1) {
      for (int64_t n = 0; n < N; ++n) {
        const T* row = x + n * C;
#pragma omp simd
        for (int64_t c = cb; c < ce; ++c) {
          const double d = static_cast<double>(row[c]) - m[c - cb];
          q[c - cb] += d * d;
        }
      }
    } else {
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = cb; c < ce; ++c) {
          const T* seg = x + (n * C + c) * L;
          const double mc = m[c - cb];
          double a = 0;
#pragma omp simd reduction(+ : a)
          for (int64_t l = 0; l < L; ++l) {
            const double d = static_cast<double>(seg[l]) - mc;
            a += d * d;
          }
          q[c - cb] += a;
        }
    }
    for (int64_t c = cb; c < ce; ++c) {
      moments[3 * c] = count;
      moments[3 * c + 1] = m[c - cb];
      moments[3 * c + 2] = q[c - cb];
    }
  });
}

template <typename T>
void syncbn_normalize(T* y, const T* x, const double* mean, const double* rstd, const T* gamma,
                      const T* beta, int64_t N, int64_t C, int64_t L) {
  over_channel_blocks(N, C, L, [&](int64_t cb, int64_t ce) {
    // The mean as hi + lo: x - hi is exact for x near the mean (Sterbenz), so
    // (x - hi) - lo keeps the small spread of values around a large mean.
    T m[kChannelBlock], ml[kChannelBlock], a[kChannelBlock], b[kChannelBlock];
    for (int64_t c = cb; c < ce; ++c) {
      m[c - cb] = static_cast<T>(mean[c]);
      ml[c - cb] = static_cast<T>(mean[c] - static_cast<double>(m[c - cb]));
      a[c - cb] = static_cast<T>((gamma ? static_cast<double>(gamma[c]) : 1.0) * rstd[c]);
      b[c - cb] = beta ? beta[c] : T(0);
    }
    for (int64_t n = 0; n < N; ++n) {
      if (L == 1) {
        const T* xr = x + n * C;
        T* yr = y + n * C;
#pragma omp simd
        for (int64_t c = cb; c < ce; ++c)
          yr[c] = ((xr[c] - m[c - cb]) - ml[c - cb]) * a[c - cb] + b[c - cb];
        continue;
      }
      for (int64_t c = cb; c < ce; ++c) {
        const T* xs = x + (n * C + c) * L;
        T* ys = y + (n * C + c) * L;
        const T mc = m[c - cb], mlc = ml[c - cb], ac = a[c - cb], bc = b[c - cb];
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) ys[l] = ((xs[l] - mc) - mlc) * ac + bc;
      }
    }
  });
}

template <typename T>
void syncbn_grad_sums(double* sums, const T* dy, const T* x, const double* mean, int64_t N,
                      int64_t C, int64_t L) {
  over_channel_blocks(N, C, L, [&](int64_t cb, int64_t ce) {
    double s[kChannelBlock] = {}, p[kChannelBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      if (L == 1) {
        const T* xr = x + n * C;
        const T* gr = dy + n * C;
#pragma omp simd
        for (int64_t c = cb; c < ce; ++c) {
          const double g = static_cast<double>(gr[c]);
          s[c - cb] += g;
          p[c - cb] += g * (static_cast<double>(xr[c]) - mean[c]);
        }
        continue;
      }
      for (int64_t c = cb; c < ce; ++c) {
        const T* xs = x + (n * C + c) * L;
        const T* gs = dy + (n * C + c) * L;
        const double mc = mean[c];
        double a = 0, q = 0;
#pragma omp simd reduction(+ : a, q)
        for (int64_t l = 0; l < L; ++l) {
          const double g = static_cast<double>(gs[l]);
          a += g;
          q += g * (static_cast<double>(xs[l]) - mc);
        }
        s[c - cb] += a, p[c - cb] += q;
      }
    }
    for (int64_t c = cb; c < ce; ++c) sums[2 * c] = s[c - cb], sums[2 * c + 1] = p[c - cb];
  });
}

template <typename T>
void syncbn_dx(T* dx, const T* dy, const T* x, const double* mean, const double* rstd,
               const T* gamma, const double* sums, double count, int64_t N, int64_t C, int64_t L) {
  over_channel_blocks(N, C, L, [&](int64_t cb, int64_t ce) {
    // dx = a dy + b - k (x - mean): a = gamma rstd, b = -a sum_dy / count,
    // k = a rstd^2 sum_dy_xmu / count.
    T m[kChannelBlock], ml[kChannelBlock], a[kChannelBlock], b[kChannelBlock], k[kChannelBlock];
    for (int64_t c = cb; c < ce; ++c) {
      const double ad = (gamma ? static_cast<double>(gamma[c]) : 1.0) * rstd[c];
      m[c - cb] = static_cast<T>(mean[c]);
      ml[c - cb] = static_cast<T>(mean[c] - static_cast<double>(m[c - cb]));  // as in normalize
      a[c - cb] = static_cast<T>(ad);
      b[c - cb] = static_cast<T>(-ad * sums[2 * c] / count);
      k[c - cb] = static_cast<T>(ad * rstd[c] * rstd[c] * sums[2 * c + 1] / count);
    }
    for (int64_t n = 0; n < N; ++n) {
      if (L == 1) {
        const T* xr = x + n * C;
        const T* gr = dy + n * C;
        T* dr = dx + n * C;
#pragma omp simd
        for (int64_t c = cb; c < ce; ++c)
          dr[c] = a[c - cb] * gr[c] + b[c - cb] - k[c - cb] * ((xr[c] - m[c - cb]) - ml[c - cb]);
        continue;
      }
      for (int64_t c = cb; c < ce; ++c) {
        const T* xs = x + (n * C + c) * L;
        const T* gs = dy + (n * C + c) * L;
        T* ds = dx + (n * C + c) * L;
        const T mc = m[c - cb], mlc = ml[c - cb], ac = a[c - cb], bc = b[c - cb], kc = k[c - cb];
#pragma omp simd
        for (int64_t l = 0; l < L; ++l) ds[l] = ac * gs[l] + bc - kc * ((xs[l] - mc) - mlc);
      }
    }
  });
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_SYNCBN(T)                                                                      \
  NORMLAB_KERNEL(syncbn_moments, T, double*, const T*, int64_t, int64_t, int64_t)              \
  NORMLAB_KERNEL(syncbn_normalize, T, T*, const T*, const double*, const double*, const T*,    \
                 const T*, int64_t, int64_t, int64_t)                                          \
  NORMLAB_KERNEL(syncbn_grad_sums, T, double*, const T*, const T*, const double*, int64_t,     \
                 int64_t, int64_t)                                                             \
  NORMLAB_KERNEL(syncbn_dx, T, T*, const T*, const T*, const double*, const double*, const T*, \
                 const double*, double, int64_t, int64_t, int64_t)
NORMLAB_SYNCBN(float)
NORMLAB_SYNCBN(double)
#undef NORMLAB_SYNCBN
