// The training core: one optimizer step on a batch, and a batched evaluation,
// over plain float buffers (x (N, D) row-major, int32 labels), for a
// classifier whose output is logits (N, K).
//
//   Trainer trainer(model, *optimizer);
//   StepResult r = trainer.train_step(x, labels, N, D);   // throws NonFiniteError
//   EvalResult e = trainer.evaluate(x_test, y_test, N_test, D, 1000);
//
// No files, no printing: the loop over epochs, metrics and checkpoints live above.
#pragma once
#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/layer.hpp"
#include "normlab/optim.hpp"

namespace normlab {

// A training step met a NaN or infinity (in the input batch, the loss or a
// gradient) before the optimizer touched the weights. `step` is the 1-based
// number of the step that failed (the optimizer's step count + 1), so the
// weights are those after step - 1 steps. Buffers updated by the forward pass
// (BatchNorm's running statistics) may already hold the bad batch.
class NonFiniteError : public Error {
 public:
  NonFiniteError(int64_t step, const std::string& what) : Error(what), step(step) {}
  int64_t step;
};

struct StepResult {
  int64_t step = 0;     // 1-based number of this step (the optimizer's count after it)
  double loss = 0.0;    // mean cross-entropy over the batch, before the update
  int64_t correct = 0;  // rows whose argmax equals the label, before the update
};

struct EvalResult {
  double loss = 0.0;  // mean cross-entropy over all rows
  int64_t correct = 0;
  int64_t count = 0;
  double accuracy() const { return count ? static_cast<double>(correct) / count : 0.0; }
};

class Trainer {
 public:
  // Both must outlive the trainer. The model's input gradient is switched off
  // (nothing below the first layer needs dx), and a Sequential model's ReLUs are
  // fused into the layers before them where those can (Sequential::fuse_relus).
  Trainer(Layer<float>& model, Optimizer& optimizer);

  // zero_grad, forward in training mode, cross-entropy, backward, finiteness
  // checks, optimizer step. x is (N, D) (copied into a reused buffer), labels (N).
  StepResult train_step(const float* x, const int32_t* labels, int64_t N, int64_t D);
  // The same on a batch already in a tensor (N, ...), which must stay unchanged during the call.
  // Data parallel, global_rows > 0 says how many rows the global batch has
  // (the sum of the ranks' N): with the sharded optimizer the loss's
  // all-reduce then joins the gradient check's after backward (one collective
  // a step fewer; a wrong count is an Error); 0: the rows are all-reduced.
  StepResult train_step(const Tensor<float>& x, const int32_t* labels, int64_t global_rows = 0);

  // Loss and accuracy over N rows in batches of batch_size, in eval mode
  // (BatchNorm uses its running statistics); the model's mode is restored after.
  EvalResult evaluate(const float* x, const int32_t* labels, int64_t N, int64_t D,
                      int64_t batch_size);

  // Data parallelism (docs/distributed.md): each rank passes its shard of the
  // global batch to train_step; the step then scales the loss gradient by
  // shard / global rows (so that the sum over ranks is the gradient of the
  // global batch's mean loss, for uneven shards too), all-reduces the
  // parameter gradients (the flat block, in float) before the finiteness check
  // and the optimizer, and returns the global batch's loss and correct count.
  // The finiteness checks agree across ranks (every rank throws the same
  // NonFiniteError step), so --on-nonfinite skip stays in step. Every rank
  // must call train_step the same number of times. nullptr or one rank: as before.
  void set_communicator(Communicator* comm) { comm_ = comm && comm->size() > 1 ? comm : nullptr; }
  // Overlap of that all-reduce with the backward pass (off by default; a
  // Sequential model): the flat block is cut into buckets of at least
  // `bucket_bytes` behind layer boundaries, and each bucket's non-blocking
  // all-reduce starts as soon as backward has finished the layers it holds
  // (in reverse layer order, progressed between layers, all waited for before
  // the finiteness check). 0 (the default): one blocking all-reduce after
  // backward, which measured faster on one machine (docs/distributed.md).
  void set_allreduce_bucket_bytes(int64_t bytes) { bucket_bytes_ = bytes; }
  // The sharded optimizer (ZeRO stage 1, docs/distributed.md): when the
  // optimizer was sharded (Optimizer::shard) to its rank's
  // Optimizer::shard_range, the step reduce-scatters the gradients into the
  // optimizer's shard_grads() instead of all-reducing them, checks its slice
  // for NaN/inf (the ranks' findings agreed in one all-reduce of 2 K doubles),
  // steps the slice and all-gathers the weights: every rank ends with the
  // weights of the unsharded step. The overlapped all-reduce is then not used.
  // Nothing to set here: it follows the optimizer.

  Layer<float>& model() { return model_; }
  Optimizer& optimizer() { return optimizer_; }

 private:
  Layer<float>& model_;
  Optimizer& optimizer_;
  // Position of the first NaN/inf in the optimizer's flat gradient block, or -1.
  int64_t first_non_finite_gradient();

  Tensor<float> batch_;                // (N, D): the copied input batch
  Tensor<float> dlogits_;              // (N, K)
  std::atomic<int64_t> first_bad_{0};  // the parallel scan's smallest hit so far
  Communicator* comm_ = nullptr;       // set: data-parallel steps
  // The overlapped all-reduce (set_allreduce_bucket_bytes): the flat-block
  // offset where each Sequential child's gradients start (the block's end for
  // a child without parameters, so that "children >= i done" is the suffix
  // from layer_start_[i]); the part of the block not yet started.
  void on_layer_backward_done(size_t child);
  int64_t bucket_bytes_ = 0;
  // Sharded optimizer: every rank's slice length (Optimizer::shard_range), and
  // the gradient check's (position + 1, value) per rank.
  // check_sums_: the loss's kLossSums sums (merged), then (position + 1, value) per rank.
  static constexpr size_t kLossSums = 4;
  std::vector<int64_t> shard_counts_;
  std::vector<double> check_sums_;
  std::vector<int64_t> layer_start_;
  int64_t unsent_end_ = 0;
  bool overlap_ = false;
};

// Loss and accuracy of `model` over N rows in batches of batch_size, in eval
// mode (the model's mode is restored after); `batch` is a reusable buffer.
EvalResult evaluate(Layer<float>& model, Tensor<float>& batch, const float* x,
                    const int32_t* labels, int64_t N, int64_t D, int64_t batch_size);

// First index in [0, n) where data holds a NaN or infinity, or -1.
int64_t first_non_finite(const float* data, int64_t n);

}  // namespace normlab
