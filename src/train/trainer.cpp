#include "normlab/train.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "normlab/loss.hpp"
#include "normlab/profile.hpp"
#include "normlab/sequential.hpp"
#include "optim/elementwise.hpp"

namespace normlab {

namespace {
// (N, D) without building a temporary Shape when it already has it: a train step allocates nothing.
void ensure_rows(Tensor<float>& t, int64_t N, int64_t D) {
  if (t.rank() != 2 || t.dim(0) != N || t.dim(1) != D) t.resize({N, D});
}
}  // namespace

// NaN and infinity are the floats whose exponent bits are all ones; testing
// the bits (not std::isfinite) keeps the scan vectorised, and a block is only
// searched element by element when it holds one.
int64_t first_non_finite(const float* data, int64_t n) {
  constexpr int64_t kBlock = 4096;
  constexpr uint32_t kExponent = 0x7f800000u;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    uint32_t bad = 0;
    for (int64_t i = start; i < end; ++i)
      bad |= (std::bit_cast<uint32_t>(data[i]) & kExponent) == kExponent;
    if (!bad) continue;
    for (int64_t i = start; i < end; ++i)
      if (!std::isfinite(data[i])) return i;
  }
  return -1;
}

Trainer::Trainer(Layer<float>& model, Optimizer& optimizer) : model_(model), optimizer_(optimizer) {
  model_.set_input_grad(false);
  if (auto* seq = dynamic_cast<Sequential<float>*>(&model_)) seq->fuse_relus();
}

// One parallel scan of the flat gradient block (the parameters' ranges, not
// the padding between them); the smallest of the threads' first hits is kept,
// so the answer is the first NaN/inf in parameter order for any thread count.
// Sharded: the scan covers this rank's slice of the summed gradients
// (shard_grads(), at flat position - shard_begin()).
int64_t Trainer::first_non_finite_gradient() {
  const bool sharded = optimizer_.sharded();
  const int64_t at0 = sharded ? optimizer_.shard_begin() : 0;
  const float* g = sharded ? optimizer_.shard_grads().data() : optimizer_.grads().data();
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  first_bad_.store(kNone, std::memory_order_relaxed);
  for_each_param_range(optimizer_.shard_params(), [&](int64_t begin, int64_t end) {
    const int64_t i = first_non_finite(g + (begin - at0), end - begin);
    if (i < 0) return;
    int64_t seen = first_bad_.load(std::memory_order_relaxed);
    while (begin + i < seen && !first_bad_.compare_exchange_weak(seen, begin + i)) {
    }
  });
  const int64_t at = first_bad_.load(std::memory_order_relaxed);
  return at == kNone ? -1 : at;
}

StepResult Trainer::train_step(const float* x, const int32_t* labels, int64_t N, int64_t D) {
  if (N <= 0 || D <= 0)
    fail("train_step: batch must be (N, D) with N, D > 0, got (", N, ", ", D, ")");
  ensure_rows(batch_, N, D);
  std::memcpy(batch_.data(), x, static_cast<size_t>(N * D) * sizeof(float));
  return train_step(batch_, labels);
}

static void check_logits_shape(const Layer<float>& model, const Tensor<float>& logits, int64_t N,
                               const char* where) {
  if (logits.rank() != 2 || logits.dim(0) != N)
    fail(where, ": the model ", model.name(), " returned shape ", shape_str(logits.shape()),
         " for ", N, " rows; expected logits (", N, ", classes)");
}

EvalResult evaluate(Layer<float>& model, Tensor<float>& batch, const float* x,
                    const int32_t* labels, int64_t N, int64_t D, int64_t batchsize) {
  if (N <= 0 || D <= 0) fail("evaluate: data must be (N, D) with N, D > 0, got (", N, ", ", D, ")");
  if (batchsize <= 0) fail("evaluate: batch size must be positive, got ", batchsize);
  const bool was_training = model.training();
  model.set_training(false);
  EvalResult r;
  double loss_sum = 0.0;
  try {
    for (int64_t start = 0; start < N; start += batchsize) {
      const int64_t b = std::min(batchsize, N - start);
      ensure_rows(batch, b, D);
      std::memcpy(batch.data(), x + start * D, static_cast<size_t>(b * D) * sizeof(float));
      const Tensor<float>& logits = model.forward(batch);
      check_logits_shape(model, logits, b, "evaluate");
      const std::span<const int32_t> y(labels + start, static_cast<size_t>(b));
      loss_sum += cross_entropy(logits, y) * static_cast<double>(b);
      r.correct += count_correct(logits.data(), labels + start, b, logits.dim(1));
    }
  } catch (...) {
    model.set_training(was_training);
    throw;
  }
  model.set_training(was_training);
  r.count = N;
  r.loss = loss_sum / static_cast<double>(N);
  return r;
}

StepResult Trainer::train_step(const Tensor<float>& x, const int32_t* labels, int64_t global_rows) {
  if (x.rank() < 1 || x.dim(0) <= 0)
    fail("train_step: empty batch of shape ", shape_str(x.shape()));
  const int64_t step = optimizer_.steps() + 1;
  const int64_t N = x.dim(0);
  auto non_finite = [step](const std::string& what) {
    std::ostringstream os;
    os << "training step " << step << ": " << what << "; the weights were not updated";
    throw NonFiniteError(step, os.str());
  };

  // The input batch may not hold a NaN/inf. In one process that is checked
  // before anything runs. Data parallel, this rank's finding travels with the
  // loss's all-reduce below (one collective a step fewer, one less point
  // where a rank waits for the other): the forward pass runs first, which
  // NaN only poisons (SyncBatchNorm's collectives stay in step on every rank),
  // and every rank then throws for the same step before any update.
  int64_t bad_input = -1;
  {
    const profile::Scope timer("input check");
    bad_input = first_non_finite(x.data(), x.numel());
  }
  auto input_error = [&] {
    const int64_t D = x.numel() / N;
    std::ostringstream os;
    os << "the input batch holds " << x[bad_input] << " at row " << bad_input / D << ", column "
       << bad_input % D;
    if (comm_) os << " of rank " << comm_->rank() << "'s shard";
    non_finite(os.str());
  };
  if (bad_input >= 0 && !comm_) input_error();

  if (!model_.training()) model_.set_training(true);
  {
    const profile::Scope timer("zero_grad");
    optimizer_.zero_grad();
  }
  const Tensor<float>* logits = nullptr;
  {
    const profile::Scope timer("model forward");
    logits = &model_.forward(x);
  }
  check_logits_shape(model_, *logits, N, "train_step");
  StepResult r;
  r.step = step;
  {
    const profile::Scope timer("loss");
    r.loss =
        cross_entropy(*logits, std::span<const int32_t>(labels, static_cast<size_t>(N)), &dlogits_);
    r.correct = count_correct(logits->data(), labels, N, logits->dim(1));
  }
  const double local_loss = r.loss;
  // Data parallel, the global batch's sums (rows, ranks with a NaN/inf input,
  // loss sum, correct) are all-reduced after the forward pass; with the
  // sharded optimizer and the global row count given, they travel instead
  // with the gradient check's all-reduce after backward (one collective and
  // one point where a rank waits for the other a step fewer; a NaN input or
  // loss then runs through backward, which it only poisons, and every rank
  // still refuses the step before any update).
  const bool merged = comm_ && optimizer_.sharded() && global_rows > 0;
  std::string where_non_finite;  // the layer whose output first went non-finite (this rank)
  if (!std::isfinite(local_loss))
    if (const auto* seq = dynamic_cast<const Sequential<float>*>(&model_))
      where_non_finite = seq->locate_non_finite_output();
  auto scale_dlogits = [&](double rows) {
    // This rank's mean becomes its share of the global mean: dlogits too.
    const float s = static_cast<float>(static_cast<double>(N) / rows);
    float* g = dlogits_.data();
    for (int64_t j = 0; j < dlogits_.numel(); ++j) g[j] *= s;
  };
  auto agree_on_loss = [&](const double* sums) {
    if (bad_input >= 0) input_error();
    if (sums[1] > 0) non_finite("the input batch of another rank holds a NaN or infinity");
    r.loss = sums[2] / sums[0];
    r.correct = static_cast<int64_t>(std::llround(sums[3]));
  };
  auto check_loss = [&] {
    if (std::isfinite(r.loss)) return;
    std::ostringstream os;
    os << "the loss is " << r.loss;
    if (comm_ && std::isfinite(local_loss)) os << " (from another rank's shard)";
    // Name the layer whose output first went non-finite (the input was checked above).
    if (!where_non_finite.empty()) os << "; " << where_non_finite;
    non_finite(os.str());
  };
  auto loss_sums = [&](double* sums) {
    sums[0] = static_cast<double>(N);
    sums[1] = bad_input >= 0 ? 1.0 : 0.0;
    sums[2] = r.loss * static_cast<double>(N);
    sums[3] = static_cast<double>(r.correct);
  };
  if (merged) {
    scale_dlogits(static_cast<double>(global_rows));
  } else {
    if (comm_) {
      double sums[4];
      loss_sums(sums);
      {
        const profile::Scope timer("loss allreduce");
        comm_->allreduce_sum(sums, 4);
      }
      agree_on_loss(sums);
      scale_dlogits(sums[0]);
    }
    check_loss();
  }

  // Data parallel: the sum of the ranks' shares is the global batch's gradient.
  // The flat gradient block (parameters and the zeros between them) is summed
  // in buckets started during backward (on_layer_backward_done), or in one
  // all-reduce after it.
  auto* seq = dynamic_cast<Sequential<float>*>(&model_);
  const bool sharded = comm_ && optimizer_.sharded();
  if (sharded && shard_counts_.empty()) {
    // Every rank's slice is shard_range's: check that this rank's optimizer holds its own.
    const int64_t flat = static_cast<int64_t>(optimizer_.grads().size());
    const auto mine = Optimizer::shard_range(flat, comm_->rank(), comm_->size());
    if (mine != std::make_pair(optimizer_.shard_begin(), optimizer_.shard_end()))
      fail("train_step: the optimizer of rank ", comm_->rank(), " of ", comm_->size(),
           " is sharded to [", optimizer_.shard_begin(), ", ", optimizer_.shard_end(),
           "), not its slice [", mine.first, ", ", mine.second, ") (Optimizer::shard_range)");
    for (int r = 0; r < comm_->size(); ++r) {
      const auto [lo, hi] = Optimizer::shard_range(flat, r, comm_->size());
      shard_counts_.push_back(hi - lo);
    }
    check_sums_.assign(kLossSums + 2 * static_cast<size_t>(comm_->size()), 0.0);
  }
  overlap_ = comm_ && bucket_bytes_ > 0 && seq && !sharded;
  if (overlap_) {
    const std::span<float> grads = optimizer_.grads();
    if (layer_start_.size() != seq->size() + 1) {
      // Where each child's gradients start in the flat block; then the suffix
      // minimum, so layer_start_[i] is where the gradients of children >= i start.
      const float* base = grads.data();
      const int64_t end = static_cast<int64_t>(grads.size());
      layer_start_.assign(seq->size() + 1, end);
      for (size_t i = 0; i < seq->size(); ++i)
        for (const auto& e : (*seq)[i].state())
          if (e.grad && e.grad->numel() > 0) {
            const int64_t at = e.grad->data() - base;
            if (at >= 0 && at < end) layer_start_[i] = std::min(layer_start_[i], at);
          }
      for (size_t i = seq->size(); i-- > 0;)
        layer_start_[i] = std::min(layer_start_[i], layer_start_[i + 1]);
    }
    unsent_end_ = static_cast<int64_t>(grads.size());
    seq->set_backward_hook([this](size_t child) { on_layer_backward_done(child); });
  }
  try {
    const profile::Scope timer("model backward");
    model_.backward(dlogits_);
  } catch (...) {
    if (seq) seq->set_backward_hook({});
    throw;
  }
  if (seq) seq->set_backward_hook({});
  if (sharded) {
    // ZeRO stage 1: each rank receives the sum of its slice only.
    const profile::Scope timer("gradient reduce-scatter");
    comm_->reduce_scatter_sum(optimizer_.grads().data(), optimizer_.shard_grads().data(),
                              shard_counts_);
  } else if (comm_) {
    const profile::Scope timer("gradient allreduce");
    const std::span<float> grads = optimizer_.grads();
    if (!overlap_) unsent_end_ = static_cast<int64_t>(grads.size());
    // The rest (all of it without overlap) in MPI's blocking all-reduce, which
    // is faster than its non-blocking one; then the started buckets end.
    if (unsent_end_ > 0) comm_->allreduce_sum(grads.data(), unsent_end_);
    comm_->wait_all();
    overlap_ = false;
  }
  {
    const profile::Scope timer("gradient check");
    int64_t at = first_non_finite_gradient();
    float value = at >= 0 ? optimizer_.grads()[at] : 0.0f;
    if (sharded) {
      // The slices' findings in one all-reduce of (position + 1, value) a rank
      // (zeros elsewhere): the first in rank order is the first in the block.
      // Merged: the loss's sums (kLossSums) go with them.
      const profile::Scope wait(merged ? "loss and gradient check allreduce"
                                       : "gradient check allreduce");
      std::fill(check_sums_.begin(), check_sums_.end(), 0.0);
      if (merged) loss_sums(check_sums_.data());
      const size_t me = kLossSums + 2 * static_cast<size_t>(comm_->rank());
      if (at >= 0) {
        check_sums_[me] = static_cast<double>(at + 1);
        check_sums_[me + 1] = optimizer_.shard_grads()[at - optimizer_.shard_begin()];
      }
      comm_->allreduce_sum(check_sums_.data(), static_cast<int64_t>(check_sums_.size()));
      if (merged) {
        if (check_sums_[0] != static_cast<double>(global_rows))
          fail("train_step: the global batch was given as ", global_rows,
               " rows, but the ranks' shards hold ", check_sums_[0]);
        agree_on_loss(check_sums_.data());
        check_loss();
      }
      at = -1;
      for (size_t r = kLossSums; r < check_sums_.size() && at < 0; r += 2)
        if (check_sums_[r] > 0) {
          at = static_cast<int64_t>(check_sums_[r]) - 1;
          value = static_cast<float>(check_sums_[r + 1]);
        }
    }
    if (at >= 0) {
      const std::pair<size_t, int64_t> where = optimizer_.locate(at);
      const auto& p = optimizer_.params()[where.first];
      std::ostringstream os;
      os << "the gradient of " << p.name << " holds " << value << " at flat index " << where.second;
      non_finite(os.str());
    }
  }

  {
    const profile::Scope timer("optimizer");
    optimizer_.step();
  }
  if (sharded) {
    // Every rank's updated slice of the weights to every rank.
    const profile::Scope timer("parameter allgather");
    comm_->allgather_slices(optimizer_.values().data(), shard_counts_);
  }
  return r;
}

// A Sequential child's backward is done, so are the ones after it: start the
// all-reduce of their gradients once they make a bucket, else let the started
// ones progress (MPI moves data only inside its calls).
void Trainer::on_layer_backward_done(size_t child) {
  if (!overlap_) return;
  const profile::Scope timer("gradient allreduce (overlapped)");
  const int64_t ready = layer_start_[child];
  if ((unsent_end_ - ready) * static_cast<int64_t>(sizeof(float)) >= bucket_bytes_) {
    comm_->start_allreduce_sum(optimizer_.grads().data() + ready, unsent_end_ - ready);
    unsent_end_ = ready;
  } else {
    comm_->progress();
  }
}

EvalResult Trainer::evaluate(const float* x, const int32_t* labels, int64_t N, int64_t D,
                             int64_t batch_size) {
  return normlab::evaluate(model_, batch_, x, labels, N, D, batch_size);
}

}  // namespace normlab
