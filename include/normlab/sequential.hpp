// A chain of named layers, like nn.Sequential (children named "0", "1", ...)
// or a module with named children ("p1", "ln1", ...). State names are
// "<child>.<name>", PyTorch's state_dict keys.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "normlab/layer.hpp"

namespace normlab {

template <typename T>
class Sequential : public Layer<T> {
 public:
  Sequential() = default;
  // Adds a child named by its index unless a name is given.
  Sequential& add(LayerPtr<T> layer, std::string child_name = "");

  std::string name() const override;
  Shape output_shape(const Shape& in) const override;  // checks every layer in turn
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  void set_training(bool on) override;
  void set_input_grad(bool on) override;
  // Lets every child that can apply the ReLU right after it do so (in nested
  // Sequentials too): that ReLU then passes its input through. Same outputs
  // and gradients, one pass less over the activations each way. Returns how
  // many ReLUs were fused. The Trainer calls it.
  int fuse_relus();
  // After a forward: the first NaN or infinity in the children's outputs, in
  // order (inside nested Sequentials too), e.g. "the output of layer 2
  // (LayerNorm(4, eps=0)) holds nan at (0, 1)", or "" if there is none. The
  // Trainer adds it when the loss is not finite, naming the layer that made it.
  std::string locate_non_finite_output() const;

  // Called after each child's backward with the child's index (the trainer
  // starts the gradient all-reduce of the layers behind it there,
  // docs/distributed.md); an empty function: none.
  void set_backward_hook(std::function<void(size_t)> hook) { backward_hook_ = std::move(hook); }

  size_t size() const { return layers_.size(); }
  Layer<T>& operator[](size_t i) { return *layers_[i].second; }
  const std::string& child_name(size_t i) const { return layers_[i].first; }

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  std::string locate_non_finite_output(const std::string& prefix) const;

  std::vector<std::pair<std::string, LayerPtr<T>>> layers_;
  std::vector<const Tensor<T>*> outputs_;  // each child's output of the last forward
  std::function<void(size_t)> backward_hook_;
};

}  // namespace normlab
