// The kernels behind MaxPool2d (include/normlab/pool.hpp) on contiguous
// (P, H, W) planes (P = N * C). The fast 2x2 / stride 2 / no padding kernels
// (src/kernels/pool2d_fast.cpp, one copy per ISA level) cover the CNNs'
// pooling; the reference loops (src/kernels/pool2d_ref.cpp, any window) are
// the definition they are tested against and serve every other geometry.
// Both follow PyTorch's CPU kernel (aten/src/ATen/native/cpu/MaxPoolKernel.cpp):
// a window is scanned row by row, a value replaces the maximum if it is
// greater or NaN (so a NaN is the window's maximum, its last NaN the argmax,
// and among equal values the first wins); padding counts as -inf. The argmax
// is the index in the input plane; backward zeroes dx and adds dy at it.
#pragma once
#include <cstdint>

namespace normlab {

// y (P, H/2, W/2): the maximum of each 2x2 window at stride 2 (a last odd row
// or column is left out), argmax (P, H/2, W/2) its index in the plane.
template <typename T>
void maxpool2x2_forward(T* y, int32_t* argmax, const T* x, int64_t P, int64_t H, int64_t W);
// dx (P, H, W) = 0 + dy at each window's argmax, 0 elsewhere (overwritten).
template <typename T>
void maxpool2x2_backward(T* dx, const T* dy, const int32_t* argmax, int64_t P, int64_t H,
                         int64_t W);

// The geometry of a MaxPool2d call: input H x W, output OH x OW, kernel,
// stride, padding, dilation.
struct MaxPoolGeom {
  int64_t H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
};

namespace ref {
// y (P, OH, OW), argmax (P, OH, OW) for any window (plain loops).
template <typename T>
void maxpool2d_forward(T* y, int32_t* argmax, const T* x, int64_t P, const MaxPoolGeom& g);
// dx (P, H, W) = 0, then dx[argmax] += dy (overwritten).
template <typename T>
void maxpool2d_backward(T* dx, const T* dy, const int32_t* argmax, int64_t P, const MaxPoolGeom& g);
}  // namespace ref

}  // namespace normlab
