#include <algorithm>
#include <new>
#include <set>

#include "normlab/aligned_vector.hpp"
#include "normlab/error.hpp"
#include "normlab/optim.hpp"
#include "optim/elementwise.hpp"

namespace normlab {

namespace {

// n zeros, aligned as Tensor storage, freed when the last tensor bound to them goes.
std::shared_ptr<float[]> flat_block(int64_t n) {
  constexpr std::align_val_t kAlign{kTensorAlignment};
  float* p = static_cast<float*>(::operator new[](static_cast<size_t>(n) * sizeof(float), kAlign));
  std::fill(p, p + n, 0.0f);
  return std::shared_ptr<float[]>(p, [](float* q) { ::operator delete[](q, kAlign); });
}

}  // namespace

Optimizer::Optimizer(const std::string& kind, const std::vector<StateEntry<float>>& entries,
                     double lr)
    : kind_(kind), lr_(lr) {
  std::set<std::string> seen;
  std::set<const Tensor<float>*> tensors;
  for (const auto& e : entries) {
    if (!e.is_param()) continue;
    if (!e.value) fail(kind_, ": parameter ", e.name, " has a gradient but no value tensor");
    if (e.grad->shape() != e.value->shape())
      fail(kind_, ": gradient of parameter ", e.name, " has shape ", shape_str(e.grad->shape()),
           ", the parameter ", shape_str(e.value->shape()));
    if (!seen.insert(e.name).second) fail(kind_, ": two parameters are named ", e.name);
    // Each tensor gets one place in the flat blocks: a shared one would be updated twice.
    if (!tensors.insert(e.value).second || !tensors.insert(e.grad).second)
      fail(kind_, ": parameter ", e.name,
           " shares its value or gradient tensor with another parameter (tied weights are not "
           "supported)");
    params_.push_back({e.name, e.value, e.grad, flat_size_, e.value->numel()});
    flat_size_ += (e.value->numel() + kFlatAlign - 1) / kFlatAlign * kFlatAlign;
  }
  if (params_.empty()) fail(kind_, ": the model has no trainable parameters");
  set_lr(lr);

  values_ = flat_block(flat_size_);
  grads_ = flat_block(flat_size_);
  for (const Param& p : params_) {
    p.value->bind(values_, values_.get() + p.offset);
    p.grad->bind(grads_, grads_.get() + p.offset);
  }
}

void Optimizer::set_lr(double lr) {
  if (!(lr > 0.0)) fail(kind_, ": option lr=", lr, " must be > 0");
  lr_ = lr;
}

// One parallel region over the gradients: for the seed-001 MLP a 3 MB fill,
// which one thread writes at well below the memory's speed.
void Optimizer::zero_grad() {
  float* g = grads_.get();
  for_each_range([g](int64_t begin, int64_t end) { std::fill(g + begin, g + end, 0.0f); });
}

std::pair<size_t, int64_t> Optimizer::locate(int64_t at) const {
  if (at < 0 || at >= flat_size_)
    fail(kind_, ": flat position ", at, " is outside the parameters' ", flat_size_);
  const auto after = std::upper_bound(params_.begin(), params_.end(), at,
                                      [](int64_t a, const Param& p) { return a < p.offset; });
  const Param& p = *(after - 1);  // params_[0].offset == 0 <= at
  return {static_cast<size_t>(after - 1 - params_.begin()), at - p.offset};
}

// Every bound tensor holds one share of its block, besides the optimizer's own.
void Optimizer::check_bound() const {
  const long want = static_cast<long>(params_.size()) + 1;
  if (values_.use_count() != want || grads_.use_count() != want)
    fail(kind_, ": the model's parameters no longer use this optimizer's buffers (only ",
         std::min(values_.use_count(), grads_.use_count()) - 1, " of ", params_.size(),
         " do): the model was destroyed, or another optimizer was built over it since");
}

Optimizer::FlatState Optimizer::flat_zeros() const {
  FlatState s;
  s.block = flat_block(flat_size_);
  s.tensors.reserve(params_.size());
  for (const Param& p : params_)
    s.tensors.emplace_back(p.value->shape(), s.block, s.block.get() + p.offset);
  return s;
}

std::vector<StateEntry<float>> Optimizer::state_entries(
    const std::vector<std::pair<std::string, FlatState*>>& buffers) {
  std::vector<StateEntry<float>> s;
  StateEntry<float> count;
  count.name = "step";
  count.count = &steps_;
  s.push_back(count);
  for (size_t i = 0; i < params_.size(); ++i)
    for (const auto& buffer : buffers) {
      StateEntry<float> e;
      e.name = buffer.first + "." + params_[i].name;
      e.value = &buffer.second->tensors[i];
      s.push_back(e);
    }
  return s;
}

}  // namespace normlab
