#include "normlab/sigmoid.hpp"

#include <cmath>

#include "nn/shape_check.hpp"

namespace normlab {

template <typename T>
const Tensor<T>& Sigmoid<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(x.shape());
  const T* in = x.data();
  T* out = y_.data();
  const int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
  for (int64_t i = 0; i < n; ++i) out[i] = T(1) / (T(1) + std::exp(-in[i]));
  return y_;
}

template <typename T>
const Tensor<T>& Sigmoid<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(dy.shape());
  const T* g = dy.data();
  const T* y = y_.data();
  T* dx = dx_.data();
  const int64_t n = dy.numel();
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
  for (int64_t i = 0; i < n; ++i) dx[i] = g[i] * y[i] * (T(1) - y[i]);
  return dx_;
}

template class Sigmoid<float>;
template class Sigmoid<double>;

}  // namespace normlab
