#include "normlab/notebook_layers.hpp"

#include <cmath>

#include "nn/shape_check.hpp"
#include "normlab/kernels.hpp"

namespace normlab {

template <typename T>
NotebookWeightNormLinear<T>::NotebookWeightNormLinear(int64_t in, int64_t out, bool has_bias)
    : in_(in), out_(out) {
  check_positive("NotebookWeightNormLinear", "in_features", in);
  check_positive("NotebookWeightNormLinear", "out_features", out);
  g = Tensor<T>({out, in});
  weight = Tensor<T>({out, in});
  dg = Tensor<T>({out, in});
  dweight = Tensor<T>({out, in});
  if (has_bias) {
    bias = Tensor<T>({out});
    dbias = Tensor<T>({out});
  }
  w_ = Tensor<T>({out, in});
  norm_ = Tensor<T>({in});
}

template <typename T>
NotebookWeightNormLinear<T>::NotebookWeightNormLinear(int64_t in, int64_t out, bool has_bias,
                                                      Rng& rng)
    : NotebookWeightNormLinear(in, out, has_bias) {
  // The notebook's reset_parameters: kaiming_uniform_(a=sqrt(5)) on g and on v, bias
  // U(+-1/sqrt(in)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  rng.fill_uniform(g.data(), g.numel(), -bound, bound);
  rng.fill_uniform(weight.data(), weight.numel(), -bound, bound);
  if (has_bias) rng.fill_uniform(bias.data(), bias.numel(), -bound, bound);
}

template <typename T>
std::string NotebookWeightNormLinear<T>::name() const {
  return "NotebookWeightNormLinear(" + std::to_string(in_) + ", " + std::to_string(out_) +
         (bias.numel() ? ")" : ", bias=false)");
}

template <typename T>
Shape NotebookWeightNormLinear<T>::output_shape(const Shape& in) const {
  rows_with_last_dim(*this, in, in_);
  Shape out = in;
  out.back() = out_;
  return out;
}

template <typename T>
const Tensor<T>& NotebookWeightNormLinear<T>::forward_impl(const Tensor<T>& x) {
  const int64_t N = rows_with_last_dim(*this, x.shape(), in_);
  x_ = &x;
  y_.resize_last(x.shape(), out_);
  if (N == 0) return y_;  // an empty batch: an empty output, as in PyTorch
  weightnorm_columns_forward(w_.data(), norm_.data(), weight.data(), g.data(), out_, in_);
  linear_forward(y_.data(), x.data(), w_.data(), bias.numel() ? bias.data() : nullptr, N, in_,
                 out_);
  return y_;
}

template <typename T>
const Tensor<T>& NotebookWeightNormLinear<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t N = x_->numel() / in_;
  size_dx(dx_, *x_, this->input_grad_);
  if (N == 0) return dx_;  // an empty batch adds nothing to the parameter gradients
  dw_.resize({out_, in_});
  dw_.fill(T(0));
  linear_backward(this->input_grad_ ? dx_.data() : nullptr, dw_.data(),
                  bias.numel() ? dbias.data() : nullptr, dy.data(), x_->data(), w_.data(), N, in_,
                  out_);
  weightnorm_columns_backward(dweight.data(), dg.data(), dw_.data(), weight.data(), g.data(),
                              norm_.data(), out_, in_);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> NotebookWeightNormLinear<T>::state() {
  std::vector<StateEntry<T>> s{{"g", &g, &dg}, {"weight", &weight, &dweight}};
  if (bias.numel()) s.push_back({"bias", &bias, &dbias});
  return s;
}

template <typename T>
NotebookScalarNorm<T>::NotebookScalarNorm(Over over) : over_(over) {
  beta = Tensor<T>({1});
  gamma = Tensor<T>({1});
  dbeta = Tensor<T>({1});
  dgamma = Tensor<T>({1});
}

template <typename T>
NotebookScalarNorm<T>::NotebookScalarNorm(Over over, Rng& rng) : NotebookScalarNorm(over) {
  rng.fill_uniform(beta.data(), 1, 0.0, 1.0);
  rng.fill_uniform(gamma.data(), 1, 0.0, 1.0);
}

template <typename T>
std::string NotebookScalarNorm<T>::name() const {
  return over_ == Over::Tensor ? "NotebookBatchNorm" : "NotebookLayerNorm";
}

template <typename T>
void NotebookScalarNorm<T>::check_input(const Shape& in) const {
  if (in.size() != 2) fail(name(), ": expected a 2D (N,D) input, got shape ", shape_str(in));
}

template <typename T>
Shape NotebookScalarNorm<T>::output_shape(const Shape& in) const {
  check_input(in);
  return in;
}

// The normalization is LayerNorm without affine over groups (all values, or
// each row), then a scalar affine; the layer keeps xhat for the scalar gradients.
template <typename T>
const Tensor<T>& NotebookScalarNorm<T>::forward_impl(const Tensor<T>& x) {
  check_input(x.shape());
  const int64_t groups = over_ == Over::Tensor ? 1 : x.dim(0);
  const int64_t len = groups ? x.numel() / groups : 0;
  x_ = &x;
  xhat_.resize(x.shape());
  y_.resize(x.shape());
  // An empty input: an empty output. The notebook's x.mean() over no values is
  // NaN, but it reaches no output, and the gradients are empty sums (0).
  if (x.numel() == 0) return y_;
  mean_.resize({groups});
  rstd_.resize({groups});
  layernorm_forward(xhat_.data(), mean_.data(), rstd_.data(), x.data(),
                    static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), groups, len,
                    T(1e-6));
  const T a = gamma[0], b = beta[0];
  for (int64_t i = 0; i < x.numel(); ++i) y_[i] = a * xhat_[i] + b;
  return y_;
}

template <typename T>
const Tensor<T>& NotebookScalarNorm<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  const int64_t groups = over_ == Over::Tensor ? 1 : x_->dim(0);
  const int64_t len = groups ? x_->numel() / groups : 0;
  if (x_->numel() == 0) {  // an empty input adds nothing to dgamma and dbeta
    size_dx(dx_, *x_, this->input_grad_);
    return dx_;
  }
  double sg = 0, sb = 0;
  dxhat_.resize(dy.shape());
  for (int64_t i = 0; i < dy.numel(); ++i) {
    sg += static_cast<double>(dy[i]) * xhat_[i];
    sb += dy[i];
    dxhat_[i] = dy[i] * gamma[0];
  }
  dgamma[0] += static_cast<T>(sg);
  dbeta[0] += static_cast<T>(sb);
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(x_->shape());
  layernorm_backward(dx_.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), dxhat_.data(),
                     x_->data(), mean_.data(), rstd_.data(), static_cast<const T*>(nullptr), groups,
                     len);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> NotebookScalarNorm<T>::state() {
  return {{"beta", &beta, &dbeta}, {"gamma", &gamma, &dgamma}};
}

template class NotebookWeightNormLinear<float>;
template class NotebookWeightNormLinear<double>;
template class NotebookScalarNorm<float>;
template class NotebookScalarNorm<double>;

}  // namespace normlab
