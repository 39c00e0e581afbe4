// 2-D pooling with PyTorch's arguments, defaults and semantics: MaxPool2d,
// AvgPool2d, AdaptiveAvgPool2d. Input (N, C, H, W); no state. The kernels
// run parallel over the N*C planes, the same code for float and double:
// MaxPool2d's 2x2 / stride 2 / no padding (the CNNs') through fast vectorized
// kernels, every other window through plain loops (include/normlab/pool_kernels.hpp);
// AvgPool2d, and AdaptiveAvgPool2d where its windows tile the input (H and W
// multiples of the output size, 1x1 included), in float through oneDNN's
// pooling primitives (src/kernels/pool2d_onednn.cpp) where oneDNN has JIT
// kernels for NCHW (AVX-512), otherwise and in double through plain loops
// (src/nn/pool2d.cpp).
#pragma once
#include <memory>

#include "normlab/conv.hpp"

namespace normlab {

namespace detail {
struct AvgPoolCache;  // oneDNN pooling primitives per input shape (src/kernels/pool2d_onednn.cpp)
struct AvgPoolCacheDeleter {
  void operator()(AvgPoolCache* c) const;
};
}  // namespace detail

struct Pool2dOptions {
  Pair stride = 0;  // 0: the kernel size (PyTorch's stride=None)
  Pair padding = 0;
  Pair dilation = 1;              // MaxPool2d only
  bool count_include_pad = true;  // AvgPool2d only
};

// torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1):
// the largest value of each window, padding counts as -inf; a NaN in a window
// is its maximum (as PyTorch). backward routes dy to the (first) argmax.
// Errors: kernel, stride, dilation not positive, padding negative or more than
// half the kernel (PyTorch's rule); an input not 4-D or whose output would be
// empty. ceil_mode and return_indices are not supported.
template <typename T>
class MaxPool2d : public Layer<T> {
 public:
  explicit MaxPool2d(Pair kernel_size, Pool2dOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Pair k_;
  Pool2dOptions opt_;
  Shape in_shape_;
  Tensor<T> y_, dx_;
  std::vector<int32_t> argmax_;  // index in the input plane of each output's maximum
};

// torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
// count_include_pad=True): the mean of each window; with count_include_pad the
// divisor is the window size including padding, else the values inside the input.
// Errors as MaxPool2d. ceil_mode and divisor_override are not supported.
template <typename T>
class AvgPool2d : public Layer<T> {
 public:
  explicit AvgPool2d(Pair kernel_size, Pool2dOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Pair k_;
  Pool2dOptions opt_;
  Shape in_shape_;
  Tensor<T> y_, dx_;
  std::unique_ptr<detail::AvgPoolCache, detail::AvgPoolCacheDeleter> cache_;  // float only
};

// torch.nn.AdaptiveAvgPool2d(output_size): output cell (i, j) is the mean of
// rows floor(i H / OH) .. ceil((i + 1) H / OH) - 1 and likewise columns.
// Errors: an output size not positive; an input not 4-D.
template <typename T>
class AdaptiveAvgPool2d : public Layer<T> {
 public:
  explicit AdaptiveAvgPool2d(Pair output_size);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Pair out_;
  Shape in_shape_;
  Tensor<T> y_, dx_;
  std::unique_ptr<detail::AvgPoolCache, detail::AvgPoolCacheDeleter> cache_;  // float only
};

}  // namespace normlab
