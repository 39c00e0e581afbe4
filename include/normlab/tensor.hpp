// A dense, contiguous, row-major tensor. It owns its storage, or it is bound
// to a share of a block that several tensors use (an optimizer keeps every
// parameter, gradient and state buffer of a model in one flat block each, so
// that it updates them in one pass: optim.hpp).
// Layers keep their outputs and gradients in Tensors and reuse the storage
// from step to step: resize() to an unchanged element count never allocates.
//
// A bound tensor stays where it is bound: it keeps its element count (resize
// or assignment to another count throws), assigning to it copies the elements
// into the shared block, and it holds a share of the block, so the block lives
// as long as any tensor bound to it. Copies of any tensor own their storage;
// moving a tensor moves its binding.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "normlab/aligned_vector.hpp"

namespace normlab {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "(128, 512)"
int64_t shape_numel(const Shape& shape);    // product; throws on negative or overflowing dims

template <typename T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, T fill = T(0));
  // A tensor of `shape` over shape_numel(shape) elements of `block` starting at
  // `at`, bound from the start; the contents are the block's as they are.
  Tensor(Shape shape, std::shared_ptr<T[]> block, T* at);

  // An owning tensor of `shape` holding `values` in row-major order:
  //   Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6})   // (2, 3): rows {1,2,3}, {4,5,6}
  //   Tensor<float>::from({}, {7})                      // a scalar, shape ()
  // Throws an Error if the number of values is not shape_numel(shape)
  // ("Tensor::from: shape (2, 3) needs 6 values, got 5"), or if the shape has
  // a negative dimension or too many elements.
  static Tensor from(Shape shape, std::initializer_list<T> values);
  static Tensor from(Shape shape, std::span<const T> values);
  static Tensor from(Shape shape, const std::vector<T>& values) {
    return from(std::move(shape), std::span<const T>(values));
  }

  Tensor(const Tensor& other);  // an owning copy, also of a bound tensor
  Tensor(Tensor&& other) noexcept;
  // Into a bound tensor: copies the elements (counts must match; the shape is
  // taken); into an owning one: as a copy, or a move (which takes a binding along).
  Tensor& operator=(const Tensor& other);
  Tensor& operator=(Tensor&& other);

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + rank() : i]; }  // dim(-1) is the last
  int64_t numel() const { return numel_; }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::span<T> span() { return {data_, static_cast<size_t>(numel_)}; }
  std::span<const T> span() const { return {data_, static_cast<size_t>(numel_)}; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }

  // Moves the tensor into `block` at `at` (room for numel() elements, not
  // overlapping its current storage): copies the contents there, frees the
  // owned storage, and from then on reads and writes there. Binding an already
  // bound tensor again moves it to the new place and drops its share of the old block.
  void bind(std::shared_ptr<T[]> block, T* at);
  bool bound() const { return block_ != nullptr; }

  // Sets the shape; keeps the storage when the element count allows (contents then unspecified).
  // A bound tensor takes only shapes of its element count (otherwise an Error).
  // The dims are copied into the tensor's own shape storage, so once a tensor has
  // had its largest size and rank, resizing allocates nothing (hot paths use the
  // braced form, which builds no temporary Shape).
  void resize(const Shape& shape);
  void resize(std::initializer_list<int64_t> shape);
  // The shape `like` with its last dimension replaced by `last` (a linear layer's
  // output for an input shaped `like`); `like` must have rank >= 1.
  void resize_last(const Shape& like, int64_t last);
  // Same elements, new shape with the same element count.
  void reshape(const Shape& shape);
  void fill(T value);

 private:
  // Points data_ and numel_ at owned_ after it changed (owning tensors only).
  void own() {
    data_ = owned_.data();
    numel_ = static_cast<int64_t>(owned_.size());
  }
  // Sets the storage to n elements: resizes owned_, or checks a bound tensor's count.
  void set_count(int64_t n, std::span<const int64_t> dims, int64_t last = -1);

  Shape shape_;
  AlignedVector<T> owned_;      // an owning tensor's storage (64-byte aligned); empty when bound
  std::shared_ptr<T[]> block_;  // the shared block of a bound tensor, else null
  T* data_ = nullptr;           // owned_.data() or the bound place
  int64_t numel_ = 0;
};

extern template class Tensor<float>;
extern template class Tensor<double>;

// An owning copy of `t` with every element converted to U by static_cast
// (float <-> double: widening is exact; narrowing rounds to nearest, and a
// finite double beyond float's range becomes +-inf, as in PyTorch's .float()).
// Same shape, also for a bound or empty tensor; never throws but for memory.
//   Tensor<double> d = tensor_cast<double>(Tensor<float>::from({2}, {0.5f, 1.f}));
template <typename U, typename T>
Tensor<U> tensor_cast(const Tensor<T>& t) {
  if (t.numel() == 0 && t.shape().empty()) return {};  // a default-constructed (empty) tensor
  Tensor<U> out(t.shape());
  const T* src = t.data();
  U* dst = out.data();
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = static_cast<U>(src[i]);
  return out;
}

}  // namespace normlab
