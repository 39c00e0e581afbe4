// The reference twin of the oneDNN convolution: plain loops in double,
// the definition of nn.Conv2d written out (cross-correlation, zero padding).
#include "kernels/conv2d.hpp"

namespace normlab::detail {

template <>
void conv2d_forward<double>(ConvCache*, const ConvGeom& g, const double* x, const double* w,
                            const double* b, double* y) {
  const int64_t Cg = g.C / g.G, Og = g.O / g.G;
#pragma omp parallel for collapse(2) schedule(static) if (g.N * g.O * g.OH * g.OW > 4096)
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t o = 0; o < g.O; ++o) {
      const int64_t grp = o / Og;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          double s = b ? b[o] : 0.0;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t iw = ow * g.SW - g.PW + kw * g.DW;
                if (iw < 0 || iw >= g.W) continue;
                s += x[((n * g.C + grp * Cg + c) * g.H + ih) * g.W + iw] *
                     w[((o * Cg + c) * g.KH + kh) * g.KW + kw];
              }
            }
          y[((n * g.O + o) * g.OH + oh) * g.OW + ow] = s;
        }
    }
}

template <>
void conv2d_backward<double>(ConvCache*, const ConvGeom& g, const double* dy, const double* x,
                             const double* w, double* dx, double* dw, double* db) {
  const int64_t Cg = g.C / g.G, Og = g.O / g.G;
  if (dx)
    for (int64_t i = 0; i < g.N * g.C * g.H * g.W; ++i) dx[i] = 0.0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t o = 0; o < g.O; ++o) {
      const int64_t grp = o / Og;
      for (int64_t oh = 0; oh < g.OH; ++oh)
        for (int64_t ow = 0; ow < g.OW; ++ow) {
          const double d = dy[((n * g.O + o) * g.OH + oh) * g.OW + ow];
          if (db) db[o] += d;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.SH - g.PH + kh * g.DH;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t iw = ow * g.SW - g.PW + kw * g.DW;
                if (iw < 0 || iw >= g.W) continue;
                const int64_t xi = ((n * g.C + grp * Cg + c) * g.H + ih) * g.W + iw;
                const int64_t wi = ((o * Cg + c) * g.KH + kh) * g.KW + kw;
                dw[wi] += d * x[xi];
                if (dx) dx[xi] += d * w[wi];
              }
            }
        }
    }
}

}  // namespace normlab::detail
