// A dense, contiguous, row-major tensor that owns its storage.
// Layers keep their outputs and gradients in Tensors and reuse the storage
// from step to step: resize() to an unchanged element count never allocates.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace normlab {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "(128, 512)"
int64_t shape_numel(const Shape& shape);    // product; throws on negative or overflowing dims

template <typename T>
class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape, T fill = T(0));

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + rank() : i]; }  // dim(-1) is the last
  int64_t numel() const { return static_cast<int64_t>(data_.size()); }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  std::span<T> span() { return data_; }
  std::span<const T> span() const { return data_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }

  // Sets the shape; keeps the storage when the element count allows (contents then unspecified).
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
  Shape shape_;
  std::vector<T> data_;
};

extern template class Tensor<float>;
extern template class Tensor<double>;

}  // namespace normlab
