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
  owned_.assign(static_cast<size_t>(shape_numel(shape_)), fill);
  own();
}

template <typename T>
Tensor<T> Tensor<T>::from(Shape shape, std::span<const T> values) {
  const int64_t n = shape_numel(shape);
  if (static_cast<uint64_t>(n) != values.size())
    fail("Tensor::from: shape ", shape_str(shape), " needs ", n, " value", n == 1 ? "" : "s",
         ", got ", values.size());
  Tensor t(std::move(shape));
  std::copy(values.begin(), values.end(), t.data());
  return t;
}

template <typename T>
Tensor<T> Tensor<T>::from(Shape shape, std::initializer_list<T> values) {
  return from(std::move(shape), std::span<const T>(values.begin(), values.size()));
}

template <typename T>
Tensor<T>::Tensor(Shape shape, std::shared_ptr<T[]> block, T* at)
    : shape_(std::move(shape)), block_(std::move(block)), data_(at), numel_(shape_numel(shape_)) {
  if (!block_) fail("a tensor of shape ", shape_str(shape_), " cannot be bound to a null block");
}

template <typename T>
Tensor<T>::Tensor(const Tensor& other)
    : shape_(other.shape_), owned_(other.data_, other.data_ + other.numel_) {
  own();
}

template <typename T>
Tensor<T>::Tensor(Tensor&& other) noexcept
    : shape_(std::move(other.shape_)),
      owned_(std::move(other.owned_)),
      block_(std::move(other.block_)),
      data_(other.data_),
      numel_(other.numel_) {
  if (!block_) own();  // a moved vector keeps its buffer; own() says so explicitly
  other.shape_.clear();
  other.owned_.clear();
  other.own();
}

template <typename T>
Tensor<T>& Tensor<T>::operator=(const Tensor& other) {
  if (this == &other) return *this;
  if (block_) {
    if (other.numel_ != numel_)
      fail("cannot assign a tensor of shape ", shape_str(other.shape_), " (", other.numel_,
           " elements) to a tensor of shape ", shape_str(shape_), " (", numel_,
           " elements) that is bound to a flat block (an optimizer's parameter, gradient or "
           "state buffer): the element counts must match");
    std::copy(other.data_, other.data_ + numel_, data_);
    shape_ = other.shape_;
    return *this;
  }
  shape_ = other.shape_;
  owned_.assign(other.data_, other.data_ + other.numel_);
  own();
  return *this;
}

template <typename T>
Tensor<T>& Tensor<T>::operator=(Tensor&& other) {
  if (this == &other) return *this;
  if (block_) return *this = static_cast<const Tensor&>(other);  // stays where it is bound
  shape_ = std::move(other.shape_);
  owned_ = std::move(other.owned_);
  block_ = std::move(other.block_);
  if (block_)
    data_ = other.data_, numel_ = other.numel_;
  else
    own();
  other.shape_.clear();
  other.owned_.clear();
  other.block_.reset();
  other.own();
  return *this;
}

template <typename T>
void Tensor<T>::bind(std::shared_ptr<T[]> block, T* at) {
  if (!block || !at) fail("cannot bind a tensor of shape ", shape_str(shape_), " to a null block");
  if (at != data_ && numel_ > 0) std::copy(data_, data_ + numel_, at);
  block_ = std::move(block);  // drops the share of a block this tensor was bound to before
  data_ = at;
  AlignedVector<T>().swap(owned_);
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
void Tensor<T>::set_count(int64_t n, std::span<const int64_t> dims, int64_t last) {
  if (!block_) {
    owned_.resize(static_cast<size_t>(n));
    own();
    return;
  }
  if (n == numel_) return;
  Shape to(dims.begin(), dims.end());
  if (last >= 0) to.back() = last;
  fail("cannot resize a tensor of shape ", shape_str(shape_), " to ", shape_str(to), " (", n,
       " elements): it is bound to ", numel_,
       " elements of a flat block (an optimizer's parameter, gradient or state buffer), "
       "whose size is fixed");
}

template <typename T>
void Tensor<T>::resize(const Shape& shape) {
  set_count(shape_numel(shape), shape);
  shape_ = shape;
}

template <typename T>
void Tensor<T>::resize(std::initializer_list<int64_t> shape) {
  set_count(numel_of(shape, -1), shape);
  shape_.assign(shape.begin(), shape.end());
}

template <typename T>
void Tensor<T>::resize_last(const Shape& like, int64_t last) {
  if (like.empty()) fail("cannot replace the last dimension of a scalar shape by ", last);
  if (last < 0)
    fail("tensor shape ", shape_str(like), " with last dimension ", last, " is negative");
  set_count(numel_of(like, last), like, last);
  if (&like != &shape_) shape_.assign(like.begin(), like.end());
  shape_.back() = last;
}

template <typename T>
void Tensor<T>::reshape(const Shape& shape) {
  if (shape_numel(shape) != numel())
    fail("cannot reshape a tensor of shape ", shape_str(shape_), " to ", shape_str(shape));
  shape_ = shape;
}

template <typename T>
void Tensor<T>::fill(T value) {
  std::fill(data_, data_ + numel_, value);
}

template class Tensor<float>;
template class Tensor<double>;

}  // namespace normlab
