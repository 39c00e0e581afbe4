// The BatchNorm variants: mean-only BatchNorm, Batch Renormalization, Ghost
// BatchNorm (include/normlab/bn_family.hpp). Thin classes around the kernels
// of normlab/bn_family_kernels.hpp and BatchNorm's, with BatchNorm1d's checks
// (nn/batchnorm.cpp) in the same order and words.
#include <algorithm>
#include <cmath>
#include <sstream>

#include "nn/norm_state.hpp"
#include "nn/overflow_fallback.hpp"
#include "nn/shape_check.hpp"
#include "normlab/bn_family.hpp"
#include "normlab/bn_family_kernels.hpp"
#include "normlab/kernels.hpp"

namespace normlab {
namespace {

void check_momentum(const std::string& layer, const std::optional<double>& momentum) {
  if (momentum && !std::isfinite(*momentum))
    fail(layer, ": momentum must be a finite number or none, got ", *momentum);
}

void check_eps(const std::string& layer, double eps) {
  if (!(eps >= 0)) fail(layer, ": eps must be >= 0 (0 only for eval), got ", eps);
}

// L of the (N, C, L) view: 1 for (N,C), L, or H*W.
int64_t spatial_size(const Shape& in) {
  int64_t L = 1;
  for (size_t i = 2; i < in.size(); ++i) L *= in[i];
  return L;
}

void check_bn_input(const std::string& name, const Shape& in, int64_t C) {
  // (N,C,H,W) too: the per-channel statistics over N*H*W, as BatchNorm2d's
  // (the (N,C,H*W) view; docs/model-spec.md).
  if (in.size() < 2 || in.size() > 4)
    fail(name, ": expected a 2D (N,C), 3D (N,C,L) or 4D (N,C,H,W) input, got shape ",
         shape_str(in));
  if (in[1] != C) fail(name, ": expected ", C, " channels, got shape ", shape_str(in));
}

// BatchNorm1d's running-statistics update from one batch of M values per channel.
template <typename T>
void update_running(Tensor<T>& running_mean, Tensor<T>* running_var, int64_t& count,
                    const std::optional<double>& momentum, const T* mean, const T* var, int64_t C,
                    int64_t M) {
  ++count;
  const double f = momentum ? *momentum : 1.0 / static_cast<double>(count);
  const double unbias = static_cast<double>(M) / static_cast<double>(M - 1);
  for (int64_t c = 0; c < C; ++c) {
    running_mean[c] = static_cast<T>((1 - f) * running_mean[c] + f * mean[c]);
    if (running_var)
      (*running_var)[c] = static_cast<T>((1 - f) * (*running_var)[c] + f * var[c] * unbias);
  }
}

void name_momentum_eps(std::ostringstream& os, const std::optional<double>& momentum, double eps,
                       bool with_eps) {
  if (!momentum)
    os << ", momentum=none";
  else if (*momentum != 0.1)
    os << ", momentum=" << *momentum;
  if (with_eps && eps != 1e-5) os << ", eps=" << eps;
}

}  // namespace

// ---------------------------------------------------------------- MeanOnlyBatchNorm1d

template <typename T>
MeanOnlyBatchNorm1d<T>::MeanOnlyBatchNorm1d(int64_t C, MeanOnlyBatchNormOptions opt)
    : C_(C), opt_(opt) {
  check_positive("MeanOnlyBatchNorm1d", "num_features", C);
  check_momentum("MeanOnlyBatchNorm1d(" + std::to_string(C) + ")", opt.momentum);
  if (opt.affine) {
    bias = Tensor<T>({C}, T(0));
    dbias = Tensor<T>({C});
  }
  if (opt.track_running_stats) running_mean = Tensor<T>({C}, T(0));
}

template <typename T>
std::string MeanOnlyBatchNorm1d<T>::name() const {
  std::ostringstream os;
  os << "MeanOnlyBatchNorm1d(" << C_;
  if (!opt_.affine) os << ", affine=false";
  if (!opt_.track_running_stats) os << ", track_running_stats=false";
  name_momentum_eps(os, opt_.momentum, 0, false);
  return os.str() + ")";
}

template <typename T>
Shape MeanOnlyBatchNorm1d<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void MeanOnlyBatchNorm1d<T>::check_input(const Shape& in) const {
  check_bn_input(name(), in, C_);
}

template <typename T>
const Tensor<T>& MeanOnlyBatchNorm1d<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0), L = spatial_size(x.shape());
  const T* b = opt_.affine ? bias.data() : nullptr;
  x_ = &x;
  y_.resize(x.shape());
  mean_.resize({C_});
  used_batch_stats_ = this->training_ || !opt_.track_running_stats;
  const bool update = this->training_ && opt_.track_running_stats;
  if (N * L == 0) {  // as BatchNorm1d: empty output, the batch counted
    if (update) ++num_batches_tracked;
    return y_;
  }
  if (!used_batch_stats_) {
    meanonly_batchnorm_forward_eval(y_.data(), x.data(), running_mean.data(), b, N, C_, L);
    return y_;
  }
  meanonly_batchnorm_forward_train(y_.data(), mean_.data(), x.data(), b, N, C_, L);
  if (update)
    update_running<T>(running_mean, nullptr, num_batches_tracked, opt_.momentum, mean_.data(),
                      nullptr, C_, N * L);
  return y_;
}

template <typename T>
const Tensor<T>& MeanOnlyBatchNorm1d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0), L = spatial_size(x_->shape());
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N * L == 0) return dx_;
  meanonly_batchnorm_backward(used_batch_stats_, dx, opt_.affine ? dbias.data() : nullptr,
                              dy.data(), N, C_, L);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> MeanOnlyBatchNorm1d<T>::state() {
  std::vector<StateEntry<T>> s;
  if (opt_.affine) s.push_back({"bias", &bias, &dbias});
  if (opt_.track_running_stats) {
    s.push_back({"running_mean", &running_mean});
    s.push_back({"num_batches_tracked", nullptr, nullptr, &num_batches_tracked});
  }
  return s;
}

// ---------------------------------------------------------------- BatchRenorm1d

template <typename T>
BatchRenorm1d<T>::BatchRenorm1d(int64_t C, BatchRenormOptions opt) : C_(C), opt_(opt) {
  check_positive("BatchRenorm1d", "num_features", C);
  const std::string who = "BatchRenorm1d(" + std::to_string(C) + ")";
  check_eps(who, opt.eps);
  check_momentum(who, opt.momentum);
  if (!(opt.rmax >= 1) || !std::isfinite(opt.rmax))
    fail(who, ": rmax must be a finite number >= 1, got ", opt.rmax);
  if (!(opt.dmax >= 0) || !std::isfinite(opt.dmax))
    fail(who, ": dmax must be a finite number >= 0, got ", opt.dmax);
  if (opt.warmup < 0 || opt.rmax_ramp < 0 || opt.dmax_ramp < 0)
    fail(who, ": warmup, rmax_ramp and dmax_ramp must be >= 0 steps, got ", opt.warmup, ", ",
         opt.rmax_ramp, ", ", opt.dmax_ramp);
  init_norm_tensors<T>(*this, C, opt.affine, /*track_running_stats=*/true);
}

template <typename T>
std::string BatchRenorm1d<T>::name() const {
  std::ostringstream os;
  os << "BatchRenorm1d(" << C_ << ", rmax=" << opt_.rmax << ", dmax=" << opt_.dmax;
  if (opt_.warmup) os << ", warmup=" << opt_.warmup;
  if (opt_.rmax_ramp) os << ", rmax_ramp=" << opt_.rmax_ramp;
  if (opt_.dmax_ramp) os << ", dmax_ramp=" << opt_.dmax_ramp;
  if (!opt_.affine) os << ", affine=false";
  name_momentum_eps(os, opt_.momentum, opt_.eps, true);
  return os.str() + ")";
}

namespace {
// The fraction of the way from the warm-up's end to `ramp` steps after it.
double ramp_fraction(int64_t steps, int64_t warmup, int64_t ramp) {
  if (steps < warmup) return 0;
  if (ramp == 0) return 1;
  return std::min(1.0, static_cast<double>(steps - warmup) / static_cast<double>(ramp));
}
}  // namespace

template <typename T>
double BatchRenorm1d<T>::rmax_at(int64_t steps) const {
  return 1 + (opt_.rmax - 1) * ramp_fraction(steps, opt_.warmup, opt_.rmax_ramp);
}

template <typename T>
double BatchRenorm1d<T>::dmax_at(int64_t steps) const {
  return opt_.dmax * ramp_fraction(steps, opt_.warmup, opt_.dmax_ramp);
}

template <typename T>
void BatchRenorm1d<T>::freeze_correction(Tensor<T> r, Tensor<T> d) {
  if (r.numel() != 0 && (r.shape() != Shape{C_} || d.shape() != Shape{C_}))
    fail(name(), ": frozen r and d must have shape (", C_, "), got ", shape_str(r.shape()), " and ",
         shape_str(d.shape()));
  frozen_r_ = std::move(r);
  frozen_d_ = std::move(d);
}

template <typename T>
Shape BatchRenorm1d<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void BatchRenorm1d<T>::check_input(const Shape& in) const {
  check_bn_input(name(), in, C_);
}

template <typename T>
const Tensor<T>& BatchRenorm1d<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0), L = spatial_size(x.shape());
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  const T* beta = opt_.affine ? bias.data() : nullptr;
  const T eps = static_cast<T>(opt_.eps);
  x_ = &x;
  y_.resize(x.shape());
  mean_.resize({C_});
  rstd_.resize({C_});
  // BatchNorm1d's checks, in its order and words.
  if (this->training_ && N * L == 1)
    fail(name(), ": expected more than 1 value per channel when training, got input shape ",
         shape_str(x.shape()));
  if (this->training_ && !(opt_.eps > 0))
    fail(name(), ": eps must be positive when normalizing with batch statistics, got ", opt_.eps,
         " (PyTorch refuses it too; eps = 0 works in eval mode with running statistics)");
  if (N * L == 0) {
    if (this->training_) ++num_batches_tracked;
    return y_;
  }
  if (!this->training_) {
    batchnorm_forward_eval(y_.data(), x.data(), running_mean.data(), running_var.data(), gamma,
                           beta, N, C_, L, eps);
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = running_mean[c];
      rstd_[c] = T(1) / std::sqrt(running_var[c] + eps);
    }
    return y_;
  }
  var_.resize({C_});
  r_.resize({C_});
  d_.resize({C_});
  if (frozen_r_.numel() != 0) {
    // Gradient checks: y = BatchNorm with gamma * r and gamma * d + beta.
    g2_.resize({C_});
    b2_.resize({C_});
    for (int64_t c = 0; c < C_; ++c) {
      r_[c] = frozen_r_[c];
      d_[c] = frozen_d_[c];
      g2_[c] = (gamma ? gamma[c] : T(1)) * r_[c];
      b2_[c] = (gamma ? gamma[c] : T(1)) * d_[c] + (beta ? beta[c] : T(0));
    }
    ref::batchnorm_forward_train(y_.data(), mean_.data(), rstd_.data(), var_.data(), x.data(),
                                 g2_.data(), b2_.data(), N, C_, L, eps);
    exact_ = true;
  } else {
    const double rmax = rmax_at(num_batches_tracked), dmax = dmax_at(num_batches_tracked);
    batchrenorm_forward_train(y_.data(), mean_.data(), rstd_.data(), var_.data(), r_.data(),
                              d_.data(), x.data(), gamma, beta, running_mean.data(),
                              running_var.data(), rmax, dmax, N, C_, L, eps);
    exact_ = statistics_overflowed(mean_, rstd_);  // see nn/overflow_fallback.hpp
    if (exact_)
      ref::batchrenorm_forward_train(y_.data(), mean_.data(), rstd_.data(), var_.data(), r_.data(),
                                     d_.data(), x.data(), gamma, beta, running_mean.data(),
                                     running_var.data(), rmax, dmax, N, C_, L, eps);
  }
  update_running<T>(running_mean, &running_var, num_batches_tracked, opt_.momentum, mean_.data(),
                    var_.data(), C_, N * L);
  return y_;
}

template <typename T>
const Tensor<T>& BatchRenorm1d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0), L = spatial_size(x_->shape());
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N * L == 0) return dx_;
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  T* dgamma = opt_.affine ? dweight.data() : nullptr;
  T* dbeta = opt_.affine ? dbias.data() : nullptr;
  if (this->training_)
    (exact_ ? ref::batchrenorm_backward_train<T>
            : batchrenorm_backward_train<T>)(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(),
                                             rstd_.data(), r_.data(), d_.data(), gamma, N, C_, L);
  else
    batchnorm_backward_eval(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(), rstd_.data(),
                            gamma, N, C_, L);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> BatchRenorm1d<T>::state() {
  return norm_state<T>(*this, opt_.affine, true);  // always tracks
}

// ---------------------------------------------------------------- GhostBatchNorm1d

template <typename T>
GhostBatchNorm1d<T>::GhostBatchNorm1d(int64_t C, int64_t virtual_batch_size, BatchNormOptions opt)
    : C_(C), K_(virtual_batch_size), opt_(opt) {
  check_positive("GhostBatchNorm1d", "num_features", C);
  const std::string who = "GhostBatchNorm1d(" + std::to_string(C) + ")";
  if (virtual_batch_size <= 0)
    fail(who, ": virtual_batch_size must be positive, got ", virtual_batch_size);
  check_eps(who, opt.eps);
  check_momentum(who, opt.momentum);
  init_norm_tensors<T>(*this, C, opt.affine, opt.track_running_stats);
}

template <typename T>
std::string GhostBatchNorm1d<T>::name() const {
  std::ostringstream os;
  os << "GhostBatchNorm1d(" << C_ << ", virtual_batch_size=" << K_;
  if (!opt_.affine) os << ", affine=false";
  if (!opt_.track_running_stats) os << ", track_running_stats=false";
  name_momentum_eps(os, opt_.momentum, opt_.eps, true);
  return os.str() + ")";
}

template <typename T>
Shape GhostBatchNorm1d<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void GhostBatchNorm1d<T>::check_input(const Shape& in) const {
  check_bn_input(name(), in, C_);
}

template <typename T>
const Tensor<T>& GhostBatchNorm1d<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0), L = spatial_size(x.shape());
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  const T* beta = opt_.affine ? bias.data() : nullptr;
  const T eps = static_cast<T>(opt_.eps);
  const int64_t G = N == 0 ? 0 : (N + K_ - 1) / K_;
  x_ = &x;
  y_.resize(x.shape());
  used_batch_stats_ = this->training_ || !opt_.track_running_stats;
  const bool update = this->training_ && opt_.track_running_stats;
  if (used_batch_stats_ && N * L == 1)
    fail(name(), ": expected more than 1 value per channel when training, got input shape ",
         shape_str(x.shape()));
  if (used_batch_stats_ && L == 1 && K_ == 1 && N > 1)
    fail(name(),
         ": expected more than 1 value per channel in every virtual batch; "
         "virtual_batch_size=1 on input shape ",
         shape_str(x.shape()), " gives one value per channel in each");
  if (used_batch_stats_ && L == 1 && G > 1 && N - (G - 1) * K_ == 1)
    fail(name(), ": expected more than 1 value per channel in every virtual batch; input shape ",
         shape_str(x.shape()), " leaves the last virtual batch (sample ", N - 1,
         ") one sample (batch size ", N, " = ", G - 1, " x ", K_, " + 1)");
  if (used_batch_stats_ && !(opt_.eps > 0))
    fail(name(), ": eps must be positive when normalizing with batch statistics, got ", opt_.eps,
         " (PyTorch refuses it too; eps = 0 works in eval mode with running statistics)");
  if (N * L == 0) {
    if (update) ++num_batches_tracked;
    return y_;
  }
  if (!used_batch_stats_) {
    mean_.resize({1, C_});
    rstd_.resize({1, C_});
    batchnorm_forward_eval(y_.data(), x.data(), running_mean.data(), running_var.data(), gamma,
                           beta, N, C_, L, eps);
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = running_mean[c];
      rstd_[c] = T(1) / std::sqrt(running_var[c] + eps);
    }
    return y_;
  }
  mean_.resize({G, C_});
  rstd_.resize({G, C_});
  var_.resize({G, C_});
  exact_.assign(static_cast<size_t>(G), 0);
  const int64_t S = C_ * L;  // values per sample
  ghost_batchnorm_forward_train(y_.data(), mean_.data(), rstd_.data(), var_.data(), x.data(), gamma,
                                beta, N, C_, L, K_, eps);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t n0 = g * K_, ng = std::min(K_, N - n0);
    T* m = mean_.data() + g * C_;
    T* rs = rstd_.data() + g * C_;
    T* v = var_.data() + g * C_;
    bool bad = false;  // as statistics_overflowed, for this virtual batch
    for (int64_t c = 0; c < C_; ++c)
      bad |= !std::isfinite(m[c]) || !(rs[c] > 0) || !std::isfinite(rs[c]);
    if (bad) {
      exact_[static_cast<size_t>(g)] = 1;
      ref::batchnorm_forward_train(y_.data() + n0 * S, m, rs, v, x.data() + n0 * S, gamma, beta, ng,
                                   C_, L, eps);
    }
    if (update)
      update_running<T>(running_mean, &running_var, num_batches_tracked, opt_.momentum, m, v, C_,
                        ng * L);
  }
  return y_;
}

template <typename T>
const Tensor<T>& GhostBatchNorm1d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0), L = spatial_size(x_->shape());
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N * L == 0) return dx_;
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  T* dgamma = opt_.affine ? dweight.data() : nullptr;
  T* dbeta = opt_.affine ? dbias.data() : nullptr;
  if (!used_batch_stats_) {
    batchnorm_backward_eval(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(), rstd_.data(),
                            gamma, N, C_, L);
    return dx_;
  }
  ghost_batchnorm_backward_train(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(),
                                 rstd_.data(), gamma, N, C_, L, K_, exact_.data());
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> GhostBatchNorm1d<T>::state() {
  return norm_state<T>(*this, opt_.affine, opt_.track_running_stats);
}

template class MeanOnlyBatchNorm1d<float>;
template class MeanOnlyBatchNorm1d<double>;
template class BatchRenorm1d<float>;
template class BatchRenorm1d<double>;
template class GhostBatchNorm1d<float>;
template class GhostBatchNorm1d<double>;

}  // namespace normlab
