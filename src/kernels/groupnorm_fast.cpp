// The default GroupNorm kernels over (N, C, S). A (sample, group) is D = C / G * S
// contiguous values, a "row" as in LayerNorm: OpenMP over the N * G rows, the
// row stays in L1/L2 while it is worked on, so x is read from memory once and
// y (or dx) written once. Within a row the affine map is per channel, i.e.
// per segment of S contiguous values (S = 1 for (N, C): the segments are
// single values, worked on with per-channel coefficient arrays).
// Statistics as the other fast norms: moments around a value of the row,
// summed in double (shifted_moments); the backward's sums in double. Every
// folded coefficient must be a usable T and the fold is used only where
// bounds from the statistics keep it from overflowing (forward) or where its
// outputs come out finite (backward, map_row_finite); other channels are
// computed as ref:: does (norm_common.hpp: "Folding coefficients").
// Tested against ref:: in tests/test_groupnorm.cpp; derivation:
// docs/derivations.md ("GroupNorm"); timings: docs/performance.md.
#include <algorithm>
#include <cmath>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/groupnorm_kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {
namespace {

using detail::fold_big;
using detail::fold_coeff_ok;
using detail::fold_product_ok;

// Segments shorter than this are handled value by value with per-channel
// coefficient arrays (one vector loop over the row) instead of a vector loop
// per segment.
constexpr int64_t kShortSegment = 8;

// The forward takes rows of fewer than kBlockElems / 2 values in blocks of up
// to kMaxBlock rows (see groupnorm_forward).
constexpr int64_t kBlockElems = 2048, kMaxBlock = 16;

// Over one segment of S values, in double: sdy = sum dy, sdyx = sum dy * (x - m),
// sx = sum (x - m). Two vector accumulators each: the segment is loaded once.
template <typename T>
void segment_sums(const T* x, const T* dy, double m, int64_t S, double& sdy, double& sdyx,
                  double& sx) {
  constexpr int64_t W = detail::kWideLanes;
  using V = detail::Vec<double>;
  V a0{}, a1{}, b0{}, b1{}, c0{}, c1{};
  int64_t i = 0;
  for (; i + 2 * W <= S; i += 2 * W) {
    const V d0 = detail::load_wide(x + i) - m, d1 = detail::load_wide(x + i + W) - m;
    const V e0 = detail::load_wide(dy + i), e1 = detail::load_wide(dy + i + W);
    a0 += e0;
    a1 += e1;
    b0 += e0 * d0;
    b1 += e1 * d1;
    c0 += d0;
    c1 += d1;
  }
  double s1 = 0, s2 = 0, s3 = 0;
  if (i > 0) {
    s1 = detail::hsum<double>(a0 + a1);
    s2 = detail::hsum<double>(b0 + b1);
    s3 = detail::hsum<double>(c0 + c1);
  }
  for (; i < S; ++i) {
    const double d = static_cast<double>(x[i]) - m, e = dy[i];
    s1 += e;
    s2 += e * d;
    s3 += d;
  }
  sdy = s1, sdyx = s2, sx = s3;
}

}  // namespace

// The largest |gamma| (1 without) and |beta| (0 without) over all channels:
// the row checks below bound xhat * gamma + beta with them, once per call.
template <typename T>
void affine_bounds(const T* gamma, const T* beta, int64_t C, double& gmax, double& bmax) {
  gmax = gamma ? 0.0 : 1.0, bmax = 0.0;
  for (int64_t c = 0; gamma && c < C; ++c) gmax = std::max(gmax, std::abs(double(gamma[c])));
  for (int64_t c = 0; beta && c < C; ++c) bmax = std::max(bmax, std::abs(double(beta[c])));
}

// Per row, as LayerNorm's fast forward: y = ((x - shift - m) * r) * gamma_c + beta_c,
// shift = the row's first value, m = mean(x - shift) and r = rstd in T; gamma is
// never folded into r (rstd * gamma can overflow where xhat * gamma does not: a
// constant group with gamma 1e37). A row whose spread is near float's largest
// values, whose rstd is not a normal float, or whose |xhat| * max|gamma| +
// max|beta| could overflow (without FMA the product is rounded on its own) is
// computed as ref:: does.
template <typename T>
void groupnorm_forward(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, int64_t S, int64_t G, T eps) {
  const int64_t Cg = C / G, D = Cg * S, R = N * G;
  if (R == 0 || D == 0) return;
  const bool stream = detail::stream_output<T>(R * D);
  double gmax, bmax;
  affine_bounds(gamma, beta, C, gmax, bmax);
  const int64_t block = std::clamp<int64_t>(kBlockElems / D, 1, kMaxBlock);
  const double inv_d = 1.0 / static_cast<double>(D);
#pragma omp parallel num_threads(detail::kernel_threads(R* D))
  {
    // Small rows go in blocks: the moments of the block's rows first, then
    // their 1/sqrt in one vector loop (one row's sqrt and division alone
    // stall the row's map: measured 2x on (N, C) with groups of 16), then the
    // maps, while the block (at most kBlockElems values) is in L1/L2.
#pragma omp for schedule(static) nowait
    for (int64_t b0 = 0; b0 < R; b0 += block) {
      const int64_t nb = std::min(block, R - b0);
      T shifts[kMaxBlock];
      double means[kMaxBlock], m2s[kMaxBlock], rds[kMaxBlock], devs[kMaxBlock];
      for (int64_t k = 0; k < nb; ++k) {
        const T* xr = x + (b0 + k) * D;
        if (b0 + k + 1 < R) detail::prefetch_row(xr + D, D);
        shifts[k] = xr[0];
        const detail::Moments mo = detail::shifted_moments(xr, D, static_cast<double>(xr[0]));
        means[k] = mo.mean;
        m2s[k] = mo.m2;
      }
#pragma omp simd
      for (int64_t k = 0; k < nb; ++k) {
        rds[k] = 1.0 / std::sqrt(m2s[k] * inv_d + static_cast<double>(eps));
        devs[k] = std::sqrt(m2s[k]) + std::abs(means[k]);
      }
      for (int64_t k = 0; k < nb; ++k) {
        const int64_t row = b0 + k;
        const T* xr = x + row * D;
        T* yr = y + row * D;
        const int64_t c0 = (row % G) * Cg;
        const T shift = shifts[k];
        const detail::Moments mo{means[k], m2s[k]};
        const double v = mo.m2 * inv_d, rd = rds[k], dev = devs[k];
        mean[row] = static_cast<T>(shift + mo.mean);
        rstd[row] = static_cast<T>(rd);
        if (var) var[row] = static_cast<T>(v);
        if (!(dev < fold_big<T> && fold_coeff_ok<T>(rd) && fold_product_ok<T>(mo.mean, rd) &&
              dev * rd * gmax + bmax < fold_big<T>)) {
          const double m = static_cast<double>(shift) + mo.mean;
          for (int64_t i = 0; i < D; ++i) {
            const int64_t c = c0 + i / S;
            double out = (xr[i] - m) * rd;
            if (gamma) out *= gamma[c];
            if (beta) out += beta[c];
            yr[i] = static_cast<T>(out);
          }
          continue;
        }
        const T m = static_cast<T>(mo.mean), r = static_cast<T>(rd);
        if (S == 1) {  // the channels are the row: gamma and beta as arrays
          const T* g = gamma ? gamma + c0 : nullptr;
          const T* b = beta ? beta + c0 : nullptr;
          if (g && b)
            detail::map_row(
                yr, D, stream,
                [=](auto xv, auto gv, auto bv) { return ((xv - shift - m) * r) * gv + bv; }, xr, g,
                b);
          else if (g)
            detail::map_row(
                yr, D, stream, [=](auto xv, auto gv) { return ((xv - shift - m) * r) * gv; }, xr,
                g);
          else if (b)
            detail::map_row(
                yr, D, stream, [=](auto xv, auto bv) { return (xv - shift - m) * r + bv; }, xr, b);
          else
            detail::map_row(
                yr, D, stream, [=](auto xv) { return (xv - shift - m) * r; }, xr);
          continue;
        }
        for (int64_t c = 0; c < Cg; ++c) {
          const T gv = gamma ? gamma[c0 + c] : T(1), bv = beta ? beta[c0 + c] : T(0);
          if (S < kShortSegment) {
            for (int64_t s = 0; s < S; ++s)
              yr[c * S + s] = ((xr[c * S + s] - shift - m) * r) * gv + bv;
            continue;
          }
          if (gamma || beta)
            detail::map_row(
                yr + c * S, S, stream, [=](auto xv) { return ((xv - shift - m) * r) * gv + bv; },
                xr + c * S);
          else
            detail::map_row(
                yr + c * S, S, stream, [=](auto xv) { return (xv - shift - m) * r; }, xr + c * S);
        }
      }
    }
    if (stream) detail::stream_fence();
  }
}

// Per row, with g = dy * gamma_c, the exact mean me = mean + delta (delta =
// mean(x - mean) recovers what the rounding of the saved mean lost) and
// xhat = (x - me) * rstd:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
//      = (dy * gamma_c) * rstd + (x - mean) * c1 + c0,
//   c1 = -rstd^3 * sum(g * (x - me)) / D,  c0 = -rstd * sum(g) / D - delta * c1.
// One pass gathers the per-channel sums (double), then dx is written from L1.
// dgamma_c and dbeta_c go into this thread's partial sums (double). A row whose
// coefficients are not usable in T, or whose dx comes out non-finite (an
// overflow in the map: map_row_finite), is computed as ref:: does.
template <typename T>
void groupnorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t C, int64_t S, int64_t G) {
  const int64_t Cg = C / G, D = Cg * S, R = N * G;
  if (R == 0 || D == 0) return;
  const int threads = detail::kernel_threads(R * D);
  const bool stream = detail::stream_output<T>(R * D);
  const int64_t Cp = detail::padded(C), Cgp = detail::padded(Cg);
  double* partial = detail::scratch<double, 1>(2 * Cp * threads);  // per thread: dgamma, dbeta
  const double inv_d = 1.0 / static_cast<double>(D);
#pragma omp parallel num_threads(threads)
  {
    double* pg = partial + 2 * Cp * omp_get_thread_num();
    double* pb = pg + Cp;
    std::fill(pg, pg + 2 * Cp, 0.0);
    // This thread's per-channel sums of the current row (double).
    double* sdy = detail::scratch<double, 2>(2 * Cgp);
    double* sdyx = sdy + Cgp;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < R; ++row) {
      const T* xr = x + row * D;
      const T* dyr = dy + row * D;
      const int64_t c0 = (row % G) * Cg;
      const T mt = mean[row];
      const double md = mt, rd = rstd[row];
      if (row + 1 < R) {
        detail::prefetch_row(xr + D, D);
        detail::prefetch_row(dyr + D, D);
      }
      double sx = 0, sg = 0, sgx = 0;  // sum (x - mean), sum g, sum g * (x - mean)
      if (S == 1) {
#pragma omp simd reduction(+ : sx, sg, sgx)
        for (int64_t c = 0; c < Cg; ++c) {
          const double d = static_cast<double>(xr[c]) - md, e = dyr[c];
          const double gm = gamma ? static_cast<double>(gamma[c0 + c]) : 1.0;
          sdy[c] = e;
          sdyx[c] = e * d;
          sx += d;
          sg += gm * e;
          sgx += gm * e * d;
        }
      } else {
        for (int64_t c = 0; c < Cg; ++c) {
          double sxc;
          segment_sums(xr + c * S, dyr + c * S, md, S, sdy[c], sdyx[c], sxc);
          const double gm = gamma ? static_cast<double>(gamma[c0 + c]) : 1.0;
          sx += sxc;
          sg += gm * sdy[c];
          sgx += gm * sdyx[c];
        }
      }
      const double delta = sx * inv_d;
      sgx -= delta * sg;  // now sum g * (x - me)
      // dgamma_c += sum dy * xhat = (sdyx_c - delta * sdy_c) * rstd; dbeta_c += sdy_c.
#pragma omp simd
      for (int64_t c = 0; c < Cg; ++c) {
        pg[c0 + c] += (sdyx[c] - delta * sdy[c]) * rd;
        pb[c0 + c] += sdy[c];
      }
      if (!dx) continue;
      T* dxr = dx + row * D;
      const double c1 = -rd * rd * rd * sgx * inv_d, cc = -rd * sg * inv_d - delta * c1;
      const auto exact_row = [&] {
        const double me = md + delta, mg = sg * inv_d, mgx = sgx * inv_d * rd;  // mean(g * xhat)
        for (int64_t i = 0; i < D; ++i) {
          const double gm = gamma ? gamma[c0 + i / S] : 1.0;
          const double xhat = (xr[i] - me) * rd;
          dxr[i] = static_cast<T>(rd * (dyr[i] * gm - mg - xhat * mgx));
        }
      };
      if (!(fold_coeff_ok<T>(rd) && fold_coeff_ok<T>(c1) && std::abs(cc) < fold_big<T>)) {
        exact_row();
        continue;
      }
      const T r = static_cast<T>(rd), c1t = static_cast<T>(c1), cct = static_cast<T>(cc);
      bool finite = true;
      if (S == 1) {
        if (gamma)
          finite = detail::map_row_finite(
              dxr, D, stream,
              [=](auto xv, auto dv, auto gv) { return (dv * gv) * r + (xv - mt) * c1t + cct; }, xr,
              dyr, gamma + c0);
        else
          finite = detail::map_row_finite(
              dxr, D, stream, [=](auto xv, auto dv) { return dv * r + (xv - mt) * c1t + cct; }, xr,
              dyr);
      } else {
        for (int64_t c = 0; c < Cg && finite; ++c) {
          // A = gamma_c * rstd folded: a usable T or the row goes exact.
          const double ad = gamma ? static_cast<double>(gamma[c0 + c]) * rd : rd;
          const T a = static_cast<T>(ad);
          finite = fold_coeff_ok<T>(ad) &&
                   detail::map_row_finite(
                       dxr + c * S, S, stream,
                       [=](auto xv, auto dv) { return dv * a + (xv - mt) * c1t + cct; }, xr + c * S,
                       dyr + c * S);
        }
      }
      if (!finite) exact_row();
    }
    if (stream) detail::stream_fence();
    // The threads' partial sums, added into the accumulating parameter gradients.
    const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double sgc = 0, sbc = 0;
      for (int t = 0; t < nt; ++t) {
        sgc += partial[2 * Cp * t + c];
        sbc += partial[2 * Cp * t + Cp + c];
      }
      if (dgamma) dgamma[c] += static_cast<T>(sgc);
      if (dbeta) dbeta[c] += static_cast<T>(sbc);
    }
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                \
  NORMLAB_KERNEL(groupnorm_forward, T, T*, T*, T*, T*, const T*, const T*, const T*, int64_t, \
                 int64_t, int64_t, int64_t, T)                                                \
  NORMLAB_KERNEL(groupnorm_backward, T, T*, T*, T*, const T*, const T*, const T*, const T*,   \
                 const T*, int64_t, int64_t, int64_t, int64_t)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
