// MaxPool2d's 2x2 / stride 2 / no padding kernels (include/normlab/pool_kernels.hpp):
// the pooling of the CNN preset. Each output row reads two input rows once and
// is one `omp simd` loop (the window's four comparisons written out, with
// selects instead of branches); the backward zeroes one plane and adds dy at
// the argmaxes while the plane is in L1 (one pass over dx instead of a
// zero-fill of the whole batch and a scatter). Tested against ref::maxpool2d_*
// (tests/test_pool_kernels.cpp). Compiled once per ISA level (kernels/isa.hpp).
#include <algorithm>

#include "kernels/isa.hpp"
#include "normlab/pool_kernels.hpp"

namespace normlab::NORMLAB_ISA_NAMESPACE {

namespace {
// Input elements below which one thread does it all (a 128 x 32 x 26 x 26
// batch is 11 MB: well worth two threads).
constexpr int64_t kParallelMin = 1 << 15;
}  // namespace

template <typename T>
void maxpool2x2_forward(T* y, int32_t* argmax, const T* x, int64_t P, int64_t H, int64_t W) {
  const int64_t OH = H / 2, OW = W / 2;
  if (P * OH * OW == 0) return;
  const int32_t Wi = static_cast<int32_t>(W);
#pragma omp parallel for schedule(static) if (P * H * W >= kParallelMin)
  for (int64_t pl = 0; pl < P; ++pl)
    for (int64_t oh = 0; oh < OH; ++oh) {
      const T* r0 = x + (pl * H + 2 * oh) * W;
      const T* r1 = r0 + W;
      T* yr = y + (pl * OH + oh) * OW;
      int32_t* ar = argmax + (pl * OH + oh) * OW;
      const int32_t base = static_cast<int32_t>(2 * oh * W);
#pragma omp simd
      for (int64_t j = 0; j < OW; ++j) {
        // Scan order (0,0), (0,1), (1,0), (1,1); the first value always
        // enters (it is > -inf, or NaN, or -inf at the initial index).
        T m = r0[2 * j];
        int32_t k = 0;
        T v = r0[2 * j + 1];
        bool t = v > m || v != v;
        m = t ? v : m;
        k = t ? 1 : k;
        v = r1[2 * j];
        t = v > m || v != v;
        m = t ? v : m;
        k = t ? Wi : k;
        v = r1[2 * j + 1];
        t = v > m || v != v;
        m = t ? v : m;
        k = t ? Wi + 1 : k;
        yr[j] = m;
        ar[j] = base + 2 * static_cast<int32_t>(j) + k;
      }
    }
}

template <typename T>
void maxpool2x2_backward(T* dx, const T* dy, const int32_t* argmax, int64_t P, int64_t H,
                         int64_t W) {
  const int64_t HW = H * W, OHW = (H / 2) * (W / 2);
#pragma omp parallel for schedule(static) if (P * HW >= kParallelMin)
  for (int64_t pl = 0; pl < P; ++pl) {
    T* dp = dx + pl * HW;
    const T* g = dy + pl * OHW;
    const int32_t* am = argmax + pl * OHW;
    std::fill(dp, dp + HW, T(0));
    for (int64_t i = 0; i < OHW; ++i) dp[am[i]] += g[i];
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

NORMLAB_KERNEL(maxpool2x2_forward, float, float*, int32_t*, const float*, int64_t, int64_t, int64_t)
NORMLAB_KERNEL(maxpool2x2_forward, double, double*, int32_t*, const double*, int64_t, int64_t,
               int64_t)
NORMLAB_KERNEL(maxpool2x2_backward, float, float*, const float*, const int32_t*, int64_t, int64_t,
               int64_t)
NORMLAB_KERNEL(maxpool2x2_backward, double, double*, const double*, const int32_t*, int64_t,
               int64_t, int64_t)
