#include <set>

#include "normlab/error.hpp"
#include "normlab/optim.hpp"
#include "optim/elementwise.hpp"

namespace normlab {

Optimizer::Optimizer(const std::string& kind, const std::vector<StateEntry<float>>& entries,
                     double lr)
    : kind_(kind), lr_(lr) {
  std::set<std::string> seen;
  for (const auto& e : entries) {
    if (!e.is_param()) continue;
    if (!e.value) fail(kind_, ": parameter ", e.name, " has a gradient but no value tensor");
    if (e.grad->shape() != e.value->shape())
      fail(kind_, ": gradient of parameter ", e.name, " has shape ", shape_str(e.grad->shape()),
           ", the parameter ", shape_str(e.value->shape()));
    if (!seen.insert(e.name).second) fail(kind_, ": two parameters are named ", e.name);
    params_.push_back({e.name, e.value, e.grad});
  }
  if (params_.empty()) fail(kind_, ": the model has no trainable parameters");
  set_lr(lr);
}

void Optimizer::set_lr(double lr) {
  if (!(lr > 0.0)) fail(kind_, ": option lr=", lr, " must be > 0");
  lr_ = lr;
}

// One parallel region over all gradients: for the seed-001 MLP a 3 MB fill,
// which one thread writes at well below the memory's speed.
void Optimizer::zero_grad() {
  parallel_tensor_ranges(
      params_.size(), [&](size_t i) { return params_[i].grad->numel(); },
      [&](size_t i, int64_t begin, int64_t end) {
        std::fill(params_[i].grad->data() + begin, params_[i].grad->data() + end, 0.0f);
      });
}

std::vector<Tensor<float>> Optimizer::zeros_like_params() const {
  std::vector<Tensor<float>> out;
  out.reserve(params_.size());
  for (const auto& p : params_) out.emplace_back(p.value->shape(), 0.0f);
  return out;
}

std::vector<StateEntry<float>> Optimizer::state_entries(
    const std::vector<std::pair<std::string, std::vector<Tensor<float>>*>>& buffers) {
  std::vector<StateEntry<float>> s;
  StateEntry<float> count;
  count.name = "step";
  count.count = &steps_;
  s.push_back(count);
  for (size_t i = 0; i < params_.size(); ++i)
    for (const auto& [prefix, tensors] : buffers) {
      StateEntry<float> e;
      e.name = prefix + "." + params_[i].name;
      e.value = &(*tensors)[i];
      s.push_back(e);
    }
  return s;
}

}  // namespace normlab
