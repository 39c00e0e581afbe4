#include <sstream>

#include "nn/overflow_fallback.hpp"
#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
LayerNorm<T>::LayerNorm(Shape normalized_shape, LayerNormOptions opt)
    : normalized_shape_(std::move(normalized_shape)), opt_(opt) {
  if (normalized_shape_.empty()) fail("LayerNorm: normalized_shape must not be empty");
  for (int64_t d : normalized_shape_)
    if (d <= 0) fail("LayerNorm", shape_str(normalized_shape_), ": dimensions must be positive");
  // PyTorch takes any eps. eps = 0 is kept (a constant row then gives NaN, as in
  // PyTorch); a negative or NaN eps only ever makes rows NaN: refused (docs/edge-semantics.md).
  if (!(opt.eps >= 0))
    fail("LayerNorm", shape_str(normalized_shape_), ": eps must be >= 0, got ", opt.eps);
  D_ = shape_numel(normalized_shape_);
  if (opt.elementwise_affine) {
    weight = Tensor<T>(normalized_shape_, T(1));
    dweight = Tensor<T>(normalized_shape_);
    if (opt.bias) {
      bias = Tensor<T>(normalized_shape_, T(0));
      dbias = Tensor<T>(normalized_shape_);
    }
  }
}

template <typename T>
std::string LayerNorm<T>::name() const {
  std::ostringstream os;
  os << "LayerNorm(";
  for (size_t i = 0; i < normalized_shape_.size(); ++i)
    os << (i ? "x" : "") << normalized_shape_[i];
  if (!opt_.elementwise_affine)
    os << ", elementwise_affine=false";
  else if (!opt_.bias)
    os << ", bias=false";
  if (opt_.eps != 1e-5) os << ", eps=" << opt_.eps;
  return os.str() + ")";
}

template <typename T>
Shape LayerNorm<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void LayerNorm<T>::check_input(const Shape& in) const {
  check_trailing_shape(*this, in, normalized_shape_);
}

template <typename T>
const Tensor<T>& LayerNorm<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.numel() / D_;
  x_ = &x;
  y_.resize(x.shape());
  mean_.resize({N});
  rstd_.resize({N});
  const T* gamma = weight.numel() ? weight.data() : nullptr;
  const T* beta = bias.numel() ? bias.data() : nullptr;
  if (N == 0) return y_;  // an empty batch: an empty output, as in PyTorch
  layernorm_forward(y_.data(), mean_.data(), rstd_.data(), x.data(), gamma, beta, N, D_,
                    static_cast<T>(opt_.eps));
  exact_ = statistics_overflowed(mean_, rstd_);  // see nn/overflow_fallback.hpp
  if (exact_)
    ref::layernorm_forward(y_.data(), mean_.data(), rstd_.data(), x.data(), gamma, beta, N, D_,
                           static_cast<T>(opt_.eps));
  return y_;
}

template <typename T>
const Tensor<T>& LayerNorm<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / D_;
  size_dx(dx_, *x_, this->input_grad_);
  if (N == 0) return dx_;  // an empty batch adds nothing to dweight and dbias
  (exact_ ? ref::layernorm_backward<T>
          : layernorm_backward<T>)(this->input_grad_ ? dx_.data() : nullptr,
                                   weight.numel() ? dweight.data() : nullptr,
                                   bias.numel() ? dbias.data() : nullptr, dy.data(), x_->data(),
                                   mean_.data(), rstd_.data(),
                                   weight.numel() ? weight.data() : nullptr, N, D_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> LayerNorm<T>::state() {
  std::vector<StateEntry<T>> s;
  if (weight.numel()) s.push_back({"weight", &weight, &dweight});
  if (bias.numel()) s.push_back({"bias", &bias, &dbias});
  return s;
}

template class LayerNorm<float>;
template class LayerNorm<double>;

}  // namespace normlab
