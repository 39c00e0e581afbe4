// Average pooling in float through oneDNN (pool2d_onednn.cpp), behind
// AvgPool2d and AdaptiveAvgPool2d (include/normlab/pool.hpp) where oneDNN has
// JIT kernels for it; double, the adaptive windows that do not tile the input
// and CPUs without those kernels run the layers' plain loops.
#pragma once
#include <cstdint>

#include "normlab/pool.hpp"

namespace normlab::detail {

// One call's geometry: input (N, C, H, W), output (OH, OW), kernel, stride,
// padding (each side), and PyTorch's count_include_pad.
struct AvgPoolGeom {
  int64_t N, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW;
  bool count_include_pad;
};

AvgPoolCache* new_avgpool_cache();  // owned by a unique_ptr<AvgPoolCache, AvgPoolCacheDeleter>

// Both run only where oneDNN has JIT kernels for the geometry (the primitives
// are made on first use) and return whether they ran; false leaves the
// output untouched for the layers' loops, which are faster there.
// y (N, C, OH, OW): each window's mean (N * C > 0).
bool avgpool2d_forward(AvgPoolCache* cache, const AvgPoolGeom& g, const float* x, float* y);
// dx (N, C, H, W), overwritten: each dy spread evenly over its window's inputs.
bool avgpool2d_backward(AvgPoolCache* cache, const AvgPoolGeom& g, const float* dy, float* dx);

}  // namespace normlab::detail
