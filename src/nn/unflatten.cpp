#include "normlab/unflatten.hpp"

#include <algorithm>
#include <sstream>

#include "nn/shape_check.hpp"

namespace normlab {

template <typename T>
Unflatten<T>::Unflatten(Shape sizes) : sizes_(std::move(sizes)) {
  if (sizes_.empty()) fail("Unflatten: expected at least one size");
  for (int64_t d : sizes_)
    if (d <= 0) fail("Unflatten", shape_str(sizes_), ": sizes must be positive");
}

template <typename T>
std::string Unflatten<T>::name() const {
  std::ostringstream os;
  os << "Unflatten(1, ";
  for (size_t i = 0; i < sizes_.size(); ++i) os << (i ? "x" : "") << sizes_[i];
  return os.str() + ")";
}

template <typename T>
Shape Unflatten<T>::output_shape(const Shape& in) const {
  if (in.size() < 2 || in[1] != shape_numel(sizes_))
    fail(name(), ": expected an input (N, ", shape_numel(sizes_), ", *), got shape ",
         shape_str(in));
  Shape out{in[0]};
  out.insert(out.end(), sizes_.begin(), sizes_.end());
  out.insert(out.end(), in.begin() + 2, in.end());
  return out;
}

template <typename T>
const Tensor<T>& Unflatten<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(output_shape(x.shape()));
  in_shape_ = x.shape();
  std::copy(x.data(), x.data() + x.numel(), y_.data());
  return y_;
}

template <typename T>
const Tensor<T>& Unflatten<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(in_shape_);
  std::copy(dy.data(), dy.data() + dy.numel(), dx_.data());
  return dx_;
}

template class Unflatten<float>;
template class Unflatten<double>;

}  // namespace normlab
