// Shape checks shared by the layers; each throws an Error naming the layer.
// They take the layer itself and build its name only to report an error, so a
// check in a training step allocates nothing.
#pragma once
#include <algorithm>
#include <string>

#include "normlab/error.hpp"
#include "normlab/tensor.hpp"

namespace normlab {

// Rows of an input (*, D) whose last dim must be D: the product of the others.
template <typename L>
int64_t rows_with_last_dim(const L& layer, const Shape& in, int64_t D) {
  if (in.empty() || in.back() != D)
    fail(layer.name(), ": expected input with last dimension ", D, ", got shape ", shape_str(in));
  return D == 0 ? 0 : shape_numel(in) / D;
}

// An input whose trailing dims must equal `normalized` (LayerNorm, RMSNorm).
template <typename L>
void check_trailing_shape(const L& layer, const Shape& in, const Shape& normalized) {
  const size_t k = normalized.size();
  if (in.size() < k || !std::equal(normalized.begin(), normalized.end(), in.end() - k))
    fail(layer.name(), ": expected input ending in ", shape_str(normalized), ", got shape ",
         shape_str(in));
}

template <typename L>
void check_same_shape(const L& layer, const char* what, const Shape& got, const Shape& want) {
  if (got != want)
    fail(layer.name(), ": ", what, " has shape ", shape_str(got), ", expected ", shape_str(want));
}

// Sizes a backward's dx like the layer's input x, or empty when the layer's
// input gradient is off (the Layer contract); returns whether dx is wanted.
template <typename T>
bool size_dx(Tensor<T>& dx, const Tensor<T>& x, bool input_grad) {
  if (input_grad)
    dx.resize(x.shape());
  else
    dx.resize({0});
  return input_grad;
}

inline void check_positive(const std::string& layer, const char* what, int64_t v) {
  if (v <= 0) fail(layer, ": ", what, " must be positive, got ", v);
}

}  // namespace normlab
