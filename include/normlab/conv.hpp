// nn.Conv2d with PyTorch's arguments, defaults, init and state_dict names.
// float runs on oneDNN's convolution primitives (forward, backward-data,
// backward-weights), created once per input shape and reused; double runs on
// plain loops (the reference twin, used by gradient checks).
#pragma once
#include <memory>

#include "normlab/layer.hpp"
#include "normlab/rng.hpp"

namespace normlab {

namespace detail {
struct ConvCache;  // oneDNN primitives per input shape (src/kernels/conv2d_onednn.cpp)
struct ConvCacheDeleter {
  void operator()(ConvCache* c) const;
};
}  // namespace detail

// Height and width of a Conv2d's (or pool's) kernel_size, stride, padding and
// dilation, as PyTorch's int-or-pair arguments.
struct Pair {
  int64_t h = 1, w = 1;
  Pair() = default;
  Pair(int64_t both) : h(both), w(both) {}  // NOLINT: an int means (k, k), as in PyTorch
  Pair(int64_t h_, int64_t w_) : h(h_), w(w_) {}
  bool operator==(const Pair&) const = default;
};

struct Conv2dOptions {
  Pair stride = 1;
  Pair padding = 0;  // zeros on each side (padding_mode='zeros')
  Pair dilation = 1;
  int64_t groups = 1;
  bool bias = true;
};

// torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
// dilation=1, groups=1, bias=True). Input (N, C_in, H, W), output
// (N, C_out, H_out, W_out) with H_out = floor((H + 2 p - d (k - 1) - 1) / s) + 1.
// State: weight (C_out, C_in / groups, kH, kW), then bias (C_out) if bias.
// Init (with an Rng): weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
// kaiming_uniform_(a=sqrt(5))), bias the same bound, fan_in = C_in/groups*kH*kW.
// Errors (normlab::Error naming the layer and numbers): channels or kernel,
// stride, dilation not positive, padding negative, C_in or C_out not divisible
// by groups; an input not 4-D, with another C_in, or smaller (padded) than the
// dilated kernel. Unbatched 3-D inputs, padding='same' and padding modes other
// than zeros are not supported.
template <typename T>
class Conv2d : public Layer<T> {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, Pair kernel_size, Conv2dOptions opt = {});
  Conv2d(int64_t in_channels, int64_t out_channels, Pair kernel_size, Conv2dOptions opt, Rng& rng);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> weight, bias, dweight, dbias;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  int64_t in_, out_;
  Pair k_;
  Conv2dOptions opt_;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> y_, dx_;
  std::unique_ptr<detail::ConvCache, detail::ConvCacheDeleter> cache_;  // float only
};

}  // namespace normlab
