// Reference LayerNorm and BatchNorm: the definitions the fast kernels are tested
// against. Plain loops, statistics accumulated in double, two passes for the variance.
// Derivation of the backward formulas: docs/derivations.md.
#include <cmath>
#include <vector>

#include "normlab/kernels.hpp"

namespace normlab::ref {

// Backward recovers the mean forward computed in double from the saved one (rounded
// to T) as saved + mean(x - saved). For float inputs like randn * 0.01 + 1e4 the
// rounding of the saved mean (up to ulp(1e4)/2 ~ 5e-4) is 5 % of the spread, and a
// backward using it sees a shifted xhat: measured 0.7 % error in dx and 2 % in dgamma
// (PyTorch 1.13 in float: 1.4 % and 8.6 %). The correction costs one add per element.
template <typename T>
double exact_mean(const T* x, int64_t count, T saved) {
  double shift = 0;
  for (int64_t k = 0; k < count; ++k) shift += static_cast<double>(x[k]) - saved;
  return saved + shift / static_cast<double>(count);
}

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    double m = 0;
    for (int64_t d = 0; d < D; ++d) m += xr[d];
    m /= static_cast<double>(D);
    double v = 0;
    for (int64_t d = 0; d < D; ++d) v += (xr[d] - m) * (xr[d] - m);
    v /= static_cast<double>(D);
    const double r = 1.0 / std::sqrt(v + static_cast<double>(eps));
    for (int64_t d = 0; d < D; ++d) {
      double out = (xr[d] - m) * r;
      if (gamma) out *= gamma[d];
      if (beta) out += beta[d];
      y[n * D + d] = static_cast<T>(out);
    }
    mean[n] = static_cast<T>(m);
    rstd[n] = static_cast<T>(r);
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    const T* dyr = dy + n * D;
    const double m = exact_mean(xr, D, mean[n]), r = rstd[n];
    // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * gamma
    double sum_g = 0, sum_gx = 0;
    for (int64_t d = 0; d < D; ++d) {
      const double xhat = (xr[d] - m) * r;
      const double g = dyr[d] * (gamma ? gamma[d] : T(1));
      sum_g += g;
      sum_gx += g * xhat;
      if (dgamma) dgamma[d] += static_cast<T>(dyr[d] * xhat);
      if (dbeta) dbeta[d] += dyr[d];
    }
    if (!dx) continue;
    const double mg = sum_g / static_cast<double>(D), mgx = sum_gx / static_cast<double>(D);
    for (int64_t d = 0; d < D; ++d) {
      const double xhat = (xr[d] - m) * r;
      const double g = dyr[d] * (gamma ? gamma[d] : T(1));
      dx[n * D + d] = static_cast<T>(r * (g - mg - xhat * mgx));
    }
  }
}

template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  const double M = static_cast<double>(N * L);
  for (int64_t c = 0; c < C; ++c) {
    double m = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) m += x[(n * C + c) * L + l];
    m /= M;
    double v = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const double d = x[(n * C + c) * L + l] - m;
        v += d * d;
      }
    v /= M;
    mean[c] = static_cast<T>(m);
    rstd[c] = static_cast<T>(1.0 / std::sqrt(v + static_cast<double>(eps)));
    if (var) var[c] = static_cast<T>(v);
    const double r = 1.0 / std::sqrt(v + static_cast<double>(eps));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        double out = (x[i] - m) * r;
        if (gamma) out *= gamma[c];
        if (beta) out += beta[c];
        y[i] = static_cast<T>(out);
      }
  }
}

template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  for (int64_t c = 0; c < C; ++c) {
    const double r = 1.0 / std::sqrt(static_cast<double>(var[c]) + static_cast<double>(eps));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        double out = (x[i] - static_cast<double>(mean[c])) * r;
        if (gamma) out *= gamma[c];
        if (beta) out += beta[c];
        y[i] = static_cast<T>(out);
      }
  }
}

template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  const double M = static_cast<double>(N * L);
  for (int64_t c = 0; c < C; ++c) {
    double shift = 0;  // recovers the exact batch mean, as exact_mean() does
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l)
        shift += static_cast<double>(x[(n * C + c) * L + l]) - mean[c];
    const double m = mean[c] + shift / M, r = rstd[c], gm = gamma ? gamma[c] : 1.0;
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - m) * r;
      }
    if (dgamma) dgamma[c] += static_cast<T>(sum_dy_xhat);
    if (dbeta) dbeta[c] += static_cast<T>(sum_dy);
    if (!dx) continue;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        const double xhat = (x[i] - m) * r;
        dx[i] = static_cast<T>(gm * r * (dy[i] - sum_dy / M - xhat * sum_dy_xhat / M));
      }
  }
}

template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  for (int64_t c = 0; c < C; ++c) {
    const double m = mean[c], r = rstd[c], gm = gamma ? gamma[c] : 1.0;
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = (n * C + c) * L + l;
        sum_dy += dy[i];
        sum_dy_xhat += dy[i] * (x[i] - m) * r;
        if (dx) dx[i] = static_cast<T>(dy[i] * gm * r);
      }
    if (dgamma) dgamma[c] += static_cast<T>(sum_dy_xhat);
    if (dbeta) dbeta[c] += static_cast<T>(sum_dy);
  }
}

template <typename T>
void batchnorm_relu_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                                  const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  batchnorm_forward_train(y, mean, rstd, var, x, gamma, beta, N, C, L, eps);
  for (int64_t i = 0; i < N * C * L; ++i) y[i] = y[i] < T(0) ? T(0) : y[i];
}

template <typename T>
void batchnorm_relu_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                                 const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  batchnorm_forward_eval(y, x, mean, var, gamma, beta, N, C, L, eps);
  for (int64_t i = 0; i < N * C * L; ++i) y[i] = y[i] < T(0) ? T(0) : y[i];
}

template <typename T>
void batchnorm_relu_backward(bool train, T* dx, T* dgamma, T* dbeta, const T* dy, const T* y,
                             const T* x, const T* mean, const T* rstd, const T* gamma, int64_t N,
                             int64_t C, int64_t L) {
  std::vector<T> g(static_cast<size_t>(N * C * L));
  for (int64_t i = 0; i < N * C * L; ++i) g[i] = y[i] <= T(0) ? T(0) : dy[i];
  (train ? batchnorm_backward_train<T> : batchnorm_backward_eval<T>)(dx, dgamma, dbeta, g.data(), x,
                                                                     mean, rstd, gamma, N, C, L);
}

#define NORMLAB_INSTANTIATE(T)                                                                    \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                     T);                                                          \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,         \
                                      const T*, int64_t, int64_t);                                \
  template void batchnorm_forward_train<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t, \
                                           int64_t, int64_t, T);                                  \
  template void batchnorm_forward_eval<T>(T*, const T*, const T*, const T*, const T*, const T*,   \
                                          int64_t, int64_t, int64_t, T);                          \
  template void batchnorm_backward_train<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                            const T*, int64_t, int64_t, int64_t);                 \
  template void batchnorm_backward_eval<T>(T*, T*, T*, const T*, const T*, const T*, const T*,    \
                                           const T*, int64_t, int64_t, int64_t);                  \
  template void batchnorm_relu_forward_train<T>(T*, T*, T*, T*, const T*, const T*, const T*,     \
                                                int64_t, int64_t, int64_t, T);                    \
  template void batchnorm_relu_forward_eval<T>(T*, const T*, const T*, const T*, const T*,        \
                                               const T*, int64_t, int64_t, int64_t, T);           \
  template void batchnorm_relu_backward<T>(bool, T*, T*, T*, const T*, const T*, const T*,        \
                                           const T*, const T*, const T*, int64_t, int64_t,        \
                                           int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab::ref
