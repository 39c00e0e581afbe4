// BatchNorm variants that no framework ships, on BatchNorm1d's inputs ((N,C)
// and (N,C,L), statistics per channel over N*L values), with BatchNorm1d's
// options and state_dict names where they apply. Their PyTorch twins are in
// python/normlab_torch.py; semantics and sources: docs/model-spec.md;
// backwards: docs/derivations.md. Errors (bad options, shapes, one value per
// channel in training) are normlab::Error naming the layer and the numbers.
#pragma once
#include <optional>
#include <vector>

#include "normlab/layers.hpp"

namespace normlab {

struct MeanOnlyBatchNormOptions {
  std::optional<double> momentum = 0.1;  // nullopt: cumulative moving average
  bool affine = true;                    // the learned per-channel bias
  bool track_running_stats = true;
};

// Mean-only BatchNorm (Salimans & Kingma 2016, "Weight Normalization", section
// 2.2): training y = x - mean_B + bias, the batch mean per channel (no
// variance, no division, no weight: weight normalization supplies the scale);
// running_mean moves as BatchNorm1d's (momentum, or the cumulative average
// with momentum none); eval y = x - running_mean + bias (the batch mean
// without tracking). One value per channel is allowed (y = bias). State: bias
// (C) if affine; running_mean (C), num_batches_tracked if tracking (no
// running_var: there is no variance).
template <typename T>
class MeanOnlyBatchNorm1d : public Layer<T> {
 public:
  explicit MeanOnlyBatchNorm1d(int64_t C, MeanOnlyBatchNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> bias, dbias;
  Tensor<T> running_mean;
  int64_t num_batches_tracked = 0;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t C_;
  MeanOnlyBatchNormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  bool used_batch_stats_ = true;
  Tensor<T> y_, dx_, mean_;
};

struct BatchRenormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // nullopt: cumulative moving average
  bool affine = true;
  // The clipping bounds reached after the schedule: r in [1/rmax, rmax], d in [-dmax, dmax].
  double rmax = 3, dmax = 5;
  // The schedule, in training steps (num_batches_tracked before the step):
  // plain BatchNorm (rmax 1, dmax 0) for `warmup` steps, then rmax and dmax
  // grow linearly to their values over rmax_ramp and dmax_ramp steps (0: at
  // once). All 0 (the default): rmax and dmax from the first step. The paper's
  // (section 4): warmup 5000, rmax_ramp 35000 (rmax 3 at 40k), dmax_ramp 20000
  // (dmax 5 at 25k).
  int64_t warmup = 0, rmax_ramp = 0, dmax_ramp = 0;
};

// Batch Renormalization (Ioffe 2017, Algorithm 1). Training:
//   y = gamma * ((x - mean_B) / sigma_B * r + d) + beta, sigma_B = sqrt(var_B + eps),
//   r = clip(sigma_B / sigma, 1/rmax, rmax), d = clip((mean_B - running_mean) / sigma, -dmax,
//   dmax), sigma = sqrt(running_var + eps),
// r and d constants in backward (stop_gradient); then running_mean and
// running_var move exactly as BatchNorm1d's (unbiased batch variance). The
// paper keeps a moving sigma instead of running_var: normlab keeps BatchNorm's
// state, so rmax = 1, dmax = 0 is BatchNorm1d exactly. Eval: BatchNorm1d's.
// rmax and dmax at a step follow the schedule (BatchRenormOptions). Always
// tracks running statistics (it needs them). State: BatchNorm1d's.
template <typename T>
class BatchRenorm1d : public Layer<T> {
 public:
  explicit BatchRenorm1d(int64_t C, BatchRenormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  // rmax and dmax of the training step after `steps` completed ones.
  double rmax_at(int64_t steps) const;
  double dmax_at(int64_t steps) const;
  // r and d of the last training forward (C each).
  const Tensor<T>& last_r() const { return r_; }
  const Tensor<T>& last_d() const { return d_; }
  // For gradient checks: training forwards use these r and d (C each)
  // instead of computing them; empty tensors switch it off.
  void freeze_correction(Tensor<T> r, Tensor<T> d);

  Tensor<T> weight, bias, dweight, dbias;
  Tensor<T> running_mean, running_var;
  int64_t num_batches_tracked = 0;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t C_;
  BatchRenormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  bool exact_ = false;
  Tensor<T> y_, dx_, mean_, rstd_, var_, r_, d_;
  Tensor<T> frozen_r_, frozen_d_, g2_, b2_;
};

// Ghost BatchNorm (Hoffer, Hubara & Soudry 2017, "Train longer, generalize
// better", section 4, Algorithm 1): in training the batch is split into
// virtual batches of virtual_batch_size consecutive samples (the last one
// holds the remainder, as torch.split), each normalized as BatchNorm1d with its
// own statistics; the running statistics move once per virtual batch, in
// order (the paper's update, (1-m)^k weights), and num_batches_tracked counts
// virtual batches. A virtual batch of one value per channel is refused, as
// BatchNorm1d refuses such a batch. Eval: BatchNorm1d's with the running
// statistics (without tracking: the virtual-batch normalization). So with
// virtual_batch_size >= N it is BatchNorm1d. State: BatchNorm1d's.
template <typename T>
class GhostBatchNorm1d : public Layer<T> {
 public:
  GhostBatchNorm1d(int64_t C, int64_t virtual_batch_size, BatchNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> weight, bias, dweight, dbias;
  Tensor<T> running_mean, running_var;
  int64_t num_batches_tracked = 0;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t C_, K_;
  BatchNormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  bool used_batch_stats_ = true;
  std::vector<char> exact_;  // per virtual batch: its statistics overflowed, ref:: was used
  Tensor<T> y_, dx_, mean_, rstd_, var_;  // (G, C) per virtual batch
};

}  // namespace normlab
