// The state_dict entries of the BatchNorm-shaped layers (BatchNorm1d/2d, the
// BatchNorm variants, InstanceNorm1d/2d, SyncBatchNorm), in PyTorch's
// _NormBase order: weight, bias (affine), then running_mean, running_var,
// num_batches_tracked (tracking running statistics).
#pragma once
#include <cstdint>
#include <vector>

#include "normlab/layer.hpp"

namespace normlab {

template <typename T, typename L>
std::vector<StateEntry<T>> norm_state(L& l, bool affine, bool track_running_stats) {
  std::vector<StateEntry<T>> s;
  if (affine) {
    s.push_back({"weight", &l.weight, &l.dweight});
    s.push_back({"bias", &l.bias, &l.dbias});
  }
  if (track_running_stats) {
    s.push_back({"running_mean", &l.running_mean});
    s.push_back({"running_var", &l.running_var});
    s.push_back({"num_batches_tracked", nullptr, nullptr, &l.num_batches_tracked});
  }
  return s;
}

// Those layers' tensors at construction, as PyTorch's _NormBase makes them:
// weight 1 and bias 0 (and their gradients) for C channels when affine,
// running_mean 0 and running_var 1 when tracking running statistics.
template <typename T, typename L>
void init_norm_tensors(L& l, int64_t C, bool affine, bool track_running_stats) {
  if (affine) {
    l.weight = Tensor<T>({C}, T(1));
    l.bias = Tensor<T>({C}, T(0));
    l.dweight = Tensor<T>({C});
    l.dbias = Tensor<T>({C});
  }
  if (track_running_stats) {
    l.running_mean = Tensor<T>({C}, T(0));
    l.running_var = Tensor<T>({C}, T(1));
  }
}

}  // namespace normlab
