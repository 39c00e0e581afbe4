// The default LayerNorm / BatchNorm entry points. For now they are the
// reference kernels; the vectorised OpenMP versions replace them here.
#include "normlab/kernels.hpp"

namespace normlab {

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps) {
  ref::layernorm_forward(y, mean, rstd, x, gamma, beta, N, D, eps);
}
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D) {
  ref::layernorm_backward(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, D);
}
template <typename T>
void batchnorm_forward_train(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma,
                             const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  ref::batchnorm_forward_train(y, mean, rstd, var, x, gamma, beta, N, C, L, eps);
}
template <typename T>
void batchnorm_forward_eval(T* y, const T* x, const T* mean, const T* var, const T* gamma,
                            const T* beta, int64_t N, int64_t C, int64_t L, T eps) {
  ref::batchnorm_forward_eval(y, x, mean, var, gamma, beta, N, C, L, eps);
}
template <typename T>
void batchnorm_backward_train(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                              const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  ref::batchnorm_backward_train(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
}
template <typename T>
void batchnorm_backward_eval(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                             const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t L) {
  ref::batchnorm_backward_eval(dx, dgamma, dbeta, dy, x, mean, rstd, gamma, N, C, L);
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
                                           const T*, int64_t, int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
