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

#include "kernels/norm_common.hpp"
#include "normlab/groupnorm_kernels.hpp"

namespace normlab {
namespace {

using detail::fold_big;
using detail::fold_coeff_ok;
using detail::fold_product_ok;

// Segments shorter than this are handled value by value with per-channel
// coefficient arrays (one vector loop over the row) instead of a vector loop
// per segment.
constexpr int64_t kShortSegment = 8;

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

// Per row: y = (x - k) * a_c + b_c with k = the mean rounded to T, a_c = rstd *
// gamma_c, b_c = beta_c - (mean - k) * a_c (the rounding of k goes into b_c).
template <typename T>
void groupnorm_forward(T* y, T* mean, T* rstd, T* var, const T* x, const T* gamma, const T* beta,
                       int64_t N, int64_t C, int64_t S, int64_t G, T eps) {
  const int64_t Cg = C / G, D = Cg * S, R = N * G;
  if (R == 0 || D == 0) return;
  const bool stream = detail::stream_output<T>(R * D);
  const int64_t Cgp = detail::padded(Cg);
#pragma omp parallel num_threads(detail::kernel_threads(R* D))
  {
    // This thread's per-channel coefficients of the current row: a, b (T), and
    // whether the channel is computed exactly (its fold is not safe).
    T* a = detail::scratch<T, 2>(3 * Cgp);
    T* b = a + Cgp;
    T* exact = b + Cgp;
#pragma omp for schedule(static) nowait
    for (int64_t row = 0; row < R; ++row) {
      const T* xr = x + row * D;
      T* yr = y + row * D;
      const int64_t c0 = (row % G) * Cg;
      if (row + 1 < R) detail::prefetch_row(xr + D, D);
      const double shift = xr[0];
      const detail::Moments mo = detail::shifted_moments(xr, D, shift);
      const double m = shift + mo.mean, v = mo.m2 / static_cast<double>(D);
      const double rd = 1.0 / std::sqrt(v + static_cast<double>(eps));
      mean[row] = static_cast<T>(m);
      rstd[row] = static_cast<T>(rd);
      if (var) var[row] = static_cast<T>(v);
      // |x - k| <= sqrt(M2) + |m - k| for every x of the row.
      const T k = static_cast<T>(m);
      const double dev = std::sqrt(mo.m2) + std::abs(m - static_cast<double>(k));
      bool any_exact = false;
      for (int64_t c = 0; c < Cg; ++c) {
        const double ac = gamma ? rd * gamma[c0 + c] : rd;
        const double bc = (beta ? beta[c0 + c] : 0.0) - (m - k) * ac;
        a[c] = static_cast<T>(ac);
        b[c] = static_cast<T>(bc);
        const bool ok = fold_coeff_ok<T>(ac) && dev < fold_big<T> && fold_product_ok<T>(dev, ac) &&
                        std::abs(bc) < fold_big<T>;
        exact[c] = ok ? T(0) : T(1);
        any_exact |= !ok;
      }
      if (S == 1) {
        detail::map_row(
            yr, Cg, stream, [=](auto xv, auto ac, auto bc) { return (xv - k) * ac + bc; }, xr, a,
            b);
      } else if (S < kShortSegment) {
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t s = 0; s < S; ++s) yr[c * S + s] = (xr[c * S + s] - k) * a[c] + b[c];
      } else {
        for (int64_t c = 0; c < Cg; ++c) {
          const T ac = a[c], bc = b[c];
          detail::map_row(
              yr + c * S, S, stream, [=](auto xv) { return (xv - k) * ac + bc; }, xr + c * S);
        }
      }
      if (!any_exact) continue;
      for (int64_t c = 0; c < Cg; ++c) {
        if (exact[c] == T(0)) continue;
        for (int64_t s = 0; s < S; ++s) {
          double out = (xr[c * S + s] - m) * rd;
          if (gamma) out *= gamma[c0 + c];
          if (beta) out += beta[c0 + c];
          yr[c * S + s] = static_cast<T>(out);
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
//      = dy * A_c + (x - mean) * c1 + c0,  A_c = rstd * gamma_c,
//   c1 = -rstd^3 * sum(g * (x - me)) / D,  c0 = -rstd * sum(g) / D - delta * c1.
// One pass gathers the per-channel sums (double), then dx is written from L1.
// dgamma_c and dbeta_c go into this thread's partial sums (double).
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
    // This thread's per-channel sums of the current row (double) and dx's A_c (T).
    double* sdy = detail::scratch<double, 2>(2 * Cgp);
    double* sdyx = sdy + Cgp;
    T* A = detail::scratch<T, 3>(Cgp);
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
      double sx = 0;
      if (S == 1) {
        for (int64_t c = 0; c < Cg; ++c) {
          const double d = static_cast<double>(xr[c]) - md;
          sdy[c] = dyr[c];
          sdyx[c] = dyr[c] * d;
          sx += d;
        }
      } else {
        for (int64_t c = 0; c < Cg; ++c) {
          double sxc;
          segment_sums(xr + c * S, dyr + c * S, md, S, sdy[c], sdyx[c], sxc);
          sx += sxc;
        }
      }
      const double delta = sx * inv_d;
      double sg = 0, sgx = 0;  // sum g, sum g * (x - me)
      for (int64_t c = 0; c < Cg; ++c) {
        const double gm = gamma ? gamma[c0 + c] : 1.0;
        sdyx[c] -= delta * sdy[c];  // now sum dy * (x - me)
        sg += gm * sdy[c];
        sgx += gm * sdyx[c];
        pg[c0 + c] += sdyx[c] * rd;
        pb[c0 + c] += sdy[c];
      }
      if (!dx) continue;
      T* dxr = dx + row * D;
      const double c1 = -rd * rd * rd * sgx * inv_d, cc = -rd * sg * inv_d - delta * c1;
      const bool row_ok = fold_coeff_ok<T>(c1) && std::abs(cc) < fold_big<T>;
      const T c1t = static_cast<T>(c1), cct = static_cast<T>(cc);
      const double me = md + delta, mg = sg * inv_d, mgx = sgx * inv_d * rd;  // mean(g * xhat)
      // dx of channel c as ref:: computes it (double).
      const auto exact_channel = [&](int64_t c) {
        const double gm = gamma ? gamma[c0 + c] : 1.0;
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = c * S + s;
          const double xhat = (xr[i] - me) * rd;
          dxr[i] = static_cast<T>(rd * (dyr[i] * gm - mg - xhat * mgx));
        }
      };
      bool all_ok = row_ok;
      for (int64_t c = 0; c < Cg; ++c) {
        const double ad = gamma ? rd * gamma[c0 + c] : rd;
        A[c] = static_cast<T>(ad);
        all_ok &= fold_coeff_ok<T>(ad);
      }
      if (!all_ok) {
        for (int64_t c = 0; c < Cg; ++c) exact_channel(c);
        continue;
      }
      if (S < kShortSegment) {
        bool finite = true;
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t s = 0; s < S; ++s) {
            const int64_t i = c * S + s;
            const T r = dyr[i] * A[c] + (xr[i] - mt) * c1t + cct;
            dxr[i] = r;
            finite &= std::isfinite(r);
          }
        if (!finite)
          for (int64_t c = 0; c < Cg; ++c) exact_channel(c);
        continue;
      }
      for (int64_t c = 0; c < Cg; ++c) {
        const T ac = A[c];
        if (!detail::map_row_finite(
                dxr + c * S, S, stream,
                [=](auto xv, auto dv) { return dv * ac + (xv - mt) * c1t + cct; }, xr + c * S,
                dyr + c * S))
          exact_channel(c);
      }
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

#define NORMLAB_INSTANTIATE(T)                                                                   \
  template void groupnorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, int64_t,      \
                                     int64_t, int64_t, int64_t, T);                              \
  template void groupnorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                      const T*, int64_t, int64_t, int64_t, int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
