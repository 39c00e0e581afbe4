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
  shard_end_ = flat_size_;
  pieces_ = params_;
}

void Optimizer::adopt_flat_blocks(std::shared_ptr<float[]> values, std::shared_ptr<float[]> grads) {
  for (const auto* b : {&values, &grads})
    if (*b && reinterpret_cast<uintptr_t>(b->get()) % kTensorAlignment != 0)
      fail(kind_, ": adopt_flat_blocks: a block is not ", kTensorAlignment, "-byte aligned");
  if (values) {
    std::copy_n(values_.get(), flat_size_, values.get());
    values_ = std::move(values);
  }
  if (grads) {
    std::copy_n(grads_.get(), flat_size_, grads.get());
    grads_ = std::move(grads);
  }
  for (const Param& p : params_) {
    p.value->bind(values_, values_.get() + p.offset);
    p.grad->bind(grads_, grads_.get() + p.offset);
  }
}

std::vector<StateEntry<float>> Optimizer::state() {
  if (sharded_)
    fail(kind_, ": the optimizer is sharded (it holds the state of flat positions [", shard_begin_,
         ", ", shard_end_, ") of ", flat_size_, "): gather_state() collects the whole state");
  return state_entries(buffers());
}

std::pair<int64_t, int64_t> Optimizer::shard_range(int64_t flat_size, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    fail("Optimizer::shard_range: rank ", rank, " of ", ranks, " ranks");
  if (flat_size < 0) fail("Optimizer::shard_range: flat size ", flat_size);
  const int64_t lines = (flat_size + kFlatAlign - 1) / kFlatAlign;
  const auto at = [&](int64_t r) { return std::min(flat_size, lines * r / ranks * kFlatAlign); };
  return {at(rank), at(rank + 1)};
}

// The kept state is copied out of the full blocks before they go.
void Optimizer::shard(int64_t begin, int64_t end) {
  if (sharded_)
    fail(kind_, ": shard(", begin, ", ", end, "): already sharded to [", shard_begin_, ", ",
         shard_end_, ")");
  if (begin < 0 || begin > end || end > flat_size_ || begin % kFlatAlign || end % kFlatAlign)
    fail(kind_, ": shard(", begin, ", ", end, "): the range must lie within [0, ", flat_size_,
         "] and start and end on multiples of ", kFlatAlign);
  const int64_t n = end - begin;
  for (auto& [name, buffer] : buffers()) {
    if (!buffer->block) continue;  // not in use (e.g. SGD without momentum)
    std::shared_ptr<float[]> kept = flat_block(n);
    std::copy(buffer->block.get() + begin, buffer->block.get() + end, kept.get());
    buffer->tensors.clear();
    buffer->block = std::move(kept);
  }
  pieces_.clear();
  for (const Param& p : params_) {
    const int64_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel);
    if (lo < hi) pieces_.push_back({p.name, p.value, p.grad, lo, hi - lo});
  }
  shard_grads_ = flat_block(n);
  shard_begin_ = begin;
  shard_end_ = end;
  sharded_ = true;
}

Optimizer::GatheredState Optimizer::gather_state(Communicator& comm) {
  const int K = comm.size();
  std::vector<int64_t> counts(static_cast<size_t>(K));
  for (int r = 0; r < K; ++r) {
    const auto [lo, hi] = shard_range(flat_size_, r, K);
    counts[static_cast<size_t>(r)] = hi - lo;
  }
  const auto mine = shard_range(flat_size_, comm.rank(), K);
  if (sharded_ && mine != std::make_pair(shard_begin_, shard_end_))
    fail(kind_, ": gather_state: this rank holds [", shard_begin_, ", ", shard_end_,
         "), not its slice [", mine.first, ", ", mine.second, ") of ", K, " ranks");
  GatheredState g;
  const auto named = buffers();
  g.tensors.resize(named.size());
  g.blocks.resize(named.size());
  std::vector<std::pair<std::string, FlatState*>> full;
  std::vector<FlatState> views(named.size());
  for (size_t b = 0; b < named.size(); ++b) {
    FlatState* own = named[b].second;
    if (!own->block) continue;
    if (!sharded_) {  // every rank holds it all (rank 0's is what one process holds)
      full.push_back(named[b]);
      continue;
    }
    views[b] = flat_zeros();
    std::copy(own->block.get(), own->block.get() + (shard_end_ - shard_begin_),
              views[b].block.get() + shard_begin_);
    comm.allgather_slices(views[b].block.get(), counts);
    full.push_back({named[b].first, &views[b]});
  }
  g.entries = state_entries(full);
  // Keep what the entries point to: the tensors (their vectors' storage does not move).
  for (size_t b = 0; b < named.size(); ++b) {
    g.blocks[b] = views[b].block;
    g.tensors[b] = std::move(views[b].tensors);
  }
  return g;
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
