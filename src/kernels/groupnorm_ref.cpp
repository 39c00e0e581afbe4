// Reference GroupNorm over (N, C, S): plain loops, statistics in double, two
// passes for the variance. Derivation of the backward: docs/derivations.md.
#include <cmath>

#include "normlab/groupnorm_kernels.hpp"

namespace normlab::ref {

template <typename T>
void groupnorm_forward(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, int64_t S, int64_t G, T eps) {
  const int64_t Cg = C / G, D = Cg * S;
  for (int64_t row = 0; row < N * G; ++row) {
    const T* xr = x + row * D;
    T* yr = y + row * D;
    const int64_t c0 = (row % G) * Cg;
    double m = 0;
    for (int64_t i = 0; i < D; ++i) m += xr[i];
    m /= static_cast<double>(D);
    double v = 0;
    for (int64_t i = 0; i < D; ++i) v += (xr[i] - m) * (xr[i] - m);
    v /= static_cast<double>(D);
    const double r = 1.0 / std::sqrt(v + static_cast<double>(eps));
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t s = 0; s < S; ++s) {
        double out = (xr[c * S + s] - m) * r;
        if (gamma) out *= gamma[c0 + c];
        if (beta) out += beta[c0 + c];
        yr[c * S + s] = static_cast<T>(out);
      }
    mean[row] = static_cast<T>(m);
    rstd[row] = static_cast<T>(r);
    if (var) var[row] = static_cast<T>(v);
  }
}

// With g = dy * gamma[c] and xhat = (x - mean) * rstd over one group of D values:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
//   dgamma[c] += sum dy * xhat, dbeta[c] += sum dy (over n and the channel's S values).
// The mean is recovered exactly from the saved (rounded) one, as ref::layernorm_backward does.
template <typename T>
void groupnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t S, int64_t G) {
  const int64_t Cg = C / G, D = Cg * S;
  for (int64_t row = 0; row < N * G; ++row) {
    const T* xr = x + row * D;
    const T* dyr = dy + row * D;
    const int64_t c0 = (row % G) * Cg;
    double shift = 0;
    for (int64_t i = 0; i < D; ++i) shift += static_cast<double>(xr[i]) - mean[row];
    const double m = mean[row] + shift / static_cast<double>(D), r = rstd[row];
    double sum_g = 0, sum_gx = 0;
    for (int64_t c = 0; c < Cg; ++c) {
      const double gm = gamma ? gamma[c0 + c] : 1.0;
      double sdy = 0, sdyx = 0;
      for (int64_t s = 0; s < S; ++s) {
        const double xhat = (xr[c * S + s] - m) * r;
        sdy += dyr[c * S + s];
        sdyx += dyr[c * S + s] * xhat;
      }
      sum_g += gm * sdy;
      sum_gx += gm * sdyx;
      if (dgamma) dgamma[c0 + c] += static_cast<T>(sdyx);
      if (dbeta) dbeta[c0 + c] += static_cast<T>(sdy);
    }
    if (!dx) continue;
    const double mg = sum_g / static_cast<double>(D), mgx = sum_gx / static_cast<double>(D);
    for (int64_t c = 0; c < Cg; ++c) {
      const double gm = gamma ? gamma[c0 + c] : 1.0;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = row * D + c * S + s;
        const double xhat = (x[i] - m) * r;
        dx[i] = static_cast<T>(r * (dy[i] * gm - mg - xhat * mgx));
      }
    }
  }
}

#define NORMLAB_INSTANTIATE(T)                                                              \
  template void groupnorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t, \
                                     int64_t, int64_t, int64_t, T);                         \
  template void groupnorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                      const T*, int64_t, int64_t, int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab::ref
