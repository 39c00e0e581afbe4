// Reference kernels of the BatchNorm variants: the definitions the fast ones
// (batchnorm_fast.cpp, bn_family_fast.cpp) are tested against. Plain loops in
// double, two passes for the variance, as norm_ref.cpp's BatchNorm.
#include <cmath>

#include "normlab/bn_family_kernels.hpp"
#include "normlab/kernels.hpp"

namespace normlab::ref {
namespace {

template <typename T>
double channel_mean(const T* x, int64_t N, int64_t C, int64_t L, int64_t c) {
  double m = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t l = 0; l < L; ++l) m += x[(n * C + c) * L + l];
  return m / static_cast<double>(N * L);
}

}  // namespace

template <typename T>
void batchrenorm_forward_train(T* y, T* mean, T* rstd, T* var, T* r, T* d, const T* x,
                               const T* gamma, const T* beta, const T* running_mean,
                               const T* running_var, double rmax, double dmax, int64_t N, int64_t C,
                               int64_t L, T eps) {
  const double M = static_cast<double>(N * L);
  for (int64_t c = 0; c < C; ++c) {
    const double m = channel_mean(x, N, C, L, c);
    double v = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const double e = x[(n * C + c) * L + l] - m;
        v += e * e;
      }
    v /= M;
    const double rs = 1.0 / std::sqrt(v + static_cast<double>(eps));
    double cr, cd;
    batchrenorm_correction(cr, cd, m, v, running_mean[c], running_var[c], rmax, dmax,
                           static_cast<double>(eps));
    mean[c] = static_cast<T>(m);
    rstd[c] = static_cast<T>(rs);
    if (var) var[c] = static_cast<T>(v);
    r[c] = static_cast<T>(cr);
    d[c] = static_cast<T>(cd);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        double out = (x[i] - m) * rs * cr + cd;
        if (gamma) out *= gamma[c];
        if (beta) out += beta[c];
        y[i] = static_cast<T>(out);
      }
  }
}

template <typename T>
void batchrenorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                                const T* rstd, const T* r, const T* d, const T* gamma, int64_t N,
                                int64_t C, int64_t L) {
  // xhat = (x - m) * rstd; y = gamma * (xhat * r + d) + beta, r and d constant:
  // dx = gamma * r * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)).
  const double M = static_cast<double>(N * L);
  for (int64_t c = 0; c < C; ++c) {
    double shift = 0;  // the exact batch mean from the saved one, as norm_ref.cpp does
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l)
        shift += static_cast<double>(x[(n * C + c) * L + l]) - mean[c];
    const double m = mean[c] + shift / M, rs = rstd[c], gm = gamma ? gamma[c] : 1.0;
    double sdy = 0, sdyx = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        sdy += dy[i];
        sdyx += dy[i] * (x[i] - m) * rs;
      }
    if (dgamma) dgamma[c] += static_cast<T>(sdyx * r[c] + sdy * d[c]);
    if (dbeta) dbeta[c] += static_cast<T>(sdy);
    if (!dx) continue;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        const double xhat = (x[i] - m) * rs;
        dx[i] = static_cast<T>(gm * r[c] * rs * (dy[i] - sdy / M - xhat * sdyx / M));
      }
  }
}

template <typename T>
void meanonly_batchnorm_forward_train(T* y, T* mean, const T* x, const T* bias, int64_t N,
                                      int64_t C, int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    const double m = channel_mean(x, N, C, L, c);
    mean[c] = static_cast<T>(m);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        y[i] = static_cast<T>((x[i] - m) + (bias ? bias[c] : 0.0));
      }
  }
}

template <typename T>
void meanonly_batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* bias, int64_t N,
                                     int64_t C, int64_t L) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        y[i] = static_cast<T>((x[i] - static_cast<double>(mean[c])) + (bias ? bias[c] : 0.0));
      }
}

template <typename T>
void meanonly_batchnorm_backward(bool train, T* dx, T* dbias, const T* dy, int64_t N, int64_t C,
                                 int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    const double s = channel_mean(dy, N, C, L, c) * static_cast<double>(N * L);
    if (dbias) dbias[c] += static_cast<T>(s);
    if (!dx) continue;
    const double m = train ? s / static_cast<double>(N * L) : 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        dx[i] = static_cast<T>(dy[i] - m);
      }
  }
}

#define NORMLAB_INSTANTIATE(T)                                                                     \
  template void batchrenorm_forward_train<T>(T*, T*, T*, T*, T*, T*, const T*, const T*, const T*, \
                                             const T*, const T*, double, double, int64_t, int64_t, \
                                             int64_t, T);                                          \
  template void batchrenorm_backward_train<T>(T*, T*, T*, const T*, const T*, const T*, const T*,  \
                                              const T*, const T*, const T*, int64_t, int64_t,      \
                                              int64_t);                                            \
  template void meanonly_batchnorm_forward_train<T>(T*, T*, const T*, const T*, int64_t, int64_t,  \
                                                    int64_t);                                      \
  template void meanonly_batchnorm_forward_eval<T>(T*, const T*, const T*, const T*, int64_t,      \
                                                   int64_t, int64_t);                              \
  template void meanonly_batchnorm_backward<T>(bool, T*, T*, const T*, int64_t, int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab::ref
