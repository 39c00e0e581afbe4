// Sigmoid activation, nn.Sigmoid: y = 1 / (1 + exp(-x)) elementwise, any shape.
// Backward: dx = dy * y * (1 - y) (docs/derivations.md, "Sigmoid"). NaN stays
// NaN, -inf -> 0, +inf -> 1 (as torch.sigmoid). No parameters, no state.
// Source: PyTorch's nn.Sigmoid; used by the bn-paper study (Ioffe & Szegedy
// 2015, sec. 4.1: sigmoid hidden units).
#pragma once
#include <string>

#include "normlab/layer.hpp"

namespace normlab {

template <typename T>
class Sigmoid : public Layer<T> {
 public:
  std::string name() const override { return "Sigmoid"; }
  Shape output_shape(const Shape& in) const override { return in; }
  // dy must have the shape of the last forward's output; returns dx (same
  // shape) or an empty tensor when input gradients are off.
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Tensor<T> y_, dx_;
};

}  // namespace normlab
