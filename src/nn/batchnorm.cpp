#include <cmath>
#include <sstream>

#include "nn/norm_state.hpp"
#include "nn/overflow_fallback.hpp"
#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"

namespace normlab {

template <typename T>
BatchNorm1d<T>::BatchNorm1d(int64_t C, BatchNormOptions opt) : BatchNorm1d(C, opt, 1) {}

template <typename T>
BatchNorm1d<T>::BatchNorm1d(int64_t C, BatchNormOptions opt, int spatial_dims)
    : C_(C), opt_(opt), spatial_dims_(spatial_dims) {
  const std::string cls = "BatchNorm" + std::to_string(spatial_dims) + "d";
  check_positive(cls, "num_features", C);
  // PyTorch's constructor takes any eps and momentum. eps = 0 works in eval;
  // training with batch statistics refuses it in forward, as F.batch_norm does.
  // Negative eps fails every PyTorch forward and NaN eps makes every output NaN;
  // a non-finite momentum writes NaN into the running statistics on the first
  // step, unseen until eval: refused here. Momentum outside [0, 1] is PyTorch's
  // formula extrapolating, kept (docs/edge-semantics.md).
  if (!(opt.eps >= 0)) fail(cls, "(", C, "): eps must be >= 0 (0 only for eval), got ", opt.eps);
  if (opt.momentum && !std::isfinite(*opt.momentum))
    fail(cls, "(", C, "): momentum must be a finite number or none, got ", *opt.momentum);
  init_norm_tensors<T>(*this, C, opt.affine, opt.track_running_stats);
}

template <typename T>
std::string BatchNorm1d<T>::name() const {
  std::ostringstream os;
  os << "BatchNorm" << spatial_dims_ << "d(" << C_;
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
Shape BatchNorm1d<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

template <typename T>
void BatchNorm1d<T>::check_input(const Shape& in) const {
  // PyTorch's BatchNorm2d: "expected 4D input (got 3D input)".
  if (spatial_dims_ == 2 && in.size() != 4)
    fail(name(), ": expected a 4D (N,C,H,W) input, got ", in.size(), "D input of shape ",
         shape_str(in));
  if (spatial_dims_ == 1 && in.size() != 2 && in.size() != 3)
    fail(name(), ": expected a 2D (N,C) or 3D (N,C,L) input, got shape ", shape_str(in));
  if (in[1] != C_) fail(name(), ": expected ", C_, " channels, got shape ", shape_str(in));
}

template <typename T>
const Tensor<T>& BatchNorm1d<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t N = x.dim(0), L = N == 0 ? 0 : x.numel() / (N * C_);  // (N, C, L) or (N,C,H*W)
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  const T* beta = opt_.affine ? bias.data() : nullptr;
  const T eps = static_cast<T>(opt_.eps);
  x_ = &x;
  y_.resize(x.shape());
  mean_.resize({C_});
  rstd_.resize({C_});
  used_batch_stats_ = this->training_ || !opt_.track_running_stats;
  // F.batch_norm's checks, in its order: batch statistics of one value are
  // meaningless (PyTorch refuses them in eval mode too when there are no running
  // statistics to use instead), and with eps = 0 a constant channel divides by 0.
  // An empty batch (N*L = 0) passes both, as in PyTorch.
  if (used_batch_stats_ && N * L == 1)
    fail(name(), ": expected more than 1 value per channel when training, got input shape ",
         shape_str(x.shape()));
  if (used_batch_stats_ && !(opt_.eps > 0))
    fail(name(), ": eps must be positive when normalizing with batch statistics, got ", opt_.eps,
         " (PyTorch refuses it too; eps = 0 works in eval mode with running statistics)");
  if (N * L == 0) {
    // PyTorch (2.15) returns the empty output, leaves running_mean and running_var
    // as they were and still counts the batch in num_batches_tracked.
    if (this->training_ && opt_.track_running_stats) ++num_batches_tracked;
    return y_;
  }
  if (!used_batch_stats_) {
    (relu_ ? batchnorm_relu_forward_eval<T>
           : batchnorm_forward_eval<T>)(y_.data(), x.data(), running_mean.data(),
                                        running_var.data(), gamma, beta, N, C_, L, eps);
    for (int64_t c = 0; c < C_; ++c) {
      mean_[c] = running_mean[c];
      rstd_[c] = T(1) / std::sqrt(running_var[c] + eps);
    }
    return y_;
  }
  var_.resize({C_});
  (relu_ ? batchnorm_relu_forward_train<T>
         : batchnorm_forward_train<T>)(y_.data(), mean_.data(), rstd_.data(), var_.data(), x.data(),
                                       gamma, beta, N, C_, L, eps);
  exact_ = statistics_overflowed(mean_, rstd_);  // see nn/overflow_fallback.hpp
  if (exact_)
    (relu_ ? ref::batchnorm_relu_forward_train<T>
           : ref::batchnorm_forward_train<T>)(y_.data(), mean_.data(), rstd_.data(), var_.data(),
                                              x.data(), gamma, beta, N, C_, L, eps);
  if (this->training_ && opt_.track_running_stats) {
    ++num_batches_tracked;
    const double f =
        opt_.momentum ? *opt_.momentum : 1.0 / static_cast<double>(num_batches_tracked);
    const double unbias = static_cast<double>(N * L) / static_cast<double>(N * L - 1);
    for (int64_t c = 0; c < C_; ++c) {
      running_mean[c] = static_cast<T>((1 - f) * running_mean[c] + f * mean_[c]);
      running_var[c] = static_cast<T>((1 - f) * running_var[c] + f * var_[c] * unbias);
    }
  }
  return y_;
}

template <typename T>
const Tensor<T>& BatchNorm1d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->dim(0), L = N == 0 ? 0 : x_->numel() / (N * C_);
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N * L == 0) return dx_;  // an empty batch adds nothing to dweight and dbias
  const T* gamma = opt_.affine ? weight.data() : nullptr;
  T* dgamma = opt_.affine ? dweight.data() : nullptr;
  T* dbeta = opt_.affine ? dbias.data() : nullptr;
  if (relu_)  // dy masked by the fused ReLU's output y_ inside the kernels' sweeps
    (exact_ && used_batch_stats_
         ? ref::batchnorm_relu_backward<T>
         : batchnorm_relu_backward<T>)(used_batch_stats_, dx, dgamma, dbeta, dy.data(), y_.data(),
                                       x_->data(), mean_.data(), rstd_.data(), gamma, N, C_, L);
  else if (used_batch_stats_)
    (exact_ ? ref::batchnorm_backward_train<T>
            : batchnorm_backward_train<T>)(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(),
                                           rstd_.data(), gamma, N, C_, L);
  else
    batchnorm_backward_eval(dx, dgamma, dbeta, dy.data(), x_->data(), mean_.data(), rstd_.data(),
                            gamma, N, C_, L);
  return dx_;
}

template <typename T>
bool BatchNorm1d<T>::fuse_relu(bool on) {
  relu_ = on;
  return true;
}

template <typename T>
std::vector<StateEntry<T>> BatchNorm1d<T>::state() {
  return norm_state<T>(*this, opt_.affine, opt_.track_running_stats);
}

template class BatchNorm1d<float>;
template class BatchNorm1d<double>;

}  // namespace normlab
