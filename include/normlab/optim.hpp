// Optimizers with PyTorch 1.13's defaults and update rules (torch.optim's
// single-tensor path), over the trainable entries of a model's state():
//
//   Rng rng(0); Sequential<float> model; ...
//   auto opt = make_optimizer("adam", {.lr = 1e-3}, model.state());
//   opt->zero_grad(); model.forward(x); ...; model.backward(dy); opt->step();
//
// At construction the optimizer moves every parameter into one flat block and
// every gradient into another (Tensor::bind: the model's tensors then read and
// write there), each parameter starting on a 64-byte line, zeros between; its
// own state (Adam's moments, SGD's momentum) is laid out the same way. So
// zero_grad(), the trainer's finiteness check and step() are each one
// parallel region over flat arrays: every thread takes the same share of
// every large parameter (src/optim/elementwise.hpp says why), and every
// element is computed alone, so the result does not depend on the thread
// count. step() allocates nothing.
//
// The bound tensors share the blocks, so either of model and optimizer may be
// destroyed first. The parameters keep their element counts from then on
// (Tensor: resizing a bound tensor throws). Building another optimizer over
// the same model moves the parameters into its blocks; step() of the first
// one then throws instead of updating tensors that no longer see its blocks.
//
// Sharded (ZeRO stage 1, Rajbhandari et al. 2020, sec. 5.1; used by `normlab
// train` under mpirun, docs/distributed.md): after shard(begin, end) the
// optimizer updates only the flat positions [begin, end), reads their
// gradients from shard_grads() (which the caller fills with the ranks' summed
// gradients, e.g. by Communicator::reduce_scatter_sum) and keeps its own state
// for those positions only (1 / K of the memory); the caller all-gathers the
// updated parameters. gather_state() collects the whole state for a checkpoint.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "normlab/distributed.hpp"
#include "normlab/layer.hpp"

namespace normlab {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // A copy would share the blocks (and step() counts the tensors bound to them).
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0)"
  virtual std::string name() const = 0;
  // Applies one update from the current gradients and counts the step.
  virtual void step() = 0;
  // Fills every parameter gradient with zeros (gradients accumulate).
  void zero_grad();

  // The optimizer's own state, for checkpoints: "step" (int64 count: steps
  // taken), then per parameter, in parameter order, "<buffer>.<param name>"
  // tensors such as "exp_avg.0.weight". Writing saved values into these
  // entries (same shapes) restores the optimizer exactly. Throws once sharded
  // (the state is then spread over the ranks: gather_state()).
  std::vector<StateEntry<float>> state();

  int64_t steps() const { return steps_; }
  double lr() const { return lr_; }
  void set_lr(double lr);  // for schedules; must be > 0

  struct Param {
    std::string name;
    Tensor<float>* value;  // the model's tensors (valid while the model lives),
    Tensor<float>* grad;   // bound at values()/grads() + offset
    int64_t offset;        // a multiple of kFlatAlign
    int64_t numel;
  };
  const std::vector<Param>& params() const { return params_; }

  // Where each parameter starts in the flat blocks: a multiple of 16 floats
  // (64 bytes, a cache line; the blocks are 64-byte aligned).
  static constexpr int64_t kFlatAlign = 16;
  // Every parameter's value / gradient, parameter i's element j at
  // params()[i].offset + j; the elements between parameters are zeros that
  // nothing reads or writes (with eps = 0, Adam would make 0/0 of them).
  std::span<float> values() { return {values_.get(), static_cast<size_t>(flat_size_)}; }
  std::span<float> grads() { return {grads_.get(), static_cast<size_t>(flat_size_)}; }
  // Moves the flat value and gradient blocks into the caller's storage (each
  // at least values().size() floats, 64-byte aligned, kept alive by its
  // shared_ptr's deleter; a null one keeps that block where it is), contents
  // kept, every parameter rebound. For a data-parallel run on one node: the
  // blocks then live in the shared-memory window the other ranks read
  // directly (Communicator::shared_block, docs/distributed.md). Call it
  // before any forward pass (layers may cache their parameters' addresses).
  // Throws an Error if a block is misaligned.
  void adopt_flat_blocks(std::shared_ptr<float[]> values, std::shared_ptr<float[]> grads);
  // (parameter index, index within it) of flat position `at`; a position in
  // the padding maps to the parameter before it, with an index >= its numel.
  std::pair<size_t, int64_t> locate(int64_t at) const;

  // ---- sharding (ZeRO stage 1; see the top of this file)
  // Rank `rank` of `ranks`' slice [begin, end) of a flat block of flat_size
  // floats: the block's 16-float lines split as evenly as whole lines allow,
  // in rank order (uneven slices, empty ones when there are more ranks than
  // lines). Throws unless 0 <= rank < ranks.
  static std::pair<int64_t, int64_t> shard_range(int64_t flat_size, int rank, int ranks);
  // From now on step() updates only the flat positions [begin, end) (multiples
  // of kFlatAlign, 0 <= begin <= end <= values().size()) from the gradients in
  // shard_grads(), and the state of the other positions is freed: take it (or
  // load it: state()) before. Other parameters are left alone. Once only; throws
  // (naming the numbers) for a bad range or a second call.
  void shard(int64_t begin, int64_t end);
  bool sharded() const { return sharded_; }
  int64_t shard_begin() const { return shard_begin_; }
  int64_t shard_end() const { return shard_end_; }
  // The gradients step() reads while sharded: end - begin values, flat position
  // begin + j at j (its padding between parameters is never read); empty before shard().
  std::span<float> shard_grads() {
    return {shard_grads_.get(), static_cast<size_t>(sharded_ ? shard_end_ - shard_begin_ : 0)};
  }
  // The parts of the parameters inside [begin, end) (flat offset and count;
  // all parameters when not sharded): what step() and a gradient scan visit.
  const std::vector<Param>& shard_params() const { return pieces_; }

  // The whole state as state() would give it unsharded, collected from the
  // ranks of `comm` (a collective: every rank calls it, each sharded with
  // shard_range(values().size(), rank, size) of its communicator, or all
  // unsharded): every rank gets it, the entries valid while the result lives.
  // For checkpoints, which are then the files a one-process run writes.
  struct GatheredState {
    // Moved, never copied: the entries point into the tensors' storage.
    GatheredState() = default;
    GatheredState(GatheredState&&) = default;
    GatheredState& operator=(GatheredState&&) = default;
    GatheredState(const GatheredState&) = delete;
    GatheredState& operator=(const GatheredState&) = delete;
    std::vector<std::vector<Tensor<float>>> tensors;  // per buffer, per parameter
    std::vector<std::shared_ptr<float[]>> blocks;
    std::vector<StateEntry<float>> entries;
  };
  GatheredState gather_state(Communicator& comm);

 protected:
  // Keeps the entries with a grad (trainable parameters) and binds their
  // values and gradients into the flat blocks; throws if there are none, a
  // gradient's shape differs from its parameter's, or two entries share a tensor.
  Optimizer(const std::string& kind, const std::vector<StateEntry<float>>& entries, double lr);

  // One state buffer laid out like the parameters: the block (zeros) and a
  // tensor shaped like each parameter bound into it, for state(). Sharded:
  // the block holds flat positions [shard_begin(), shard_end()) only (at
  // data()[j - shard_begin()]) and there are no tensors.
  struct FlatState {
    std::shared_ptr<float[]> block;
    std::vector<Tensor<float>> tensors;
    float* data() { return block.get(); }
  };
  FlatState flat_zeros() const;
  // The optimizer's state buffers in state() order, by name ("exp_avg", ...).
  virtual std::vector<std::pair<std::string, FlatState*>> buffers() = 0;
  // The "step" entry followed by "<prefix>.<param name>" for each buffer.
  std::vector<StateEntry<float>> state_entries(
      const std::vector<std::pair<std::string, FlatState*>>& buffers);
  // kernel(begin, end) over the flat positions step() updates (shard_params()),
  // in parallel like for_each_range.
  template <typename Kernel>
  void for_each_shard_range(const Kernel& kernel) const;
  // The gradients step() reads, at [j - shard_begin()] for flat position j.
  const float* step_grads() const { return sharded_ ? shard_grads_.get() : grads_.get(); }
  // Throws unless every parameter still reads and writes this optimizer's
  // blocks (not so once the model is gone or another optimizer took it over).
  void check_bound() const;
  // kernel(begin, end) over the flat positions of all parameters, padding
  // excluded, in parallel when there are enough (for_each_param_range).
  template <typename Kernel>
  void for_each_range(const Kernel& kernel) const;

  std::string kind_;  // "Adam", "AdamW", "SGD": names errors
  std::vector<Param> params_;
  int64_t flat_size_ = 0;  // a multiple of kFlatAlign
  std::shared_ptr<float[]> values_, grads_;
  int64_t steps_ = 0;
  double lr_;
  bool sharded_ = false;
  int64_t shard_begin_ = 0, shard_end_ = 0;  // [0, flat_size_) until shard()
  std::vector<Param> pieces_;                // shard_params()
  std::shared_ptr<float[]> shard_grads_;
};

// torch.optim.Adam / AdamW defaults. For Adam, weight_decay is L2 added to
// the gradient; for AdamW it is decoupled: p *= 1 - lr * weight_decay.
struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;  // added after sqrt of the bias-corrected second moment
  double weight_decay = 0.0;
  bool amsgrad = false;
};
inline constexpr double kAdamWDefaultWeightDecay = 0.01;

class Adam : public Optimizer {
 public:
  Adam(const std::vector<StateEntry<float>>& entries, AdamOptions opt = {});
  std::string name() const override;
  void step() override;
  const AdamOptions& options() const { return opt_; }

 protected:
  std::vector<std::pair<std::string, FlatState*>> buffers() override;
  Adam(const std::string& kind, const std::vector<StateEntry<float>>& entries, AdamOptions opt,
       bool decoupled);

 private:
  AdamOptions opt_;
  bool decoupled_;
  FlatState exp_avg_, exp_avg_sq_, max_exp_avg_sq_;  // the last only with amsgrad
};

class AdamW : public Adam {
 public:
  AdamW(const std::vector<StateEntry<float>>& entries,
        AdamOptions opt = {.weight_decay = kAdamWDefaultWeightDecay});
};

// torch.optim.SGD: lr has no default (as in PyTorch); nesterov needs
// momentum > 0 and dampening 0. The first step with momentum sets the
// buffer to the (decayed) gradient, later ones buf = momentum*buf + (1-dampening)*g.
struct SgdOptions {
  double lr = 0.0;  // required: must be > 0
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class Sgd : public Optimizer {
 public:
  Sgd(const std::vector<StateEntry<float>>& entries, SgdOptions opt);
  std::string name() const override;
  void step() override;
  const SgdOptions& options() const { return opt_; }

 protected:
  std::vector<std::pair<std::string, FlatState*>> buffers() override;

 private:
  SgdOptions opt_;
  FlatState momentum_buffer_;  // only if momentum != 0
};

// Options as a user gives them (CLI flags): unset ones take the chosen
// optimizer's default. An option that the optimizer does not have (e.g.
// momentum for adam) is an Error, not silently ignored.
struct OptimizerOptions {
  std::optional<double> lr = {};  // adam/adamw 1e-3; sgd: required
  std::optional<double> beta1 = {}, beta2 = {}, eps = {};
  std::optional<double> weight_decay = {};  // adam 0, adamw 0.01, sgd 0
  std::optional<bool> amsgrad = {};
  std::optional<double> momentum = {}, dampening = {};
  std::optional<bool> nesterov = {};
};

// name: "adam", "adamw" or "sgd". Throws an Error naming the optimizer, the
// option and its value for anything invalid.
std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const OptimizerOptions& options,
                                          const std::vector<StateEntry<float>>& entries);

}  // namespace normlab
