// nn.Unflatten(1, sizes): (N, D, *) -> (N, sizes..., *) with D = the product
// of sizes; the inverse of Flatten. In a model spec it turns the (N, 784)
// MNIST batch into (N, 28, 28) for layers that want channels and a length
// (InstanceNorm1d). No state. Errors: an empty or non-positive size list
// (constructor); an input of rank < 2 or whose dim 1 is not the product.
#pragma once
#include "normlab/layer.hpp"

namespace normlab {

template <typename T>
class Unflatten : public Layer<T> {
 public:
  explicit Unflatten(Shape sizes);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Shape sizes_;
  Shape in_shape_;
  Tensor<T> y_, dx_;
};

}  // namespace normlab
