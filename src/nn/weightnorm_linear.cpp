#include <cmath>

#include "kernels/norm_common.hpp"
#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/profile.hpp"

namespace normlab {

WeightNormDim weight_norm_dim(std::optional<int64_t> torch_dim) {
  if (!torch_dim || *torch_dim == -1) return WeightNormDim::Whole;
  if (*torch_dim == 0 || *torch_dim == -2) return WeightNormDim::Rows;
  if (*torch_dim == 1) return WeightNormDim::Columns;
  fail("weight_norm of a Linear weight (2-D): dim must be 0, 1, -2, -1 or None, got ", *torch_dim);
}

namespace {
// The kernels' view of the norms: dim 0 per row, None whole, dim 1 per column.
template <typename T>
void wn_forward(WeightNormDim dim, T* w, T* norm, const T* v, const T* g, int64_t O, int64_t I) {
  if (dim == WeightNormDim::Columns)
    weightnorm_dim1_forward(w, norm, v, g, O, I);
  else
    weightnorm_forward(w, norm, v, g, O, I, dim == WeightNormDim::Rows);
}
template <typename T>
void wn_backward(WeightNormDim dim, T* dv, T* dg, const T* dw, const T* v, const T* g,
                 const T* norm, int64_t O, int64_t I) {
  if (dim == WeightNormDim::Columns)
    weightnorm_dim1_backward(dv, dg, dw, v, g, norm, O, I);
  else
    weightnorm_backward(dv, dg, dw, v, g, norm, O, I, dim == WeightNormDim::Rows);
}
}  // namespace

template <typename T>
WeightNormLinear<T>::WeightNormLinear(int64_t in, int64_t out, bool has_bias, WeightNormDim dim)
    : in_(in), out_(out), dim_(dim) {
  check_positive("WeightNormLinear", "in_features", in);
  check_positive("WeightNormLinear", "out_features", out);
  weight_v = Tensor<T>({out, in}, T(1));
  if (has_bias) {
    bias = Tensor<T>({out});
    dbias = Tensor<T>({out});
  }
  init_g();
}

template <typename T>
WeightNormLinear<T>::WeightNormLinear(int64_t in, int64_t out, bool has_bias, WeightNormDim dim,
                                      Rng& rng)
    : WeightNormLinear(in, out, has_bias, dim) {
  // As torch.nn.utils.weight_norm(nn.Linear(in, out)): v = Linear's initial weight,
  // g = ||v|| (per row, per column or whole), so w = v at the start.
  Linear<T> base(in, out, has_bias, rng);
  weight_v = base.weight;
  bias = base.bias;
  init_g();
}

template <typename T>
void WeightNormLinear<T>::init_g() {
  const int64_t n_norms = dim_ == WeightNormDim::Rows      ? out_
                          : dim_ == WeightNormDim::Columns ? in_
                                                           : 1;
  weight_g = dim_ == WeightNormDim::Rows      ? Tensor<T>({out_, 1})
             : dim_ == WeightNormDim::Columns ? Tensor<T>({1, in_})
                                              : Tensor<T>(Shape{});
  norm_ = Tensor<T>({n_norms});
  Tensor<T> w({out_, in_});
  // With g aliasing norm, the forward computes the norms and w = v; g takes the norms.
  wn_forward(dim_, w.data(), norm_.data(), weight_v.data(), norm_.data(), out_, in_);
  std::copy(norm_.data(), norm_.data() + norm_.numel(), weight_g.data());
  scale_ = dim_ == WeightNormDim::Rows ? Tensor<T>({out_}) : Tensor<T>();
  if (dim_ != WeightNormDim::Rows) w_ = std::move(w);  // the fused per-row path never forms w
  dweight_g = Tensor<T>(weight_g.shape());
  dweight_v = Tensor<T>({out_, in_});
}

template <typename T>
std::string WeightNormLinear<T>::name() const {
  return "WeightNormLinear(" + std::to_string(in_) + ", " + std::to_string(out_) +
         (bias.numel() ? "" : ", bias=false") +
         (dim_ == WeightNormDim::Whole     ? ", dim=none)"
          : dim_ == WeightNormDim::Columns ? ", dim=1)"
                                           : ")");
}

template <typename T>
Shape WeightNormLinear<T>::output_shape(const Shape& in) const {
  rows_with_last_dim(*this, in, in_);
  Shape out = in;
  out.back() = out_;
  return out;
}

template <typename T>
const Tensor<T>& WeightNormLinear<T>::forward_impl(const Tensor<T>& x) {
  const int64_t N = rows_with_last_dim(*this, x.shape(), in_);
  x_ = &x;
  y_.resize_last(x.shape(), out_);
  if (N == 0) return y_;  // an empty batch: an empty output, as in PyTorch
  const T* b = bias.numel() ? bias.data() : nullptr;
  unfused_ = false;
  if (dim_ == WeightNormDim::Rows) {
    z_.resize_last(x.shape(), out_);
    weightnorm_linear_forward(y_.data(), z_.data(), norm_.data(), scale_.data(), x.data(),
                              weight_v.data(), weight_g.data(), b, N, in_, out_, relu_);
    // The fused kernel applies s = g / ||v|| in T; where s itself overflows or
    // underflows (g = 1e30 with ||v|| = 1e-20) but w = s v is an ordinary number,
    // this batch goes through w instead (docs/numerics.md).
    for (int64_t o = 0; o < out_ && !unfused_; ++o)
      unfused_ = !detail::fold_coeff_ok<T>(static_cast<double>(weight_g[o]) / norm_[o]) ||
                 !std::isfinite(static_cast<double>(weight_g[o]) / norm_[o]);
    if (!unfused_) return y_;
  }
  w_.resize({out_, in_});
  {
    const profile::Scope timer("weightnorm forward");
    wn_forward(dim_, w_.data(), norm_.data(), weight_v.data(), weight_g.data(), out_, in_);
  }
  linear_forward(y_.data(), x.data(), w_.data(), b, N, in_, out_);
  if (relu_) relu_forward(y_.data(), y_.data(), y_.numel());
  return y_;
}

template <typename T>
const Tensor<T>& WeightNormLinear<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / in_;
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N == 0) return dx_;  // an empty batch adds nothing to the parameter gradients
  T* db = bias.numel() ? dbias.data() : nullptr;
  if (dim_ == WeightNormDim::Rows && !unfused_) {
    dys_.resize({N, out_});
    dot_.resize({out_});
    weightnorm_linear_backward(dx, dweight_v.data(), dweight_g.data(), db, dys_.data(), dot_.data(),
                               dy.data(), x_->data(), z_.data(), weight_v.data(), weight_g.data(),
                               norm_.data(), scale_.data(), N, in_, out_,
                               relu_ ? y_.data() : nullptr);
    return dx_;
  }
  const T* g = dy.data();
  if (relu_) {  // the fused ReLU's backward, as ReLU's: dy where its output is positive
    dys_.resize({N, out_});
    relu_backward(dys_.data(), dy.data(), y_.data(), y_.numel());
    g = dys_.data();
  }
  dw_.resize({out_, in_});
  dw_.fill(T(0));
  linear_backward(dx, dw_.data(), db, g, x_->data(), w_.data(), N, in_, out_);
  const profile::Scope timer("weightnorm backward");
  wn_backward(dim_, dweight_v.data(), dweight_g.data(), dw_.data(), weight_v.data(),
              weight_g.data(), norm_.data(), out_, in_);
  return dx_;
}

template <typename T>
bool WeightNormLinear<T>::fuse_relu(bool on) {
  relu_ = on && dim_ == WeightNormDim::Rows;  // the other norms keep the plain path
  return relu_;
}

template <typename T>
std::vector<StateEntry<T>> WeightNormLinear<T>::state() {
  std::vector<StateEntry<T>> s;
  if (bias.numel()) s.push_back({"bias", &bias, &dbias});
  s.push_back({"weight_g", &weight_g, &dweight_g});
  s.push_back({"weight_v", &weight_v, &dweight_v});
  return s;
}

template class WeightNormLinear<float>;
template class WeightNormLinear<double>;

}  // namespace normlab
