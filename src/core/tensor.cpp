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

namespace {
// shape_numel without building a Shape unless it has to report an error.
int64_t numel_of(std::span<const int64_t> dims, int64_t last) {
  int64_t n = 1;
  for (size_t i = 0; i < dims.size(); ++i) {
    const int64_t d = i + 1 == dims.size() && last >= 0 ? last : dims[i];
    if (d < 0 || (d != 0 && n > std::numeric_limits<int64_t>::max() / d)) {
      Shape s(dims.begin(), dims.end());
      if (last >= 0) s.back() = last;
      return shape_numel(s);  // throws the message
    }
    n *= d;
  }
  return n;
}
}  // namespace

template <typename T>
void Tensor<T>::resize(const Shape& shape) {
  const int64_t n = shape_numel(shape);
  shape_ = shape;
  data_.resize(static_cast<size_t>(n));
}

template <typename T>
void Tensor<T>::resize(std::initializer_list<int64_t> shape) {
  const int64_t n = numel_of(shape, -1);
  shape_.assign(shape.begin(), shape.end());
  data_.resize(static_cast<size_t>(n));
}

template <typename T>
void Tensor<T>::resize_last(const Shape& like, int64_t last) {
  if (like.empty()) fail("cannot replace the last dimension of a scalar shape by ", last);
  if (last < 0)
    fail("tensor shape ", shape_str(like), " with last dimension ", last, " is negative");
  const int64_t n = numel_of(like, last);
  if (&like != &shape_) shape_.assign(like.begin(), like.end());
  shape_.back() = last;
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
