#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
const Tensor<T>& ReLU<T>::forward_impl(const Tensor<T>& x) {
  if (fused_) return x;  // the layer before applied the ReLU already
  y_.resize(x.shape());
  relu_forward(y_.data(), x.data(), x.numel());
  return y_;
}

template <typename T>
const Tensor<T>& ReLU<T>::backward(const Tensor<T>& dy) {
  if (!this->input_grad_) {  // a ReLU has no parameters: nothing to do at all
    if (!fused_) check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
    dx_.resize({0});
    return dx_;
  }
  if (fused_) return dy;  // the layer before masks the gradient itself
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  dx_.resize(dy.shape());
  relu_backward(dx_.data(), dy.data(), y_.data(), dy.numel());
  return dx_;
}

template <typename T>
Shape Flatten<T>::output_shape(const Shape& in) const {
  if (in.empty()) fail("Flatten: expected an input with a batch dimension, got a scalar");
  int64_t rest = 1;
  for (size_t i = 1; i < in.size(); ++i) rest *= in[i];
  return {in[0], rest};
}

template <typename T>
const Tensor<T>& Flatten<T>::forward_impl(const Tensor<T>& x) {
  if (x.rank() == 0) output_shape(x.shape());  // throws the message
  in_shape_ = x.shape();
  int64_t rest = 1;
  for (int i = 1; i < x.rank(); ++i) rest *= x.dim(i);
  y_.resize({x.dim(0), rest});
  std::copy(x.data(), x.data() + x.numel(), y_.data());
  return y_;
}

template <typename T>
const Tensor<T>& Flatten<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(in_shape_);
  std::copy(dy.data(), dy.data() + dy.numel(), dx_.data());
  return dx_;
}

template class ReLU<float>;
template class ReLU<double>;
template class Flatten<float>;
template class Flatten<double>;

}  // namespace normlab
