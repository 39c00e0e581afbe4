// Reference RMSNorm: the definition the fast kernels (rmsnorm_fast.cpp) are
// tested against. Plain loops, every sum and product in double.
// Derivation of the backward: docs/derivations.md.
#include <cmath>

#include "normlab/rmsnorm.hpp"

namespace normlab::ref {

template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* gamma, int64_t N, int64_t D, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(D) + static_cast<double>(eps));
    for (int64_t d = 0; d < D; ++d) {
      double out = xr[d] * r;
      if (gamma) out *= gamma[d];
      y[n * D + d] = static_cast<T>(out);
    }
    rstd[n] = static_cast<T>(r);
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* rstd, const T* gamma,
                      int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    const T* dyr = dy + n * D;
    const double r = rstd[n];
    // dx = rstd * (g - xhat * mean(g * xhat)), g = dy * gamma, xhat = x * rstd
    double sum_gx = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double xhat = xr[d] * r;
      const double g = static_cast<double>(dyr[d]) * (gamma ? gamma[d] : T(1));
      sum_gx += g * xhat;
      if (dgamma) dgamma[d] += static_cast<T>(dyr[d] * xhat);
    }
    if (!dx) continue;
    const double mgx = sum_gx / static_cast<double>(D);
    for (int64_t d = 0; d < D; ++d) {
      const double xhat = xr[d] * r;
      const double g = static_cast<double>(dyr[d]) * (gamma ? gamma[d] : T(1));
      dx[n * D + d] = static_cast<T>(r * (g - xhat * mgx));
    }
  }
}

#define NORMLAB_INSTANTIATE(T)                                                               \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, T);         \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, \
                                    int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab::ref
