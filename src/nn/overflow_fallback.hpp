// The default (fast) norm kernels keep their moments in T: for float, the sum of
// squared deviations overflows once the spread passes ~1e19 / sqrt(count), and
// the statistics come out as rstd = 0 or a non-finite mean (docs/numerics.md).
// The layers then redo the batch with the reference kernels, which accumulate
// in double and are right up to float's largest values, and use their backward.
#pragma once
#include <cmath>

#include "normlab/tensor.hpp"

namespace normlab {

// True unless every group has a finite mean and a finite rstd > 0.
template <typename T>
bool statistics_overflowed(const Tensor<T>& mean, const Tensor<T>& rstd) {
  for (int64_t i = 0; i < mean.numel(); ++i)
    if (!std::isfinite(mean[i]) || !(rstd[i] > 0) || !std::isfinite(rstd[i])) return true;
  return false;
}

}  // namespace normlab
