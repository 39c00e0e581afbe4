// MaxPool2d (kernels: src/kernels/pool2d_{fast,ref}.cpp), AvgPool2d,
// AdaptiveAvgPool2d: PyTorch's CPU loops written out
// (aten/src/ATen/native/cpu/{MaxPoolKernel,AvgPoolKernel,AdaptiveAvgPoolKernel}.cpp),
// parallel over the N*C planes.
#include <cmath>
#include <limits>
#include <sstream>
#include <type_traits>

#include "kernels/pool2d_onednn.hpp"
#include "nn/shape_check.hpp"
#include "normlab/pool.hpp"
#include "normlab/pool_kernels.hpp"

namespace normlab {

namespace {

std::string pair_str(Pair p) {
  return "(" + std::to_string(p.h) + ", " + std::to_string(p.w) + ")";
}

Pool2dOptions checked(const char* layer, Pair k, Pool2dOptions o) {
  const std::string me = std::string(layer) + "(kernel_size=" + pair_str(k) + ")";
  if (k.h <= 0 || k.w <= 0) fail(me, ": kernel_size must be positive, got ", pair_str(k));
  if (o.stride == Pair(0)) o.stride = k;
  if (o.stride.h <= 0 || o.stride.w <= 0)
    fail(me, ": stride must be positive, got ", pair_str(o.stride));
  if (o.dilation.h <= 0 || o.dilation.w <= 0)
    fail(me, ": dilation must be positive, got ", pair_str(o.dilation));
  if (o.padding.h < 0 || o.padding.w < 0 || o.padding.h > k.h / 2 || o.padding.w > k.w / 2)
    fail(me, ": padding must be >= 0 and at most half the kernel size (PyTorch's rule), got ",
         pair_str(o.padding));
  return o;
}

template <typename L>
void check_4d(const L& layer, const Shape& in) {
  if (in.size() != 4)
    fail(layer.name(), ": expected an input (N, C, H, W), got shape ", shape_str(in));
}

// floor((size + 2 pad - dil (k - 1) - 1) / stride) + 1, at least 1.
template <typename L>
Shape pooled(const L& layer, const Shape& in, Pair k, const Pool2dOptions& o) {
  check_4d(layer, in);
  const int64_t oh = (in[2] + 2 * o.padding.h - o.dilation.h * (k.h - 1) - 1),
                ow = (in[3] + 2 * o.padding.w - o.dilation.w * (k.w - 1) - 1);
  if (oh < 0 || ow < 0)
    fail(layer.name(), ": the input ", in[2], "x", in[3], " padded by ", pair_str(o.padding),
         " is smaller than the kernel (input shape ", shape_str(in), ")");
  return {in[0], in[1], oh / o.stride.h + 1, ow / o.stride.w + 1};
}

}  // namespace

// ---------------------------------------------------------------- MaxPool2d

template <typename T>
MaxPool2d<T>::MaxPool2d(Pair k, Pool2dOptions opt) : k_(k), opt_(checked("MaxPool2d", k, opt)) {}

template <typename T>
std::string MaxPool2d<T>::name() const {
  std::ostringstream os;
  os << "MaxPool2d(kernel_size=" << pair_str(k_) << ", stride=" << pair_str(opt_.stride)
     << ", padding=" << pair_str(opt_.padding) << ", dilation=" << pair_str(opt_.dilation) << ")";
  return os.str();
}

template <typename T>
Shape MaxPool2d<T>::output_shape(const Shape& in) const {
  return pooled(*this, in, k_, opt_);
}

namespace {
// The 2x2 / stride 2 / no padding window of the CNNs, which the fast kernels serve.
bool is_2x2(Pair k, const Pool2dOptions& o) {
  return k == Pair(2) && o.stride == Pair(2) && o.padding == Pair(0) && o.dilation == Pair(1);
}
MaxPoolGeom max_geom(const Shape& in, const Shape& out, Pair k, const Pool2dOptions& o) {
  return {in[2],      in[3],      out[2],      out[3],      k.h,          k.w,
          o.stride.h, o.stride.w, o.padding.h, o.padding.w, o.dilation.h, o.dilation.w};
}
}  // namespace

template <typename T>
const Tensor<T>& MaxPool2d<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(output_shape(x.shape()));
  in_shape_ = x.shape();
  argmax_.resize(static_cast<size_t>(y_.numel()));
  const int64_t P = y_.dim(0) * y_.dim(1);
  if (is_2x2(k_, opt_))
    maxpool2x2_forward<T>(y_.data(), argmax_.data(), x.data(), P, x.dim(2), x.dim(3));
  else
    ref::maxpool2d_forward<T>(y_.data(), argmax_.data(), x.data(), P,
                              max_geom(x.shape(), y_.shape(), k_, opt_));
  return y_;
}

template <typename T>
const Tensor<T>& MaxPool2d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(in_shape_);
  const int64_t P = y_.dim(0) * y_.dim(1);
  if (is_2x2(k_, opt_))
    maxpool2x2_backward<T>(dx_.data(), dy.data(), argmax_.data(), P, in_shape_[2], in_shape_[3]);
  else
    ref::maxpool2d_backward<T>(dx_.data(), dy.data(), argmax_.data(), P,
                               max_geom(in_shape_, y_.shape(), k_, opt_));
  return dx_;
}

// ---------------------------------------------------------------- AvgPool2d

template <typename T>
AvgPool2d<T>::AvgPool2d(Pair k, Pool2dOptions opt) : k_(k), opt_(checked("AvgPool2d", k, opt)) {
  if (!(opt_.dilation == Pair(1))) fail(name(), ": AvgPool2d has no dilation");
}

template <typename T>
std::string AvgPool2d<T>::name() const {
  std::ostringstream os;
  os << "AvgPool2d(kernel_size=" << pair_str(k_) << ", stride=" << pair_str(opt_.stride)
     << ", padding=" << pair_str(opt_.padding);
  if (!opt_.count_include_pad) os << ", count_include_pad=False";
  os << ")";
  return os.str();
}

template <typename T>
Shape AvgPool2d<T>::output_shape(const Shape& in) const {
  return pooled(*this, in, k_, opt_);
}

namespace {
// One AvgPool2d window: rows [h0, h1), columns [w0, w1) clipped to the input,
// and the divisor.
struct Window {
  int64_t h0, h1, w0, w1;
  double div;
};
Window avg_window(int64_t oh, int64_t ow, int64_t H, int64_t W, Pair k, const Pool2dOptions& o) {
  int64_t h0 = oh * o.stride.h - o.padding.h, w0 = ow * o.stride.w - o.padding.w;
  int64_t h1 = std::min(h0 + k.h, H + o.padding.h), w1 = std::min(w0 + k.w, W + o.padding.w);
  const int64_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<int64_t>(h0, 0), w0 = std::max<int64_t>(w0, 0);
  h1 = std::min(h1, H), w1 = std::min(w1, W);
  return {h0, h1, w0, w1,
          static_cast<double>(o.count_include_pad ? padded : (h1 - h0) * (w1 - w0))};
}
}  // namespace

namespace {
// The oneDNN path's geometry of an average pool over `in` to `out` (NCHW).
detail::AvgPoolGeom avg_geom(const Shape& in, const Shape& out, Pair k, Pair stride, Pair pad,
                             bool count_include_pad) {
  return {in[0], in[1],    in[2],    in[3], out[2], out[3],           k.h,
          k.w,   stride.h, stride.w, pad.h, pad.w,  count_include_pad};
}
}  // namespace

template <typename T>
const Tensor<T>& AvgPool2d<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(output_shape(x.shape()));
  in_shape_ = x.shape();
  const int64_t P = y_.dim(0) * y_.dim(1), H = x.dim(2), W = x.dim(3), OH = y_.dim(2),
                OW = y_.dim(3);
  if constexpr (std::is_same_v<T, float>) {
    if (P == 0) return y_;
    if (!cache_) cache_.reset(detail::new_avgpool_cache());
    const detail::AvgPoolGeom g =
        avg_geom(x.shape(), y_.shape(), k_, opt_.stride, opt_.padding, opt_.count_include_pad);
    if (detail::avgpool2d_forward(cache_.get(), g, x.data(), y_.data())) return y_;
  }
  const T* xs = x.data();
  T* ys = y_.data();
#pragma omp parallel for schedule(static) if (y_.numel() > 16384)
  for (int64_t pl = 0; pl < P; ++pl) {
    const T* xp = xs + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Window wd = avg_window(oh, ow, H, W, k_, opt_);
        T s = 0;
        for (int64_t h = wd.h0; h < wd.h1; ++h)
          for (int64_t w = wd.w0; w < wd.w1; ++w) s += xp[h * W + w];
        ys[(pl * OH + oh) * OW + ow] = s / static_cast<T>(wd.div);
      }
  }
  return y_;
}

template <typename T>
const Tensor<T>& AvgPool2d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(in_shape_);
  const int64_t P = y_.dim(0) * y_.dim(1), H = in_shape_[2], W = in_shape_[3], OH = y_.dim(2),
                OW = y_.dim(3);
  if constexpr (std::is_same_v<T, float>) {
    if (P == 0) return dx_;
    const detail::AvgPoolGeom g =
        avg_geom(in_shape_, y_.shape(), k_, opt_.stride, opt_.padding, opt_.count_include_pad);
    if (detail::avgpool2d_backward(cache_.get(), g, dy.data(), dx_.data())) return dx_;
  }
  dx_.fill(T(0));
  const T* d = dy.data();
  T* dx = dx_.data();
#pragma omp parallel for schedule(static) if (y_.numel() > 16384)
  for (int64_t pl = 0; pl < P; ++pl) {
    T* dp = dx + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Window wd = avg_window(oh, ow, H, W, k_, opt_);
        const T g = d[(pl * OH + oh) * OW + ow] / static_cast<T>(wd.div);
        for (int64_t h = wd.h0; h < wd.h1; ++h)
          for (int64_t w = wd.w0; w < wd.w1; ++w) dp[h * W + w] += g;
      }
  }
  return dx_;
}

// ---------------------------------------------------------------- AdaptiveAvgPool2d

template <typename T>
AdaptiveAvgPool2d<T>::AdaptiveAvgPool2d(Pair out) : out_(out) {
  if (out.h <= 0 || out.w <= 0)
    fail("AdaptiveAvgPool2d: output_size must be positive, got ", pair_str(out));
}

template <typename T>
std::string AdaptiveAvgPool2d<T>::name() const {
  return "AdaptiveAvgPool2d(output_size=" + pair_str(out_) + ")";
}

template <typename T>
Shape AdaptiveAvgPool2d<T>::output_shape(const Shape& in) const {
  check_4d(*this, in);
  return {in[0], in[1], out_.h, out_.w};
}

namespace {
int64_t start_index(int64_t i, int64_t out, int64_t in) {
  return (i * in) / out;
}
int64_t end_index(int64_t i, int64_t out, int64_t in) {
  return ((i + 1) * in + out - 1) / out;
}
}  // namespace

namespace {
// Whether AdaptiveAvgPool2d's windows tile (H, W): then they are AvgPool2d's
// with kernel = stride = (H / OH, W / OW), the oneDNN path's geometry.
bool tiles(const Shape& in, Pair out) {
  return in[2] >= out.h && in[3] >= out.w && in[2] % out.h == 0 && in[3] % out.w == 0;
}
detail::AvgPoolGeom tile_geom(const Shape& in, const Shape& y, Pair out) {
  const Pair k{in[2] / out.h, in[3] / out.w};
  return avg_geom(in, y, k, k, Pair{0}, true);
}
}  // namespace

template <typename T>
const Tensor<T>& AdaptiveAvgPool2d<T>::forward_impl(const Tensor<T>& x) {
  y_.resize(output_shape(x.shape()));
  in_shape_ = x.shape();
  const int64_t P = y_.dim(0) * y_.dim(1), H = x.dim(2), W = x.dim(3), OH = out_.h, OW = out_.w;
  if constexpr (std::is_same_v<T, float>) {
    if (P == 0) return y_;
    if (!cache_) cache_.reset(detail::new_avgpool_cache());
    if (tiles(x.shape(), out_) &&
        detail::avgpool2d_forward(cache_.get(), tile_geom(x.shape(), y_.shape(), out_), x.data(),
                                  y_.data()))
      return y_;
  }
  const T* xs = x.data();
  T* ys = y_.data();
#pragma omp parallel for schedule(static) if (x.numel() > 65536)
  for (int64_t pl = 0; pl < P; ++pl) {
    const T* xp = xs + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t h0 = start_index(oh, OH, H), h1 = end_index(oh, OH, H);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = start_index(ow, OW, W), w1 = end_index(ow, OW, W);
        T s = 0;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) s += xp[h * W + w];
        const int64_t cnt = (h1 - h0) * (w1 - w0);
        ys[(pl * OH + oh) * OW + ow] = cnt ? s / static_cast<T>(cnt) : T(NAN);
      }
    }
  }
  return y_;
}

template <typename T>
const Tensor<T>& AdaptiveAvgPool2d<T>::backward(const Tensor<T>& dy) {
  check_same_shape(*this, "output gradient", dy.shape(), y_.shape());
  if (!this->input_grad_) {
    dx_.resize({0});
    return dx_;
  }
  dx_.resize(in_shape_);
  const int64_t P = y_.dim(0) * y_.dim(1), H = in_shape_[2], W = in_shape_[3], OH = out_.h,
                OW = out_.w;
  if constexpr (std::is_same_v<T, float>) {
    if (P == 0) return dx_;
    if (tiles(in_shape_, out_) &&
        detail::avgpool2d_backward(cache_.get(), tile_geom(in_shape_, y_.shape(), out_), dy.data(),
                                   dx_.data()))
      return dx_;
  }
  dx_.fill(T(0));
  const T* d = dy.data();
  T* dx = dx_.data();
#pragma omp parallel for schedule(static) if (dx_.numel() > 65536)
  for (int64_t pl = 0; pl < P; ++pl) {
    T* dp = dx + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      const int64_t h0 = start_index(oh, OH, H), h1 = end_index(oh, OH, H);
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t w0 = start_index(ow, OW, W), w1 = end_index(ow, OW, W);
        const T g = d[(pl * OH + oh) * OW + ow] / static_cast<T>((h1 - h0) * (w1 - w0));
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) dp[h * W + w] += g;
      }
    }
  }
  return dx_;
}

template class MaxPool2d<float>;
template class MaxPool2d<double>;
template class AvgPool2d<float>;
template class AvgPool2d<double>;
template class AdaptiveAvgPool2d<float>;
template class AdaptiveAvgPool2d<double>;

}  // namespace normlab
