// GroupNorm and InstanceNorm1d (normlab/groupnorm.hpp): thin layers over the
// GroupNorm kernels; InstanceNorm1d's eval with running statistics is
// BatchNorm's eval map (the same per-channel constants).
#include <cmath>
#include <iostream>
#include <limits>
#include <sstream>

#include "nn/norm_state.hpp"
#include "nn/overflow_fallback.hpp"
#include "nn/shape_check.hpp"
#include "normlab/groupnorm.hpp"
#include "normlab/groupnorm_kernels.hpp"
#include "normlab/kernels.hpp"

namespace normlab {

// ---------------------------------------------------------------- GroupNorm

template <typename T>
GroupNorm<T>::GroupNorm(int64_t num_groups, int64_t num_channels, GroupNormOptions opt)
    : G_(num_groups), C_(num_channels), opt_(opt) {
  check_positive("GroupNorm", "num_groups", num_groups);
  check_positive("GroupNorm", "num_channels", num_channels);
  if (num_channels % num_groups != 0)
    fail("GroupNorm(", num_groups, ", ", num_channels, "): num_channels (", num_channels,
         ") must be divisible by num_groups (", num_groups, ")");
  // As LayerNorm: eps = 0 is kept (a constant group gives NaN, as in PyTorch);
  // a negative or NaN eps only ever makes groups NaN: refused.
  if (!(opt.eps >= 0))
    fail("GroupNorm(", num_groups, ", ", num_channels, "): eps must be >= 0, got ", opt.eps);
  if (opt.affine) {
    weight = Tensor<T>({num_channels}, T(1));
    bias = Tensor<T>({num_channels}, T(0));
    dweight = Tensor<T>({num_channels});
    dbias = Tensor<T>({num_channels});
  }
}

template <typename T>
std::string GroupNorm<T>::name() const {
  std::ostringstream os;
  os << "GroupNorm(" << G_ << ", " << C_;
  if (!opt_.affine) os << ", affine=false";
  if (opt_.eps != 1e-5) os << ", eps=" << opt_.eps;
  return os.str() + ")";
}

template <typename T>
void GroupNorm<T>::check_input(const Shape& in) const {
  if (in.size() < 2)
    fail(name(), ": expected an input (N, C, *) with at least 2 dimensions, got shape ",
         shape_str(in));
  if (in[1] != C_)
    fail(name(), ": expected ", C_, " channels (dim 1), got ", in[1], " in shape ", shape_str(in));
}

template <typename T>
Shape GroupNorm<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
const Tensor<T>& GroupNorm<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0), S = C_ == 0 || N == 0 ? 0 : x.numel() / (N * C_);
  x_ = &x;
  y_.resize(x.shape());
  mean_.resize({N * G_});
  rstd_.resize({N * G_});
  if (x.numel() == 0) return y_;  // an empty batch (or trailing dim): an empty output
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  const T* beta = opt_.affine ? bias.data() : nullptr;
  const T eps = static_cast<T>(opt_.eps);
  groupnorm_forward<T>(y_.data(), mean_.data(), rstd_.data(), nullptr, x.data(), gamma, beta, N, C_,
                       S, G_, eps);
  exact_ = statistics_overflowed(mean_, rstd_);  // see nn/overflow_fallback.hpp
  if (exact_)
    ref::groupnorm_forward<T>(y_.data(), mean_.data(), rstd_.data(), nullptr, x.data(), gamma, beta,
                              N, C_, S, G_, eps);
  return y_;
}

template <typename T>
const Tensor<T>& GroupNorm<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (x_->numel() == 0) return dx_;  // an empty batch adds nothing to dweight and dbias
  const int64_t N = x_->dim(0), S = x_->numel() / (N * C_);
  (exact_ ? ref::groupnorm_backward<T>
          : groupnorm_backward<T>)(dx, opt_.affine ? dweight.data() : nullptr,
                                   opt_.affine ? dbias.data() : nullptr, dy.data(), x_->data(),
                                   mean_.data(), rstd_.data(),
                                   opt_.affine ? weight.data() : nullptr, N, C_, S, G_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> GroupNorm<T>::state() {
  std::vector<StateEntry<T>> s;
  if (opt_.affine) {
    s.push_back({"weight", &weight, &dweight});
    s.push_back({"bias", &bias, &dbias});
  }
  return s;
}

template class GroupNorm<float>;
template class GroupNorm<double>;

// ---------------------------------------------------------------- InstanceNorm1d

template <typename T>
InstanceNorm1d<T>::InstanceNorm1d(int64_t num_features, InstanceNormOptions opt)
    : InstanceNorm1d(num_features, opt, 1) {}

template <typename T>
InstanceNorm1d<T>::InstanceNorm1d(int64_t num_features, InstanceNormOptions opt, int spatial_dims)
    : C_(num_features), opt_(opt), spatial_dims_(spatial_dims) {
  const std::string cls = "InstanceNorm" + std::to_string(spatial_dims) + "d";
  check_positive(cls, "num_features", num_features);
  if (!(opt.eps >= 0)) fail(cls, "(", num_features, "): eps must be >= 0, got ", opt.eps);
  if (opt.momentum && !std::isfinite(*opt.momentum))
    fail(cls, "(", num_features, "): momentum must be a finite number or none, got ",
         *opt.momentum);
  init_norm_tensors<T>(*this, num_features, opt.affine, opt.track_running_stats);
}

template <typename T>
std::string InstanceNorm1d<T>::name() const {
  std::ostringstream os;
  os << "InstanceNorm" << spatial_dims_ << "d(" << C_;
  if (opt_.affine) os << ", affine=true";
  if (opt_.track_running_stats) os << ", track_running_stats=true";
  if (!opt_.momentum)
    os << ", momentum=none";
  else if (*opt_.momentum != 0.1)
    os << ", momentum=" << *opt_.momentum;
  if (opt_.eps != 1e-5) os << ", eps=" << opt_.eps;
  return os.str() + ")";
}

template <typename T>
void InstanceNorm1d<T>::check_input(const Shape& in) const {
  // PyTorch: "expected 2D or 3D input (got 4D input)" (InstanceNorm1d),
  // "expected 3D or 4D input (got 2D input)" (InstanceNorm2d).
  const size_t d = static_cast<size_t>(spatial_dims_);
  if (in.size() != d + 1 && in.size() != d + 2) {
    if (spatial_dims_ == 1)
      fail(name(), ": expected a 2D (C, L) or 3D (N, C, L) input, got shape ", shape_str(in));
    fail(name(), ": expected a 3D (C, H, W) or 4D (N, C, H, W) input, got ", in.size(),
         "D input of shape ", shape_str(in));
  }
  const size_t cdim = in.size() - d - 1;
  const int64_t c = in[cdim];
  if (c != C_ && (opt_.affine || opt_.track_running_stats))
    fail(name(), ": expected ", C_, " channels (dim ", cdim, "), got ", c, " in shape ",
         shape_str(in));
}

template <typename T>
Shape InstanceNorm1d<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
const Tensor<T>& InstanceNorm1d<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const bool batched = x.rank() == spatial_dims_ + 2;
  N_ = batched ? x.dim(0) : 1;
  Cx_ = x.dim(batched ? 1 : 0);
  L_ = 1;  // the spatial size: L, or H*W
  for (int i = batched ? 2 : 1; i < x.rank(); ++i) L_ *= x.dim(i);
  if (Cx_ != C_ && !warned_) {
    // PyTorch warns here and goes on (num_features is unused without affine
    // and running statistics); so does normlab, once per layer.
    std::cerr << "warning: " << name() << ": the input has " << Cx_
              << " channels, not num_features; num_features is not used because affine=false\n";
    warned_ = true;
  }
  x_ = &x;
  y_.resize(x.shape());
  used_instance_stats_ = this->training_ || !opt_.track_running_stats;
  if (used_instance_stats_ && L_ == 1)
    fail(name(),
         ": expected more than 1 spatial element when normalizing with instance "
         "statistics, got input shape ",
         shape_str(x.shape()));
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  const T* beta = opt_.affine ? bias.data() : nullptr;
  const T eps = static_cast<T>(opt_.eps);
  if (!used_instance_stats_) {
    mean_.resize({C_});
    rstd_.resize({C_});
    if (x.numel() == 0) return y_;
    batchnorm_forward_eval(y_.data(), x.data(), running_mean.data(), running_var.data(), gamma,
                           beta, N_, C_, L_, eps);
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = running_mean[c];
      rstd_[c] = T(1) / std::sqrt(running_var[c] + eps);
    }
    return y_;
  }
  const int64_t R = N_ * Cx_;
  mean_.resize({R});
  rstd_.resize({R});
  var_.resize({R});
  if (R * L_ == 0) {
    // No values per instance (L = 0): the instance statistics are NaN, as a
    // mean over nothing is in PyTorch.
    mean_.fill(std::numeric_limits<T>::quiet_NaN());
    var_.fill(std::numeric_limits<T>::quiet_NaN());
  } else {
    groupnorm_forward<T>(y_.data(), mean_.data(), rstd_.data(), var_.data(), x.data(), gamma, beta,
                         N_, Cx_, L_, Cx_, eps);
    exact_ = statistics_overflowed(mean_, rstd_);
    if (exact_)
      ref::groupnorm_forward<T>(y_.data(), mean_.data(), rstd_.data(), var_.data(), x.data(), gamma,
                                beta, N_, Cx_, L_, Cx_, eps);
    // With eps = 0 a constant instance has rstd 0 in PyTorch's instance norm
    // (its batch-norm kernel's invstd), so its output is beta (0 without
    // affine) and its gradient 0, where 1/sqrt(0) would give NaN.
    if (opt_.eps == 0)
      for (int64_t r = 0; r < R; ++r)
        if (var_[r] == 0) {
          rstd_[r] = 0;
          const T b = beta ? beta[r % Cx_] : T(0);
          std::fill(y_.data() + r * L_, y_.data() + (r + 1) * L_, b);
        }
  }
  if (this->training_ && opt_.track_running_stats) {
    // F.instance_norm: the running statistics move by the per-instance
    // statistics averaged over the batch (unbiased variance); an empty batch
    // averages nothing and writes NaN, as PyTorch 2.15 does.
    const double f = opt_.momentum ? *opt_.momentum : 0.0;
    const double unbias = static_cast<double>(L_) / static_cast<double>(L_ - 1);
    for (int64_t c = 0; c < C_; ++c) {
      double m = 0, v = 0;
      for (int64_t n = 0; n < N_; ++n) {
        m += mean_[n * C_ + c];
        v += static_cast<double>(var_[n * C_ + c]) * unbias;
      }
      m /= static_cast<double>(N_);
      v /= static_cast<double>(N_);
      running_mean[c] = static_cast<T>((1 - f) * running_mean[c] + f * m);
      running_var[c] = static_cast<T>((1 - f) * running_var[c] + f * v);
    }
  }
  return y_;
}

template <typename T>
const Tensor<T>& InstanceNorm1d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (x_->numel() == 0) return dx_;  // an empty batch adds nothing to dweight and dbias
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  T* dgamma = opt_.affine ? dweight.data() : nullptr;
  T* dbeta = opt_.affine ? dbias.data() : nullptr;
  if (used_instance_stats_)
    (exact_ ? ref::groupnorm_backward<T>
            : groupnorm_backward<T>)(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(),
                                     rstd_.data(), gamma, N_, Cx_, L_, Cx_);
  else
    batchnorm_backward_eval(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(), rstd_.data(),
                            gamma, N_, C_, L_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> InstanceNorm1d<T>::state() {
  return norm_state<T>(*this, opt_.affine, opt_.track_running_stats);
}

template class InstanceNorm1d<float>;
template class InstanceNorm1d<double>;

}  // namespace normlab
