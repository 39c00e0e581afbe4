#include "normlab/sequential.hpp"

#include <cmath>
#include <sstream>

#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/profile.hpp"

namespace normlab {

template <typename T>
Sequential<T>& Sequential<T>::add(LayerPtr<T> layer, std::string child_name) {
  if (child_name.empty()) child_name = std::to_string(layers_.size());
  layers_.emplace_back(std::move(child_name), std::move(layer));
  return *this;
}

template <typename T>
std::string Sequential<T>::name() const {
  std::string s = "Sequential(";
  for (size_t i = 0; i < layers_.size(); ++i) s += (i ? ", " : "") + layers_[i].second->name();
  return s + ")";
}

template <typename T>
Shape Sequential<T>::output_shape(const Shape& in) const {
  Shape s = in;
  for (size_t i = 0; i < layers_.size(); ++i) {
    try {
      s = layers_[i].second->output_shape(s);
    } catch (const Error& e) {
      fail("layer ", layers_[i].first, " (", layers_[i].second->name(),
           ") of the network: ", e.what());
    }
  }
  return s;
}

template <typename T>
const Tensor<T>& Sequential<T>::forward_impl(const Tensor<T>& x) {
  if (layers_.empty()) fail("Sequential: cannot run an empty network");
  const Tensor<T>* h = &x;
  outputs_.assign(layers_.size(), nullptr);  // allocates on the first forward only
  size_t i = 0;
  for (auto& entry : layers_) {
    // entry.first/second, not a structured binding: C++20 lets a lambda capture a
    // binding, but clang 14 (the fuzz build's compiler) does not implement it yet.
    const auto& name = entry.first;
    auto& layer = entry.second;
    const profile::Scope timer("forward", layer.get(),
                               [&] { return "layer " + name + " " + layer->name() + " forward"; });
    h = &layer->forward(*h);
    outputs_[i++] = h;
  }
  return *h;
}

template <typename T>
const Tensor<T>& Sequential<T>::backward(const Tensor<T>& dy) {
  const Tensor<T>* g = &dy;
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
    const profile::Scope timer("backward", it->second.get(), [&] {
      return "layer " + it->first + " " + it->second->name() + " backward";
    });
    g = &it->second->backward(*g);
    if (backward_hook_) backward_hook_(static_cast<size_t>(layers_.rend() - it - 1));
    if (!it->second->input_grad()) break;  // nothing below needs gradients
  }
  return *g;
}

template <typename T>
std::vector<StateEntry<T>> Sequential<T>::state() {
  std::vector<StateEntry<T>> all;
  for (auto& [name, layer] : layers_)
    for (auto& e : layer->state()) {
      e.name = name + "." + e.name;
      all.push_back(e);
    }
  return all;
}

template <typename T>
void Sequential<T>::set_training(bool on) {
  Layer<T>::set_training(on);
  for (auto& [name, layer] : layers_) layer->set_training(on);
}

// Without an input gradient, the leading layers up to the first one with
// parameters need no dx either (backward stops there); later layers always do.
template <typename T>
void Sequential<T>::set_input_grad(bool on) {
  Layer<T>::set_input_grad(on);
  for (auto& [name, layer] : layers_) {
    layer->set_input_grad(on);
    if (!layer->state().empty()) break;
  }
}

template <typename T>
int Sequential<T>::fuse_relus() {
  int fused = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (auto* child = dynamic_cast<Sequential<T>*>(layers_[i].second.get()))
      fused += child->fuse_relus();
    if (i + 1 == layers_.size()) continue;
    auto* relu = dynamic_cast<ReLU<T>*>(layers_[i + 1].second.get());
    if (relu && !relu->fused() && layers_[i].second->fuse_relu(true)) {
      relu->set_fused(true);
      ++fused;
    }
  }
  return fused;
}

template <typename T>
std::string Sequential<T>::locate_non_finite_output() const {
  return locate_non_finite_output("");
}

template <typename T>
std::string Sequential<T>::locate_non_finite_output(const std::string& prefix) const {
  for (size_t i = 0; i < outputs_.size() && i < layers_.size(); ++i) {
    const std::string path = prefix + layers_[i].first;
    if (const auto* child = dynamic_cast<const Sequential<T>*>(layers_[i].second.get())) {
      std::string inner = child->locate_non_finite_output(path + ".");
      if (!inner.empty()) return inner;
    }
    const Tensor<T>* y = outputs_[i];
    if (!y) break;  // that forward stopped before this layer
    for (int64_t k = 0; k < y->numel(); ++k) {
      if (std::isfinite((*y)[k])) continue;
      std::ostringstream os;
      os << "the output of layer " << path << " (" << layers_[i].second->name() << ") holds "
         << (*y)[k] << " at (";
      int64_t rest = k, stride = y->numel();
      for (int d = 0; d < y->rank(); ++d) {
        stride /= y->dim(d);
        os << (d ? ", " : "") << rest / stride;
        rest %= stride;
      }
      os << ")";
      return os.str();
    }
  }
  return "";
}

template class Sequential<float>;
template class Sequential<double>;

}  // namespace normlab
