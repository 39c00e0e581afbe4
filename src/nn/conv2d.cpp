#include <cmath>
#include <sstream>

#include "kernels/conv2d.hpp"
#include "nn/shape_check.hpp"
#include "normlab/conv.hpp"

namespace normlab {

namespace {
std::string pair_str(Pair p) {
  return "(" + std::to_string(p.h) + ", " + std::to_string(p.w) + ")";
}
}  // namespace

template <typename T>
Conv2d<T>::Conv2d(int64_t in, int64_t out, Pair k, Conv2dOptions opt)
    : in_(in), out_(out), k_(k), opt_(opt) {
  const std::string me = "Conv2d(" + std::to_string(in) + ", " + std::to_string(out) + ")";
  check_positive(me, "in_channels", in);
  check_positive(me, "out_channels", out);
  if (k.h <= 0 || k.w <= 0) fail(me, ": kernel_size must be positive, got ", pair_str(k));
  if (opt.stride.h <= 0 || opt.stride.w <= 0)
    fail(me, ": stride must be positive, got ", pair_str(opt.stride));
  if (opt.dilation.h <= 0 || opt.dilation.w <= 0)
    fail(me, ": dilation must be positive, got ", pair_str(opt.dilation));
  if (opt.padding.h < 0 || opt.padding.w < 0)
    fail(me, ": padding must be >= 0, got ", pair_str(opt.padding));
  check_positive(me, "groups", opt.groups);
  if (in % opt.groups != 0)
    fail(me, ": in_channels must be divisible by groups (", in, " % ", opt.groups, " = ",
         in % opt.groups, ")");
  if (out % opt.groups != 0)
    fail(me, ": out_channels must be divisible by groups (", out, " % ", opt.groups, " = ",
         out % opt.groups, ")");
  weight = Tensor<T>({out, in / opt.groups, k.h, k.w});
  dweight = Tensor<T>(weight.shape());
  if (opt.bias) {
    bias = Tensor<T>({out});
    dbias = Tensor<T>({out});
  }
  if constexpr (std::is_same_v<T, float>) cache_.reset(detail::new_conv_cache());
}

template <typename T>
Conv2d<T>::Conv2d(int64_t in, int64_t out, Pair k, Conv2dOptions opt, Rng& rng)
    : Conv2d(in, out, k, opt) {
  // kaiming_uniform_(a=sqrt(5)) gives bound 1/sqrt(fan_in); the bias the same.
  const double fan_in = static_cast<double>(in / opt.groups * k.h * k.w);
  const double bound = 1.0 / std::sqrt(fan_in);
  rng.fill_uniform(weight.data(), weight.numel(), -bound, bound);
  if (opt.bias) rng.fill_uniform(bias.data(), bias.numel(), -bound, bound);
}

template <typename T>
std::string Conv2d<T>::name() const {
  std::ostringstream os;
  os << "Conv2d(" << in_ << ", " << out_ << ", kernel_size=" << pair_str(k_)
     << ", stride=" << pair_str(opt_.stride);
  if (!(opt_.padding == Pair(0))) os << ", padding=" << pair_str(opt_.padding);
  if (!(opt_.dilation == Pair(1))) os << ", dilation=" << pair_str(opt_.dilation);
  if (opt_.groups != 1) os << ", groups=" << opt_.groups;
  if (!opt_.bias) os << ", bias=False";
  os << ")";
  return os.str();
}

template <typename T>
Shape Conv2d<T>::output_shape(const Shape& in) const {
  if (in.size() != 4 || in[1] != in_)
    fail(name(), ": expected an input (N, ", in_, ", H, W), got shape ", shape_str(in));
  const int64_t eh = opt_.dilation.h * (k_.h - 1) + 1, ew = opt_.dilation.w * (k_.w - 1) + 1;
  const int64_t ph = in[2] + 2 * opt_.padding.h, pw = in[3] + 2 * opt_.padding.w;
  if (ph < eh || pw < ew)
    fail(name(), ": the input ", in[2], "x", in[3], " padded to ", ph, "x", pw,
         " is smaller than the dilated kernel ", eh, "x", ew, " (input shape ", shape_str(in), ")");
  return {in[0], out_, (ph - eh) / opt_.stride.h + 1, (pw - ew) / opt_.stride.w + 1};
}

namespace {
template <typename T>
detail::ConvGeom geom(const Shape& x, const Shape& y, const Tensor<T>& w, const Conv2dOptions& o) {
  return {x[0],         x[1],       x[2],       x[3],        y[1],        w.dim(2),
          w.dim(3),     o.stride.h, o.stride.w, o.padding.h, o.padding.w, o.dilation.h,
          o.dilation.w, o.groups,   y[2],       y[3]};
}
}  // namespace

template <typename T>
const Tensor<T>& Conv2d<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(output_shape(x.shape()));
  x_ = &x;
  if (y_.numel() == 0) return y_;  // an empty batch
  detail::conv2d_forward<T>(cache_.get(), geom(x.shape(), y_.shape(), weight, opt_), x.data(),
                            weight.data(), opt_.bias ? bias.data() : nullptr, y_.data());
  return y_;
}

template <typename T>
const Tensor<T>& Conv2d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  size_dx(dx_, *x_, this->input_grad_);
  if (y_.numel() == 0) {
    if (this->input_grad_) dx_.fill(T(0));
    return dx_;  // an empty batch adds nothing to dweight and dbias
  }
  detail::conv2d_backward<T>(cache_.get(), geom(x_->shape(), y_.shape(), weight, opt_), dy.data(),
                             x_->data(), weight.data(), this->input_grad_ ? dx_.data() : nullptr,
                             dweight.data(), opt_.bias ? dbias.data() : nullptr);
  return dx_;
}

template <typename T>
std::vector<StateEntry<T>> Conv2d<T>::state() {
  std::vector<StateEntry<T>> s{{"weight", &weight, &dweight}};
  if (opt_.bias) s.push_back({"bias", &bias, &dbias});
  return s;
}

template class Conv2d<float>;
template class Conv2d<double>;

}  // namespace normlab
