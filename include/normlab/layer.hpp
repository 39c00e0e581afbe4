// The layer interface: a thin class around the kernels.
//
// Contract for every layer:
//   forward(x): x must stay alive and unchanged until backward(); returns a
//     reference to the layer's own output buffer, valid until the next forward.
//     Passing a temporary does not compile (the layer keeps a pointer to x).
//   backward(dy): dy has the shape of the last output; returns dx (the layer's
//     own buffer), or an empty tensor if input gradients are switched off.
//     Parameter gradients accumulate (+=); zero_grad() clears them.
//   Empty batches (N = 0, or any zero dim) work as in PyTorch: empty outputs
//     and dx, parameter gradients unchanged (docs/edge-semantics.md).
//   NaN and infinity propagate as in PyTorch (docs/edge-semantics.md).
//   state(): parameters and buffers under PyTorch's state_dict names, in
//     PyTorch's order; parameters carry a grad tensor, buffers do not.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "normlab/tensor.hpp"

namespace normlab {

template <typename T>
struct StateEntry {
  std::string name;            // "weight", "running_mean", "0.weight_g", ...
  Tensor<T>* value = nullptr;  // set for tensors
  Tensor<T>* grad = nullptr;   // set for trainable parameters
  int64_t* count = nullptr;    // set for int64 scalar buffers (num_batches_tracked)
  bool is_param() const { return grad != nullptr; }
};

template <typename T>
class Layer {
 public:
  virtual ~Layer() = default;

  virtual std::string name() const = 0;  // "BatchNorm1d(512, affine=false)"
  // Shape of the output for an input of shape `in`; throws an Error naming
  // this layer and both shapes if `in` does not fit.
  virtual Shape output_shape(const Shape& in) const = 0;
  // Not virtual, so that the deleted overload for temporaries is seen on every
  // layer type (an override of forward in a derived class would hide it);
  // layers implement forward_impl.
  const Tensor<T>& forward(const Tensor<T>& x) { return forward_impl(x); }
  const Tensor<T>& forward(const Tensor<T>&& x) = delete;  // x must outlive backward()
  virtual const Tensor<T>& backward(const Tensor<T>& dy) = 0;
  virtual std::vector<StateEntry<T>> state() { return {}; }

  virtual void set_training(bool on) { training_ = on; }
  bool training() const { return training_; }
  // The first layer of a network needs no dx: switching it off saves a matrix product.
  virtual void set_input_grad(bool on) { input_grad_ = on; }
  bool input_grad() const { return input_grad_; }
  // Asks the layer to apply a ReLU that follows it in its own passes: forward
  // then returns max(y, 0) and backward takes the gradient of that. Returns
  // whether the layer does (most do not); Sequential::fuse_relus() asks.
  virtual bool fuse_relu(bool /*on*/) { return false; }

  void zero_grad() {
    for (auto& e : state())
      if (e.grad) e.grad->fill(T(0));
  }

 protected:
  virtual const Tensor<T>& forward_impl(const Tensor<T>& x) = 0;

  bool training_ = true;
  bool input_grad_ = true;
};

template <typename T>
using LayerPtr = std::unique_ptr<Layer<T>>;

}  // namespace normlab
