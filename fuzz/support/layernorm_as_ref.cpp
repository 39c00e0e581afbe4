// The default LayerNorm entry points forwarding to ref::, for the fuzz build
// only, when clang cannot compile src/kernels/layernorm_fast.cpp (see
// fuzz/CMakeLists.txt). The fuzzers exercise the readers and the model
// builder; which LayerNorm kernel runs underneath does not matter to them.
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

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, int64_t, int64_t, float);
template void layernorm_forward<double>(double*, double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, double);
template void layernorm_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, int64_t, int64_t);
template void layernorm_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, int64_t,
                                         int64_t);

}  // namespace normlab
