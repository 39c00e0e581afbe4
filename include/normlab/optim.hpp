// Optimizers with PyTorch 1.13's defaults and update rules (torch.optim's
// single-tensor path), over the trainable entries of a model's state():
//
//   Rng rng(0); Sequential<float> model; ...
//   auto opt = make_optimizer("adam", {.lr = 1e-3}, model.state());
//   opt->zero_grad(); model.forward(x); ...; model.backward(dy); opt->step();
//
// The optimizer keeps pointers to the parameter and gradient tensors: the
// model must outlive it and must not resize them. All optimizer state is
// allocated at construction; step() allocates nothing and makes one fused
// pass over each parameter tensor (parallel over elements for large ones;
// the result does not depend on the thread count).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "normlab/layer.hpp"

namespace normlab {

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0)"
  virtual std::string name() const = 0;
  // Applies one update from the current gradients and counts the step.
  virtual void step() = 0;
  // Fills every parameter gradient with zeros (gradients accumulate).
  void zero_grad();

  // The optimizer's own state, for checkpoints: "step" (int64 count: steps
  // taken), then per parameter, in parameter order, "<buffer>.<param name>"
  // tensors such as "exp_avg.0.weight". Writing saved values into these
  // entries (same shapes) restores the optimizer exactly.
  virtual std::vector<StateEntry<float>> state() = 0;

  int64_t steps() const { return steps_; }
  double lr() const { return lr_; }
  void set_lr(double lr);  // for schedules; must be > 0

  struct Param {
    std::string name;
    Tensor<float>* value;
    Tensor<float>* grad;
  };
  const std::vector<Param>& params() const { return params_; }

 protected:
  // Keeps the entries with a grad (trainable parameters); throws if there
  // are none or a gradient's shape differs from its parameter's.
  Optimizer(const std::string& kind, const std::vector<StateEntry<float>>& entries, double lr);
  // Tensors shaped like each parameter, zero-filled, for one state buffer.
  std::vector<Tensor<float>> zeros_like_params() const;
  // The "step" entry followed by "<prefix>.<param name>" for each buffer set.
  std::vector<StateEntry<float>> state_entries(
      const std::vector<std::pair<std::string, std::vector<Tensor<float>>*>>& buffers);

  std::string kind_;  // "Adam", "AdamW", "SGD": names errors
  std::vector<Param> params_;
  int64_t steps_ = 0;
  double lr_;
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
  std::vector<StateEntry<float>> state() override;
  const AdamOptions& options() const { return opt_; }

 protected:
  Adam(const std::string& kind, const std::vector<StateEntry<float>>& entries, AdamOptions opt,
       bool decoupled);

 private:
  AdamOptions opt_;
  bool decoupled_;
  std::vector<Tensor<float>> exp_avg_, exp_avg_sq_, max_exp_avg_sq_;  // each like params_
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
  std::vector<StateEntry<float>> state() override;
  const SgdOptions& options() const { return opt_; }

 private:
  SgdOptions opt_;
  std::vector<Tensor<float>> momentum_buffer_;  // like params_ if momentum != 0, else empty
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
