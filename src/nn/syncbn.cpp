// SyncBatchNorm (include/normlab/syncbn.hpp): BatchNorm over the global batch
// of the ranks of a communicator.
#include "normlab/syncbn.hpp"
#include "normlab/syncbn_family.hpp"

#include <cmath>
#include <sstream>

#include "nn/norm_state.hpp"
#include "nn/shape_check.hpp"
#include "normlab/bn_family_kernels.hpp"
#include "normlab/model_spec.hpp"

namespace normlab {

template <typename T>
SyncBatchNorm<T>::SyncBatchNorm(int64_t C, BatchNormOptions opt, Communicator* comm)
    : C_(C), opt_(opt), comm_(comm) {
  check_positive("SyncBatchNorm", "num_features", C);
  if (!(opt.eps >= 0))
    fail("SyncBatchNorm(", C, "): eps must be >= 0 (0 only for eval), got ", opt.eps);
  if (opt.momentum && !std::isfinite(*opt.momentum))
    fail("SyncBatchNorm(", C, "): momentum must be a finite number or none, got ", *opt.momentum);
  init_norm_tensors<T>(*this, C, opt.affine, opt.track_running_stats);
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

// ---------------------------------------------------------------- SyncBatchRenorm1d

template <typename T>
SyncBatchRenorm1d<T>::SyncBatchRenorm1d(int64_t C, BatchRenormOptions opt, Communicator* comm)
    : BatchRenorm1d<T>(C, opt), C_(C), opt_(opt), comm_(comm) {}

template <typename T>
std::string SyncBatchRenorm1d<T>::name() const {
  return "Sync" + BatchRenorm1d<T>::name();
}

template <typename T>
const Tensor<T>& SyncBatchRenorm1d<T>::forward_impl(const Tensor<T>& x) {
  Communicator* comm = this->training_ ? (comm_ ? comm_ : &world()) : nullptr;
  synced_ = comm && comm->size() > 1;
  if (!synced_) return BatchRenorm1d<T>::forward_impl(x);
  (void)this->output_shape(x.shape());  // BatchRenorm1d's shape check and words
  if (!(opt_.eps > 0))
    fail(name(), ": eps must be positive when normalizing with batch statistics, got ", opt_.eps);
  const int64_t N = x.dim(0), L = N > 0 ? x.numel() / (N * C_) : 1;
  x_ = &x;
  y_.resize(x.shape());
  // Every rank takes part in the exchange, an empty shard too (count 0).
  moments_.resize(static_cast<size_t>(3 * C_));
  syncbn_moments(moments_.data(), x.data(), N, C_, L);
  all_.resize(moments_.size() * static_cast<size_t>(comm->size()));
  comm->allgather(moments_.data(), static_cast<int64_t>(moments_.size() * sizeof(double)),
                  all_.data());
  syncbn_merge(moments_.data(), all_.data(), comm->size(), C_);
  count_ = moments_[0];
  if (count_ == 1)
    fail(name(), ": expected more than 1 value per channel when training, got input shape ",
         shape_str(x.shape()), " over all ranks");
  if (count_ == 0) {
    ++this->num_batches_tracked;
    return y_;
  }
  const int64_t steps = this->num_batches_tracked;
  const double rmax = this->rmax_at(steps), dmax = this->dmax_at(steps);
  const size_t C = static_cast<size_t>(C_);
  mean_.resize(C), rstd_.resize(C), scale_.resize(C), r_.resize(C), d_.resize(C);
  shift_.resize({C_});
  const T* gamma = opt_.affine ? this->weight.data() : nullptr;
  const T* beta = opt_.affine ? this->bias.data() : nullptr;
  for (int64_t c = 0; c < C_; ++c) {
    const double m = moments_[3 * c + 1], v = moments_[3 * c + 2] / count_;
    mean_[c] = m;
    rstd_[c] = 1.0 / std::sqrt(v + opt_.eps);
    if (frozen_r_.numel() != 0) {  // gradient checks
      r_[c] = static_cast<double>(frozen_r_[c]), d_[c] = static_cast<double>(frozen_d_[c]);
    } else {
      batchrenorm_correction(r_[c], d_[c], m, v, static_cast<double>(this->running_mean[c]),
                             static_cast<double>(this->running_var[c]), rmax, dmax, opt_.eps);
    }
    scale_[c] = rstd_[c] * r_[c];
    const double g = gamma ? static_cast<double>(gamma[c]) : 1.0;
    shift_[c] = static_cast<T>(g * d_[c] + (beta ? static_cast<double>(beta[c]) : 0.0));
  }
  // The running statistics after r and d used them: BatchRenorm1d's order.
  ++this->num_batches_tracked;
  const double f =
      opt_.momentum ? *opt_.momentum : 1.0 / static_cast<double>(this->num_batches_tracked);
  for (int64_t c = 0; c < C_; ++c) {
    const double unbiased = moments_[3 * c + 2] / (count_ - 1);
    this->running_mean[c] = static_cast<T>((1 - f) * this->running_mean[c] + f * mean_[c]);
    this->running_var[c] = static_cast<T>((1 - f) * this->running_var[c] + f * unbiased);
  }
  if (N * L == 0) return y_;
  // y = (x - mean) * (gamma * rstd * r) + (gamma * d + beta)
  syncbn_normalize(y_.data(), x.data(), mean_.data(), scale_.data(), gamma, shift_.data(), N, C_,
                   L);
  return y_;
}

template <typename T>
const Tensor<T>& SyncBatchRenorm1d<T>::backward(const Tensor<T>& dy) {
  if (!synced_) return BatchRenorm1d<T>::backward(dy);
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0);
  const int64_t L = N > 0 ? x_->numel() / (N * C_) : 1;
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  const bool live = N * L > 0 && count_ > 0;
  sums_.assign(static_cast<size_t>(2 * C_), 0.0);
  if (live) syncbn_grad_sums(sums_.data(), dy.data(), x_->data(), mean_.data(), N, C_, L);
  // y = gamma (xhat r + d) + beta: this rank's sums are its parameter gradients.
  if (live && opt_.affine)
    for (int64_t c = 0; c < C_; ++c) {
      this->dweight[c] +=
          static_cast<T>(r_[c] * rstd_[c] * sums_[2 * c + 1] + d_[c] * sums_[2 * c]);
      this->dbias[c] += static_cast<T>(sums_[2 * c]);
    }
  if (!this->input_grad_) return dx_;
  Communicator* comm = comm_ ? comm_ : &world();
  comm->allreduce_sum(sums_.data(), static_cast<int64_t>(sums_.size()));
  if (!live) return dx_;
  // dx = gamma r rstd (dy - mean dy - xhat mean(dy xhat)): SyncBatchNorm's with gamma r.
  gr_.resize({C_});
  for (int64_t c = 0; c < C_; ++c)
    gr_[c] = static_cast<T>((opt_.affine ? static_cast<double>(this->weight[c]) : 1.0) * r_[c]);
  syncbn_dx(dx, dy.data(), x_->data(), mean_.data(), rstd_.data(), gr_.data(), sums_.data(), count_,
            N, C_, L);
  return dx_;
}

template class SyncBatchRenorm1d<float>;
template class SyncBatchRenorm1d<double>;

// ---------------------------------------------------------------- --sync-bn

void sync_batch_norms(std::vector<LayerPlan>& plan) {
  for (auto& p : plan) {
    auto refuse = [&](const std::string& why) {
      fail("--sync-bn: model spec, column ", p.column, ": ", p.source, ": ", why);
    };
    switch (p.kind) {
      case LayerKind::BatchNorm:
      case LayerKind::BatchNorm2d:
        p.kind = LayerKind::SyncBatchNorm;  // the same options (p.bn) and keys
        break;
      case LayerKind::BatchRenorm:
        p.kind = LayerKind::SyncBatchRenorm;
        break;
      case LayerKind::GhostBatchNorm:
        refuse(
            "Ghost BatchNorm's statistics are those of each virtual batch by design (Hoffer et "
            "al. 2017), and each rank cuts its own shard into virtual batches: there are no "
            "global batch statistics to share; run without --sync-bn (docs/distributed.md)");
        break;
      case LayerKind::MeanOnlyBatchNorm:
        refuse(
            "mean-only BatchNorm has no synchronised version; without --sync-bn it normalizes "
            "each rank's shard (docs/distributed.md)");
        break;
      default:
        break;
    }
  }
}

}  // namespace normlab
