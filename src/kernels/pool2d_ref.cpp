// MaxPool2d's reference loops (include/normlab/pool_kernels.hpp): PyTorch's
// CPU kernel written out, any window, parallel over the planes.
#include <algorithm>
#include <cmath>
#include <limits>

#include "normlab/pool_kernels.hpp"

namespace normlab::ref {

template <typename T>
void maxpool2d_forward(T* y, int32_t* argmax, const T* x, int64_t P, const MaxPoolGeom& g) {
  const int64_t H = g.H, W = g.W, OH = g.OH, OW = g.OW;
#pragma omp parallel for schedule(static) if (P * OH * OW > 16384)
  for (int64_t pl = 0; pl < P; ++pl) {
    const T* xp = x + pl * H * W;
    for (int64_t oh = 0; oh < OH; ++oh) {
      int64_t h0 = oh * g.SH - g.PH;
      const int64_t h1 = std::min(h0 + (g.KH - 1) * g.DH + 1, H);
      while (h0 < 0) h0 += g.DH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        int64_t w0 = ow * g.SW - g.PW;
        const int64_t w1 = std::min(w0 + (g.KW - 1) * g.DW + 1, W);
        while (w0 < 0) w0 += g.DW;
        int64_t best = h0 * W + w0;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t h = h0; h < h1; h += g.DH)
          for (int64_t w = w0; w < w1; w += g.DW) {
            const T v = xp[h * W + w];
            if (v > m || std::isnan(v)) {
              m = v;
              best = h * W + w;
            }
          }
        const int64_t i = (pl * OH + oh) * OW + ow;
        y[i] = m;
        argmax[i] = static_cast<int32_t>(best);
      }
    }
  }
}

template <typename T>
void maxpool2d_backward(T* dx, const T* dy, const int32_t* argmax, int64_t P,
                        const MaxPoolGeom& g) {
  const int64_t HW = g.H * g.W, OHW = g.OH * g.OW;
  std::fill(dx, dx + P * HW, T(0));
#pragma omp parallel for schedule(static) if (P * OHW > 16384)
  for (int64_t pl = 0; pl < P; ++pl)
    for (int64_t i = 0; i < OHW; ++i) dx[pl * HW + argmax[pl * OHW + i]] += dy[pl * OHW + i];
}

template void maxpool2d_forward<float>(float*, int32_t*, const float*, int64_t, const MaxPoolGeom&);
template void maxpool2d_forward<double>(double*, int32_t*, const double*, int64_t,
                                        const MaxPoolGeom&);
template void maxpool2d_backward<float>(float*, const float*, const int32_t*, int64_t,
                                        const MaxPoolGeom&);
template void maxpool2d_backward<double>(double*, const double*, const int32_t*, int64_t,
                                         const MaxPoolGeom&);

}  // namespace normlab::ref
