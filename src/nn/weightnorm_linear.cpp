#include <cmath>

#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/profile.hpp"

namespace normlab {

template <typename T>
WeightNormLinear<T>::WeightNormLinear(int64_t in, int64_t out, bool has_bias, WeightNormDim dim,
                                      Rng& rng)
    : in_(in), out_(out), dim_(dim) {
  check_positive("WeightNormLinear", "in_features", in);
  check_positive("WeightNormLinear", "out_features", out);
  // As torch.nn.utils.weight_norm(nn.Linear(in, out)): v = Linear's initial weight,
  // g = ||v|| (per row or whole), so w = v at the start.
  Linear<T> base(in, out, has_bias, rng);
  weight_v = base.weight;
  bias = base.bias;
  const bool rows = dim == WeightNormDim::Rows;
  weight_g = rows ? Tensor<T>({out, 1}) : Tensor<T>(Shape{});
  norm_ = Tensor<T>({rows ? out : 1});
  Tensor<T> w({out, in});
  // With g aliasing norm, the forward computes the norms and w = v; g takes the norms.
  weightnorm_forward(w.data(), norm_.data(), weight_v.data(), norm_.data(), out, in, rows);
  std::copy(norm_.data(), norm_.data() + norm_.numel(), weight_g.data());
  if (rows)
    scale_ = Tensor<T>({out});
  else
    w_ = std::move(w);
  dweight_g = Tensor<T>(weight_g.shape());
  dweight_v = Tensor<T>({out, in});
  if (has_bias) dbias = Tensor<T>({out});
}

template <typename T>
std::string WeightNormLinear<T>::name() const {
  return "WeightNormLinear(" + std::to_string(in_) + ", " + std::to_string(out_) +
         (bias.numel() ? "" : ", bias=false") +
         (dim_ == WeightNormDim::Whole ? ", dim=none)" : ")");
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
  if (dim_ == WeightNormDim::Rows) {
    z_.resize_last(x.shape(), out_);
    weightnorm_linear_forward(y_.data(), z_.data(), norm_.data(), scale_.data(), x.data(),
                              weight_v.data(), weight_g.data(), b, N, in_, out_, relu_);
    return y_;
  }
  {
    const profile::Scope timer("weightnorm forward");
    weightnorm_forward(w_.data(), norm_.data(), weight_v.data(), weight_g.data(), out_, in_, false);
  }
  linear_forward(y_.data(), x.data(), w_.data(), b, N, in_, out_);
  return y_;
}

template <typename T>
const Tensor<T>& WeightNormLinear<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / in_;
  T* dx = size_dx(dx_, *x_, this->input_grad_) ? dx_.data() : nullptr;
  if (N == 0) return dx_;  // an empty batch adds nothing to the parameter gradients
  T* db = bias.numel() ? dbias.data() : nullptr;
  if (dim_ == WeightNormDim::Rows) {
    dys_.resize({N, out_});
    dot_.resize({out_});
    weightnorm_linear_backward(dx, dweight_v.data(), dweight_g.data(), db, dys_.data(), dot_.data(),
                               dy.data(), x_->data(), z_.data(), weight_v.data(), weight_g.data(),
                               norm_.data(), scale_.data(), N, in_, out_,
                               relu_ ? y_.data() : nullptr);
    return dx_;
  }
  dw_.resize({out_, in_});
  dw_.fill(T(0));
  linear_backward(dx, dw_.data(), db, dy.data(), x_->data(), w_.data(), N, in_, out_);
  const profile::Scope timer("weightnorm backward");
  weightnorm_backward(dweight_v.data(), dweight_g.data(), dw_.data(), weight_v.data(),
                      weight_g.data(), norm_.data(), out_, in_, false);
  return dx_;
}

template <typename T>
bool WeightNormLinear<T>::fuse_relu(bool on) {
  relu_ = on && dim_ == WeightNormDim::Rows;  // the whole-matrix norm keeps the plain path
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
