#include <cmath>

#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
Linear<T>::Linear(int64_t in, int64_t out, bool has_bias) : in_(in), out_(out) {
  check_positive("Linear", "in_features", in);
  check_positive("Linear", "out_features", out);
  weight = Tensor<T>({out, in});
  dweight = Tensor<T>({out, in});
  if (has_bias) {
    bias = Tensor<T>({out});
    dbias = Tensor<T>({out});
  }
}

template <typename T>
Linear<T>::Linear(int64_t in, int64_t out, bool has_bias, Rng& rng) : Linear(in, out, has_bias) {
  // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(fan_in).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  rng.fill_uniform(weight.data(), weight.numel(), -bound, bound);
  if (has_bias) rng.fill_uniform(bias.data(), bias.numel(), -bound, bound);
}

template <typename T>
std::string Linear<T>::name() const {
  return "Linear(" + std::to_string(in_) + ", " + std::to_string(out_) +
         (bias.numel() ? ")" : ", bias=false)");
}

template <typename T>
Shape Linear<T>::output_shape(const Shape& in) const {
  rows_with_last_dim(*this, in, in_);
  Shape out = in;
  out.back() = out_;
  return out;
}

template <typename T>
const Tensor<T>& Linear<T>::forward_impl(const Tensor<T>& x) {
  const int64_t N = rows_with_last_dim(*this, x.shape(), in_);
  x_ = &x;
  y_.resize_last(x.shape(), out_);
  if (N == 0) return y_;  // an empty batch: an empty output, as in PyTorch
  linear_forward(y_.data(), x.data(), weight.data(), bias.numel() ? bias.data() : nullptr, N, in_,
                 out_);
  return y_;
}

template <typename T>
const Tensor<T>& Linear<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / in_;
  size_dx(dx_, *x_, this->input_grad_);
  if (N == 0) return dx_;  // an empty batch adds nothing to dweight and dbias
  linear_backward(this->input_grad_ ? dx_.data() : nullptr, dweight.data(),
                  bias.numel() ? dbias.data() : nullptr, dy.data(), x_->data(), weight.data(), N,
                  in_, out_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> Linear<T>::state() {
  std::vector<StateEntry<T>> s{{"weight", &weight, &dweight}};
  if (bias.numel()) s.push_back({"bias", &bias, &dbias});
  return s;
}

template class Linear<float>;
template class Linear<double>;

}  // namespace normlab
