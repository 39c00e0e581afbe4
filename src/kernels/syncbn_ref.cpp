// Plain double twins of SyncBatchNorm's fast kernels (syncbn.cpp): one channel
// at a time, every value promoted to double, the formulas as written in
// docs/derivations.md ("SyncBatchNorm"). Tests compare the two.
#include "normlab/syncbn.hpp"

namespace normlab::ref {

template <typename T>
void syncbn_moments(double* moments, const T* x, int64_t N, int64_t C, int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) s += static_cast<double>(x[(n * C + c) * L + l]);
    const double count = static_cast<double>(N * L);
    const double mean = count > 0 ? s / count : 0.0;
    double q = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const double d = static_cast<double>(x[(n * C + c) * L + l]) - mean;
        q += d * d;
      }
    moments[3 * c] = count, moments[3 * c + 1] = mean, moments[3 * c + 2] = q;
  }
}

template <typename T>
void syncbn_dx(T* dx, const T* dy, const T* x, const double* mean, const double* rstd,
               const T* gamma, const double* sums, double count, int64_t N, int64_t C, int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    const double g = gamma ? static_cast<double>(gamma[c]) : 1.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        const double xhat = (static_cast<double>(x[i]) - mean[c]) * rstd[c];
        dx[i] = static_cast<T>(g * rstd[c] *
                               (static_cast<double>(dy[i]) - sums[2 * c] / count -
                                xhat * rstd[c] * sums[2 * c + 1] / count));
      }
  }
}

template void syncbn_moments<float>(double*, const float*, int64_t, int64_t, int64_t);
template void syncbn_moments<double>(double*, const double*, int64_t, int64_t, int64_t);
template void syncbn_dx<float>(float*, const float*, const float*, const double*, const double*,
                               const float*, const double*, double, int64_t, int64_t, int64_t);
template void syncbn_dx<double>(double*, const double*, const double*, const double*, const double*,
                                const double*, const double*, double, int64_t, int64_t, int64_t);

}  // namespace normlab::ref

namespace normlab {

// The exact merge of the ranks' moments (not a SIMD kernel: C x ranks scalar
// steps; here, outside the per-ISA sources, so it is compiled once).
void syncbn_merge(double* out, const double* all, int ranks, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    double n = 0, mean = 0, m2 = 0;
    for (int r = 0; r < ranks; ++r) {
      const double* b = all + (static_cast<int64_t>(r) * C + c) * 3;
      const double nb = b[0];
      if (nb == 0) continue;
      if (n == 0) {
        n = nb, mean = b[1], m2 = b[2];
        continue;
      }
      const double total = n + nb, delta = b[1] - mean;
      mean += delta * (nb / total);
      m2 += b[2] + delta * delta * (n * nb / total);
      n = total;
    }
    out[3 * c] = n, out[3 * c + 1] = mean, out[3 * c + 2] = m2;
  }
}

}  // namespace normlab
