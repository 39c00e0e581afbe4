// The standard layers, with PyTorch's semantics, defaults and state_dict names.
#pragma once
#include <optional>

#include "normlab/layer.hpp"
#include "normlab/rng.hpp"

namespace normlab {

// y = x W^T + b. PyTorch's init: W ~ U(+-1/sqrt(in)) (kaiming_uniform, a=sqrt(5)), b likewise.
// Input (N, in) or (N, ..., in) flattened to rows. State: weight (out,in), bias (out).
template <typename T>
class Linear : public Layer<T> {
 public:
  Linear(int64_t in, int64_t out, bool bias, Rng& rng);
  // Without an Rng: weight and bias all zeros (y = 0), for a layer whose
  // parameters are loaded or set right after; the same shapes and state.
  Linear(int64_t in, int64_t out, bool bias = true);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> weight, bias, dweight, dbias;  // (out,in), (out) or empty

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  int64_t in_, out_;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> y_, dx_;
};

struct BatchNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // nullopt: cumulative moving average
  bool affine = true;
  bool track_running_stats = true;
};

// Inputs (N,C) or (N,C,L); statistics per channel over N*L values. Training
// normalizes with the biased batch variance and stores the unbiased one in
// running_var; eval uses the running statistics (or batch ones without tracking).
// State: weight, bias (C) if affine; running_mean, running_var (C),
// num_batches_tracked if tracking.
template <typename T>
class BatchNorm1d : public Layer<T> {
 public:
  explicit BatchNorm1d(int64_t C, BatchNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  // A following ReLU applied in the kernels' own sweeps (batchnorm_relu_*):
  // the same results as the unfused pair, bit for bit. Always accepted.
  bool fuse_relu(bool on) override;

  Tensor<T> weight, bias, dweight, dbias;
  Tensor<T> running_mean, running_var;
  int64_t num_batches_tracked = 0;

 protected:
  // BatchNorm2d (normlab/norm2d.hpp): the same layer on (N,C,H,W) only,
  // spatial_dims = 2; statistics over N*H*W per channel.
  BatchNorm1d(int64_t C, BatchNormOptions opt, int spatial_dims);
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;  // output_shape's checks, without the copy
  int64_t C_;
  BatchNormOptions opt_;
  int spatial_dims_ = 1;  // 1: BatchNorm1d's (N,C) or (N,C,L); 2: BatchNorm2d's (N,C,H,W)
  const Tensor<T>* x_ = nullptr;
  bool used_batch_stats_ = true;
  bool exact_ = false;  // the batch statistics overflowed in the fast kernel: ref:: was used
  bool relu_ = false;   // a following ReLU applied here (fuse_relu)
  Tensor<T> y_, dx_, mean_, rstd_, var_;
};

struct LayerNormOptions {
  double eps = 1e-5;
  bool elementwise_affine = true;
  bool bias = true;
};

// Normalizes over the trailing dims given by `normalized_shape`.
// State: weight, bias (normalized_shape) if elementwise_affine (bias only if bias).
template <typename T>
class LayerNorm : public Layer<T> {
 public:
  explicit LayerNorm(Shape normalized_shape, LayerNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> weight, bias, dweight, dbias;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;  // output_shape's checks, without the copy
  Shape normalized_shape_;
  int64_t D_;
  LayerNormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  bool exact_ = false;  // the statistics overflowed in the fast kernel: ref:: was used
  Tensor<T> y_, dx_, mean_, rstd_;
};

// Which norms torch.nn.utils.weight_norm(nn.Linear(in, out), dim) takes of the
// (out, in) weight: Rows = dim 0 (one per output row, weight_g (out, 1)),
// Columns = dim 1 (one per input column, weight_g (1, in)), Whole = dim None
// (one for the whole matrix, weight_g ()).
enum class WeightNormDim { Rows, Whole, Columns };

// PyTorch's dim argument for a 2-D weight, as weight_norm reads it: 0 and -2
// are Rows, 1 is Columns, None is Whole, and -1 is Whole too (weight_norm
// maps None to -1 and takes -1 as "the whole tensor", not as the last dim;
// PyTorch 2.15 still does). Other values throw normlab::Error.
WeightNormDim weight_norm_dim(std::optional<int64_t> torch_dim);

// torch.nn.utils.weight_norm(nn.Linear(in, out), dim): w = g * v / ||v||.
// v starts as Linear's weight and g as its norm, so the initial w equals Linear's.
// State: bias (out), weight_g ((out,1), (1,in) or ()), weight_v (out,in) — PyTorch's order.
template <typename T>
class WeightNormLinear : public Layer<T> {
 public:
  WeightNormLinear(int64_t in, int64_t out, bool bias, WeightNormDim dim, Rng& rng);
  // Without an Rng: bias 0, weight_v all ones and weight_g its norms (sqrt(in)
  // per row, sqrt(out) per column, sqrt(in * out) whole), so w = v = all ones:
  // finite and deterministic (an all-zero v would make w = 0/0). For a layer
  // whose parameters are loaded or set right after; the same shapes and state.
  WeightNormLinear(int64_t in, int64_t out, bool bias = true,
                   WeightNormDim dim = WeightNormDim::Rows);
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  bool fuse_relu(bool on) override;  // with per-row norms only
  WeightNormDim dim() const { return dim_; }

  Tensor<T> weight_g, weight_v, bias, dweight_g, dweight_v, dbias;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void init_g();  // weight_g = the norms of weight_v
  int64_t in_, out_;
  WeightNormDim dim_;
  bool relu_ = false;  // a following ReLU applied here (fuse_relu)
  // Per-row norms whose g / ||v|| is not a usable T (overflow, underflow):
  // this batch went through w, as the other dims do.
  bool unfused_ = false;
  const Tensor<T>* x_ = nullptr;
  Tensor<T> norm_, y_, dx_;
  Tensor<T> z_, scale_, dys_, dot_;  // per-row norms: x v^T (N,O), g/||v|| (O), scratch
  Tensor<T> w_, dw_;                 // other norms (or unfused_): w and its gradient
};

// With set_fused(true) the layer before applies this ReLU (Layer::fuse_relu):
// forward returns its input and backward its output gradient, unchanged.
template <typename T>
class ReLU : public Layer<T> {
 public:
  std::string name() const override { return "ReLU"; }
  Shape output_shape(const Shape& in) const override { return in; }
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  void set_fused(bool on) { fused_ = on; }
  bool fused() const { return fused_; }

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  bool fused_ = false;
  Tensor<T> y_, dx_;
};

// (N, d1, d2, ...) -> (N, d1*d2*...), like nn.Flatten().
template <typename T>
class Flatten : public Layer<T> {
 public:
  std::string name() const override { return "Flatten"; }
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  Shape in_shape_;
  Tensor<T> y_, dx_;
};

}  // namespace normlab
#include "normlab/bn_family.hpp"  // BatchNorm variants: mean-only, Batch Renorm, Ghost
#include "normlab/conv.hpp"       // Conv2d and pooling (issue 11)
#include "normlab/groupnorm.hpp"
#include "normlab/norm2d.hpp"  // BatchNorm2d, InstanceNorm2d (issue 11)
#include "normlab/pool.hpp"
#include "normlab/rmsnorm.hpp"  // RMSNorm (issue 10)
#include "normlab/sigmoid.hpp"  // nn.Sigmoid (the bn-paper study)
#include "normlab/syncbn.hpp"   // SyncBatchNorm over a Communicator (issue 13)
#include "normlab/unflatten.hpp"
