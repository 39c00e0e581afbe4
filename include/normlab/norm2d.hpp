// The norms on 4-D (N, C, H, W) input under PyTorch's 2d names (issue 11).
// Both are their 1d layers with PyTorch's 2d shape rules: the same kernels run
// on the (N, C, H*W) view of the input (contiguous NCHW), so the statistics,
// options, state_dict keys and backward are BatchNorm1d's / InstanceNorm1d's
// with L = H*W (docs/model-spec.md, docs/derivations.md).
#pragma once
#include "normlab/groupnorm.hpp"
#include "normlab/layers.hpp"

namespace normlab {

// torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
// track_running_stats=True). Input (N, C, H, W) only; statistics per channel
// over N*H*W values (biased variance to normalize, unbiased into
// running_var). State: weight, bias (C) if affine; running_mean, running_var
// (C), num_batches_tracked if tracking. Errors (normlab::Error naming the
// layer and the numbers): num_features <= 0, eps < 0 or NaN, non-finite
// momentum; an input that is not 4-D (PyTorch: "expected 4D input (got 3D
// input)") or whose dim 1 is not C; one value per channel (N*H*W = 1) when
// normalizing with batch statistics.
template <typename T>
class BatchNorm2d : public BatchNorm1d<T> {
 public:
  explicit BatchNorm2d(int64_t num_features, BatchNormOptions opt = {})
      : BatchNorm1d<T>(num_features, opt, 2) {}
};

// torch.nn.InstanceNorm2d(num_features, eps=1e-5, momentum=0.1, affine=False,
// track_running_stats=False). Input (N, C, H, W), or (C, H, W) as one sample.
// Statistics per (sample, channel) over H*W; running statistics, eval and
// errors as InstanceNorm1d's with L = H*W (PyTorch: "expected 3D or 4D input
// (got 2D input)"; H*W = 1 with instance statistics is refused).
template <typename T>
class InstanceNorm2d : public InstanceNorm1d<T> {
 public:
  explicit InstanceNorm2d(int64_t num_features, InstanceNormOptions opt = {})
      : InstanceNorm1d<T>(num_features, opt, 2) {}
};

}  // namespace normlab
