#include "normlab/tensor.hpp"

#include <algorithm>
#include <limits>

#include "normlab/error.hpp"

namespace normlab {

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("tensor shape ", shape_str(shape), " has a negative dimension");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      fail("tensor shape ", shape_str(shape), " has more elements than fit in 64 bits");
    n *= d;
  }
  return n;
}

template <typename T>
Tensor<T>::Tensor(Shape shape, T fill) : shape_(std::move(shape)) {
  data_.assign(static_cast<size_t>(shape_numel(shape_)), fill);
}

template <typename T>
void Tensor<T>::resize(const Shape& shape) {
  const int64_t n = shape_numel(shape);
  shape_ = shape;
  data_.resize(static_cast<size_t>(n));
}

template <typename T>
void Tensor<T>::reshape(const Shape& shape) {
  if (shape_numel(shape) != numel())
    fail("cannot reshape a tensor of shape ", shape_str(shape_), " to ", shape_str(shape));
  shape_ = shape;
}

template <typename T>
void Tensor<T>::fill(T value) {
  std::fill(data_.begin(), data_.end(), value);
}

template class Tensor<float>;
template class Tensor<double>;

}  // namespace normlab
