// SyncBatchNorm (include/normlab/syncbn.hpp): BatchNorm over the global batch
// of the ranks of a communicator.
#include "normlab/syncbn.hpp"

#include <cmath>
#include <sstream>

#include "nn/norm_state.hpp"
#include "nn/shape_check.hpp"

namespace normlab {

template <typename T>
SyncBatchNorm<T>::SyncBatchNorm(int64_t C, BatchNormOptions opt, Communicator* comm)
    : C_(C), opt_(opt), comm_(comm) {
  check_positive("SyncBatchNorm", "num_features", C);
  if (!(opt.eps >= 0))
    fail("SyncBatchNorm(", C, "): eps must be >= 0 (0 only for eval), got ", opt.eps);
  if (opt.momentum && !std::isfinite(*opt.momentum))
    fail("SyncBatchNorm(", C, "): momentum must be a finite number or none, got ", *opt.momentum);
  if (opt.affine) {
    weight = Tensor<T>({C}, T(1));
    bias = Tensor<T>({C}, T(0));
    dweight = Tensor<T>({C});
    dbias = Tensor<T>({C});
  }
  if (opt.track_running_stats) {
    running_mean = Tensor<T>({C}, T(0));
    running_var = Tensor<T>({C}, T(1));
  }
}

template <typename T>
std::string SyncBatchNorm<T>::name() const {
  std::ostringstream os;
  os << "SyncBatchNorm(" << C_;
  if (!opt_.affine) os << ", affine=false";
  if (!opt_.track_running_stats) os << ", track_running_stats=false";
  if (!opt_.momentum)
    os << ", momentum=none";
  else if (*opt_.momentum != 0.1)
    os << ", momentum=" << *opt_.momentum;
  if (opt_.eps != 1e-5) os << ", eps=" << opt_.eps;
  return os.str() + ")";
}

template <typename T>
void SyncBatchNorm<T>::check_input(const Shape& in) const {
  if (in.size() < 2)
    fail(name(), ": expected an input (N, C, *) of at least 2 dimensions, got shape ",
         shape_str(in));
  if (in[1] != C_) fail(name(), ": expected ", C_, " channels, got shape ", shape_str(in));
}

template <typename T>
Shape SyncBatchNorm<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
const Tensor<T>& SyncBatchNorm<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0);
  int64_t L = 1;
  for (int64_t i = 2; i < x.rank(); ++i) L *= x.dim(i);
  x_ = &x;
  y_.resize(x.shape());
  mean_.assign(static_cast<size_t>(C_), 0.0);
  rstd_.assign(static_cast<size_t>(C_), 0.0);
  used_batch_stats_ = this->training_ || !opt_.track_running_stats;
  // PyTorch synchronises in training mode only; eval without running
  // statistics normalizes with this rank's batch.
  Communicator* comm = nullptr;
  if (this->training_) comm = comm_ ? comm_ : &world();
  synced_ = comm && comm->size() > 1;
  if (used_batch_stats_ && !(opt_.eps > 0))
    fail(name(), ": eps must be positive when normalizing with batch statistics, got ", opt_.eps,
         " (PyTorch refuses it too; eps = 0 works in eval mode with running statistics)");

  if (!used_batch_stats_) {
    count_ = static_cast<double>(N * L);
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = static_cast<double>(running_mean[c]);
      rstd_[c] = 1.0 / std::sqrt(static_cast<double>(running_var[c]) + opt_.eps);
    }
  } else {
    // Every rank takes part in the exchange, an empty shard too (count 0).
    moments_.resize(static_cast<size_t>(3 * C_));
    syncbn_moments(moments_.data(), x.data(), N, C_, L);
    if (synced_) {
      all_.resize(moments_.size() * static_cast<size_t>(comm->size()));
      comm->allgather(moments_.data(), static_cast<int64_t>(moments_.size() * sizeof(double)),
                      all_.data());
      syncbn_merge(moments_.data(), all_.data(), comm->size(), C_);
    }
    count_ = C_ > 0 ? moments_[0] : 0.0;
    // Every rank sees the same global count: all refuse together.
    if (count_ == 1)
      fail(name(), ": expected more than 1 value per channel when training, got input shape ",
           shape_str(x.shape()), synced_ ? " over all ranks" : "");
    if (count_ == 0) {
      if (this->training_ && opt_.track_running_stats) ++num_batches_tracked;
      return y_;
    }
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = moments_[3 * c + 1];
      rstd_[c] = 1.0 / std::sqrt(moments_[3 * c + 2] / count_ + opt_.eps);
    }
    if (this->training_ && opt_.track_running_stats) {
      ++num_batches_tracked;
      const double f =
          opt_.momentum ? *opt_.momentum : 1.0 / static_cast<double>(num_batches_tracked);
      for (int64_t c = 0; c < C_; ++c) {
        const double unbiased = moments_[3 * c + 2] / (count_ - 1);
        running_mean[c] = static_cast<T>((1 - f) * running_mean[c] + f * mean_[c]);
        running_var[c] = static_cast<T>((1 - f) * running_var[c] + f * unbiased);
      }
    }
  }
  if (N * L == 0) return y_;
  syncbn_normalize(y_.data(), x.data(), mean_.data(), rstd_.data(),
                   opt_.affine ? weight.data() : nullptr, opt_.affine ? bias.data() : nullptr, N,
                   C_, L);
  return y_;
}

template <typename T>
const Tensor<T>& SyncBatchNorm<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0);
  const int64_t L = N > 0 ? x_->numel() / (N * C_) : 1;
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  const bool live = N * L > 0 && count_ > 0;
  sums_.assign(static_cast<size_t>(2 * C_), 0.0);
  if (live) syncbn_grad_sums(sums_.data(), dy.data(), x_->data(), mean_.data(), N, C_, L);
  // This rank's sums are its weight and bias gradients (the trainer sums those over ranks).
  if (live && opt_.affine)
    for (int64_t c = 0; c < C_; ++c) {
      dweight[c] += static_cast<T>(sums_[2 * c + 1] * rstd_[c]);
      dbias[c] += static_cast<T>(sums_[2 * c]);
    }
  if (!this->input_grad_) return dx_;  // (dx is also null for an empty shard)
  // The same collectives on every rank, whatever its shard (input_grad is the
  // same everywhere): dx needs the global sums.
  if (synced_ && used_batch_stats_) {
    Communicator* comm = comm_ ? comm_ : &world();
    comm->allreduce_sum(sums_.data(), static_cast<int64_t>(sums_.size()));
  }
  if (N * L == 0) return dx_;
  if (!used_batch_stats_) std::fill(sums_.begin(), sums_.end(), 0.0);  // eval: dx = gamma rstd dy
  syncbn_dx(dx, dy.data(), x_->data(), mean_.data(), rstd_.data(),
            opt_.affine ? weight.data() : nullptr, sums_.data(), count_, N, C_, L);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> SyncBatchNorm<T>::state() {
  return norm_state<T>(*this, opt_.affine, opt_.track_running_stats);
}

template class SyncBatchNorm<float>;
template class SyncBatchNorm<double>;

}  // namespace normlab
