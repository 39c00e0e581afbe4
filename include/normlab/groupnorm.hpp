// GroupNorm and InstanceNorm1d, with PyTorch's semantics, defaults and
// state_dict names. Both run on the GroupNorm kernels over an (N, C, S) view
// (normlab/groupnorm_kernels.hpp); InstanceNorm1d is GroupNorm with one group
// per channel, plus optional running statistics.
#pragma once
#include <optional>

#include "normlab/layer.hpp"

namespace normlab {

struct GroupNormOptions {
  double eps = 1e-5;
  bool affine = true;
};

// torch.nn.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True).
// Input (N, C, *): any number of trailing dims, none included ((N, C)).
// Statistics per (sample, group) over C / G channels x the trailing size,
// biased variance, in training and eval alike. The affine map is per channel.
// State: weight (ones) and bias (zeros), (C), if affine.
// Errors (normlab::Error naming the layer and the numbers): G or C not
// positive, C not a multiple of G, eps < 0 or NaN; an input of rank < 2 or
// whose dim 1 is not C. (PyTorch without affine accepts any C divisible by G;
// normlab asks for the C it was built with.)
template <typename T>
class GroupNorm : public Layer<T> {
 public:
  GroupNorm(int64_t num_groups, int64_t num_channels, GroupNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;
  int64_t num_groups() const { return G_; }

  Tensor<T> weight, bias, dweight, dbias;

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t G_, C_;
  GroupNormOptions opt_;
  const Tensor<T>* x_ = nullptr;
  bool exact_ = false;  // the statistics overflowed in the fast kernel: ref:: was used
  Tensor<T> y_, dx_, mean_, rstd_;
};

struct InstanceNormOptions {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  // none: PyTorch passes 0.0, the stats never move
  bool affine = false;
  bool track_running_stats = false;
};

// torch.nn.InstanceNorm1d(num_features, eps=1e-5, momentum=0.1, affine=False,
// track_running_stats=False). Input (N, C, L), or (C, L) taken as one sample.
// Statistics per (sample, channel) over L, biased variance, whenever training
// or not tracking; eval with track_running_stats uses the running statistics.
// Training with tracking updates, as F.instance_norm does (momentum m; none
// means 0, no update):
//   running_mean = (1 - m) running_mean + m * mean_n(mean[n, c])
//   running_var  = (1 - m) running_var  + m * mean_n(var[n, c] * L / (L - 1));
// num_batches_tracked stays 0 (PyTorch's _InstanceNorm never counts).
// An input whose channels differ from num_features: an Error with affine or
// tracking (PyTorch: ValueError / RuntimeError), else accepted (PyTorch warns).
// Errors: num_features <= 0, eps < 0 or NaN, non-finite momentum; rank not 2
// or 3; L = 1 when normalizing with instance statistics (PyTorch: "Expected
// more than 1 spatial element when training").
// State: weight, bias (C) if affine; running_mean, running_var (C),
// num_batches_tracked if track_running_stats.
template <typename T>
class InstanceNorm1d : public Layer<T> {
 public:
  explicit InstanceNorm1d(int64_t num_features, InstanceNormOptions opt = {});
  std::string name() const override;
  Shape output_shape(const Shape& in) const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  std::vector<StateEntry<T>> state() override;

  Tensor<T> weight, bias, dweight, dbias;
  Tensor<T> running_mean, running_var;
  int64_t num_batches_tracked = 0;

 protected:
  // InstanceNorm2d (normlab/norm2d.hpp): the same layer on (N,C,H,W) or
  // (C,H,W), spatial_dims = 2; statistics over H*W per (sample, channel).
  InstanceNorm1d(int64_t num_features, InstanceNormOptions opt, int spatial_dims);
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  void check_input(const Shape& in) const;
  int64_t C_;
  InstanceNormOptions opt_;
  int spatial_dims_ = 1;  // 1: (C,L) or (N,C,L); 2: (C,H,W) or (N,C,H,W)
  const Tensor<T>* x_ = nullptr;
  int64_t N_ = 0, Cx_ = 0, L_ = 0;  // the last input as (N, C, L)
  bool used_instance_stats_ = true;
  bool exact_ = false;
  bool warned_ = false;  // the channel-mismatch warning was printed
  Tensor<T> y_, dx_, mean_, rstd_, var_;
};

}  // namespace normlab
