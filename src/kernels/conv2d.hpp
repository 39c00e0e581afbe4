// Convolution kernels behind Conv2d (include/normlab/conv.hpp): float through
// oneDNN (conv2d_onednn.cpp), double through plain loops (conv2d_ref.cpp).
#pragma once
#include <cstdint>
#include <memory>

#include "normlab/conv.hpp"

namespace normlab::detail {

// The full geometry of one Conv2d call; NCHW activations, OIHW weights
// ((G*O/G), C/G, KH, KW as PyTorch stores them).
struct ConvGeom {
  int64_t N, C, H, W;  // input
  int64_t O, KH, KW;   // output channels, kernel
  int64_t SH, SW, PH, PW, DH, DW, G;
  int64_t OH, OW;  // output
  bool operator==(const ConvGeom&) const = default;
};

ConvCache* new_conv_cache();  // owned by a unique_ptr<ConvCache, ConvCacheDeleter>

// y = conv(x, w) + b (b may be null).
template <typename T>
void conv2d_forward(ConvCache* cache, const ConvGeom& g, const T* x, const T* w, const T* b, T* y);
// dx = conv^T(dy, w) (dx null: skipped); dw += d/dw, db += sum dy (db may be null).
template <typename T>
void conv2d_backward(ConvCache* cache, const ConvGeom& g, const T* dy, const T* x, const T* w,
                     T* dx, T* dw, T* db);

}  // namespace normlab::detail
