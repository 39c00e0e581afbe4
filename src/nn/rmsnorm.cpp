// torch.nn.RMSNorm: the layer around rmsnorm_forward / rmsnorm_backward.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "nn/shape_check.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
RMSNorm<T>::RMSNorm(Shape normalized_shape, RMSNormOptions opt)
    : normalized_shape_(std::move(normalized_shape)), opt_(opt) {
  if (normalized_shape_.empty()) fail("RMSNorm: normalized_shape must not be empty");
  for (int64_t d : normalized_shape_)
    if (d <= 0) fail("RMSNorm", shape_str(normalized_shape_), ": dimensions must be positive");
  // As LayerNorm: eps = 0 is kept (a zero row then gives NaN, as in PyTorch);
  // a negative or NaN eps can only make rows NaN: refused.
  if (opt.eps && !(*opt.eps >= 0 && std::isfinite(*opt.eps)))
    fail("RMSNorm", shape_str(normalized_shape_), ": eps must be a finite number >= 0, got ",
         *opt.eps);
  D_ = shape_numel(normalized_shape_);
  if (opt.elementwise_affine) {
    weight = Tensor<T>(normalized_shape_, T(1));
    dweight = Tensor<T>(normalized_shape_);
  }
}

template <typename T>
T RMSNorm<T>::eps() const {
  return opt_.eps ? static_cast<T>(*opt_.eps) : std::numeric_limits<T>::epsilon();
}

template <typename T>
std::string RMSNorm<T>::name() const {
  std::ostringstream os;
  os << "RMSNorm(";
  for (size_t i = 0; i < normalized_shape_.size(); ++i)
    os << (i ? "x" : "") << normalized_shape_[i];
  if (opt_.eps) os << ", eps=" << *opt_.eps;
  if (!opt_.elementwise_affine) os << ", elementwise_affine=false";
  return os.str() + ")";
}

template <typename T>
Shape RMSNorm<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void RMSNorm<T>::check_input(const Shape& in) const {
  check_trailing_shape(*this, in, normalized_shape_);
}

template <typename T>
const Tensor<T>& RMSNorm<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.numel() / D_;
  x_ = &x;
  y_.resize(x.shape());
  rstd_.resize({N});
  if (N == 0) return y_;  // an empty batch: an empty output, as in PyTorch
  // The sum of squares is in double in both kernel sets: no overflow fallback
  // is needed (rows near float's limits take the fast kernel's exact path).
  rmsnorm_forward(y_.data(), rstd_.data(), x.data(), weight.numel() ? weight.data() : nullptr, N,
                  D_, eps());
  return y_;
}

template <typename T>
const Tensor<T>& RMSNorm<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / D_;
  size_dx(dx_, *x_, this->input_grad_);
  if (N == 0) return dx_;  // an empty batch adds nothing to dweight
  rmsnorm_backward<T>(this->input_grad_ ? dx_.data() : nullptr,
                      weight.numel() ? dweight.data() : nullptr, dy.data(), x_->data(),
                      rstd_.data(), weight.numel() ? weight.data() : nullptr, N, D_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> RMSNorm<T>::state() {
  std::vector<StateEntry<T>> s;
  if (weight.numel()) s.push_back({"weight", &weight, &dweight});
  return s;
}

template class RMSNorm<float>;
template class RMSNorm<double>;

}  // namespace normlab
