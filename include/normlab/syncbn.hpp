// SyncBatchNorm: BatchNorm whose training statistics are those of the global
// batch, spread over the ranks of a communicator (include/normlab/distributed.hpp),
// as torch.nn.SyncBatchNorm computes them on GPUs. PyTorch refuses CPU tensors
// there; normlab's runs on CPUs (docs/distributed.md, docs/derivations.md
// "SyncBatchNorm").
//
// Training forward: each rank's per-channel (count, mean, M2) over its N*L
// values (in double, two passes), gathered from every rank and merged exactly
// in rank order (Chan et al.'s pairwise update, never E[x^2] - E[x]^2); y is
// normalized with the global mean and biased variance, and running_var gets
// the global unbiased variance (M2 / (count - 1)), as one process with the
// whole batch would. Backward: the per-channel sums of dy and dy * (x - mean)
// are all-reduced and divided by the global count for dx; weight and bias
// gradients are this rank's own sums (the trainer's gradient all-reduce adds
// them up, as DDP does). Eval mode: BatchNorm1d's (running statistics; local
// batch statistics with track_running_stats=false, as PyTorch, which syncs in
// training mode only). With one rank it is BatchNorm1d.
//
// Inputs (N, C, *) (rank >= 2); statistics per channel over N and the
// trailing dims. Options, defaults and state_dict keys: BatchNorm1d's
// (weight, bias, running_mean, running_var, num_batches_tracked).
// Errors: num_features <= 0, eps < 0, non-finite momentum (construction);
// a rank < 2 input or the wrong channel count; a global batch of one value
// per channel in training, eps = 0 with batch statistics (forward; every rank
// sees the same global count, so every rank throws).
#pragma once
#include "normlab/distributed.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
class SyncBatchNorm : public Layer<T> {
 public:
  // comm: the ranks to synchronise over; nullptr means world() (taken at the first forward).
  explicit SyncBatchNorm(int64_t C, BatchNormOptions opt = {}, Communicator* comm = nullptr);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  void set_communicator(Communicator* comm) { comm_ = comm; }

  Tensor<T> weight, bias, dweight, dbias;
  Tensor<T> running_mean, running_var;
  int64_t num_batches_tracked = 0;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t C_;
  BatchNormOptions opt_;
  Communicator* comm_;
  const Tensor<T>* x_ = nullptr;
  bool used_batch_stats_ = true, synced_ = false;
  double count_ = 0;                   // values per channel the statistics were taken over
  std::vector<double> mean_, rstd_;    // (C) the statistics y was normalized with
  std::vector<double> moments_, all_;  // (3C) this rank's (count, mean, M2); (3C * ranks)
  std::vector<double> sums_;           // (2C) sum dy, sum dy * (x - mean)
  Tensor<T> y_, dx_, mean_t_, var_t_;
};

// ---- kernels (src/kernels/syncbn.cpp; plain double twins in namespace ref) ----
// Buffers (N, C, L) row-major. moments (3C): count, mean, M2 of channel c at
// 3c, 3c+1, 3c+2 (two passes in double).
template <typename T>
void syncbn_moments(double* moments, const T* x, int64_t N, int64_t C, int64_t L);
// Merges `ranks` blocks of 3C moments (rank order) into out (3C).
void syncbn_merge(double* out, const double* all, int ranks, int64_t C);
// y = (x - mean) * (gamma * rstd) + beta per channel (gamma/beta may be null).
template <typename T>
void syncbn_normalize(T* y, const T* x, const double* mean, const double* rstd, const T* gamma,
                      const T* beta, int64_t N, int64_t C, int64_t L);
// sums (2C): this rank's sum dy and sum dy * (x - mean) per channel.
template <typename T>
void syncbn_grad_sums(double* sums, const T* dy, const T* x, const double* mean, int64_t N,
                      int64_t C, int64_t L);
// dx from the global sums (2C) over `count` values:
// dx = gamma rstd (dy - sum_dy / count - (x - mean) rstd^2 sum_dy_xmu / count).
template <typename T>
void syncbn_dx(T* dx, const T* dy, const T* x, const double* mean, const double* rstd,
               const T* gamma, const double* sums, double count, int64_t N, int64_t C, int64_t L);

namespace ref {
template <typename T>
void syncbn_moments(double* moments, const T* x, int64_t N, int64_t C, int64_t L);
template <typename T>
void syncbn_dx(T* dx, const T* dy, const T* x, const double* mean, const double* rstd,
               const T* gamma, const double* sums, double count, int64_t N, int64_t C, int64_t L);
}  // namespace ref

}  // namespace normlab
