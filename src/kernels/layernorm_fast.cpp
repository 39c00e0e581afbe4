// The default LayerNorm kernels: OpenMP over rows, vector loops over a row.
// A row (D values) stays in L1/L2 while it is worked on, so x is read from
// memory once and y (or dx) written once. Tested against ref:: in
// tests/test_kernels_fast.cpp; timings in docs/performance.md.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

// A row as ref:: computes it (double), for rows whose float evaluation is not
// safe (see the checks below).
template <typename T>
void exact_row(T* yr, const T* xr, const T* gamma, const T* beta, int64_t D, double m, double r) {
  for (int64_t d = 0; d < D; ++d) {
    double out = (xr[d] - m) * r;
    if (gamma) out *= gamma[d];
    if (beta) out += beta[d];
    yr[d] = static_cast<T>(out);
  }
}

// A row's mean summed in double, rounded to T.
template <typename T>
T row_mean(const T* x, int64_t D) {
  return static_cast<T>(detail::sum_row_wide<T>(
                            D, [](auto v) { return v; }, x) /
                        static_cast<double>(D));
}

// A row's moments in T: d = x - s around a shift s near the mean (the mean
// of the row's first few values, in double, rounded to T), S1 = sum d and
// S2 = sum d^2 summed in T over blocks of 64 vectors (16 terms per lane,
// four accumulators each) whose totals are added in double; M2 = S2 - S1^2 / D.
// Each block's sums are within ~22 T-ulps of exact and M2 loses at most the
// factor kappa = S2 / M2 more; the row is taken only if kappa <= 2 (the mean
// within one standard deviation of s: rows whose first values are not
// typical fail), the sums are finite (no square overflowed: |d| < 1.8e19 for
// float) and M2 is 0 with S2 = 0 (every d exactly 0: a constant row) or
// M2 / D >= 1e-30 (squares below float's normal range are then negligible).
// The variance is then within ~3e-6 relative in the worst case, typically
// ~1e-7, and the mean within ~1e-6 sd (PyTorch's float LayerNorm sums in
// float): good for y; the saved mean is summed again in double (row_mean).
// Returns false for other rows (and NaN/inf rows), which take
// shifted_moments, all in double. Per float vector: a subtract, an add and
// an FMA, against (with AVX-512) two conversions of half vectors, two
// subtracts, adds and FMAs in double: the pass that streams the row in from
// memory or L3 issues its loads twice as fast.
struct FastMoments {
  double shift, mean, m2;  // row mean = shift + mean; m2 = sum (x - row mean)^2
};
template <typename T>
bool fast_moments(FastMoments& out, const T* x, int64_t D) {
  using V = detail::Vec<T>;
  constexpr int64_t W = static_cast<int64_t>(detail::kVecBytes / sizeof(T));
  constexpr int64_t kBlock = 64 * W;
  const int64_t k = std::min<int64_t>(D, 2 * W);
  const T s = row_mean(x, k);
  double s1 = 0, s2 = 0;
  int64_t i = 0;
  for (int64_t b = 0; b + 4 * W <= D; b = i) {
    const int64_t end = std::min(D, b + kBlock);
    V a0{}, a1{}, a2{}, a3{}, q0{}, q1{}, q2{}, q3{};
    for (; i + 4 * W <= end; i += 4 * W) {
      const V d0 = detail::load(x + i) - s, d1 = detail::load(x + i + W) - s;
      const V d2 = detail::load(x + i + 2 * W) - s, d3 = detail::load(x + i + 3 * W) - s;
      a0 += d0, a1 += d1, a2 += d2, a3 += d3;
      q0 += d0 * d0, q1 += d1 * d1, q2 += d2 * d2, q3 += d3 * d3;
    }
    s1 += detail::hsum<T>((a0 + a1) + (a2 + a3));
    s2 += detail::hsum<T>((q0 + q1) + (q2 + q3));
  }
  if (i + W <= D) {
    V a{}, q{};
    for (; i + W <= D; i += W) {
      const V d = detail::load(x + i) - s;
      a += d, q += d * d;
    }
    s1 += detail::hsum<T>(a), s2 += detail::hsum<T>(q);
  }
  for (; i < D; ++i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(s);
    s1 += d, s2 += d * d;
  }
  const double n = static_cast<double>(D), m = s1 / n, m2 = s2 - s1 * m;
  out = {static_cast<double>(s), m, std::max(0.0, m2)};
  if (!(std::isfinite(s1) && std::isfinite(s2))) return false;
  return s2 == 0 || (m2 >= 0.5 * s2 && m2 >= 1e-30 * n);
}

// y = x * r + b0 (then times gamma, plus beta): two FMAs per value, as
// PyTorch's float kernel computes, with b0 = -mean * r. Rounding b0 costs
// ~|mean| / sd ulps of xhat, so rows take it only where |mean| <= 8 sd.
// Other rows centre exactly first: ((x - shift) - m) * r with m the mean
// of x - shift.
#if defined(__FMA__)
inline constexpr bool kFma = true;
#else
// Without FMA (the x86-64-v2 build) x * r is rounded before b0 is added: the
// cancellation costs |mean| / sd ulps, so every row is centred first.
inline constexpr bool kFma = false;
#endif

template <bool Centre, typename T>
void affine_row(T* yr, const T* xr, const T* gamma, const T* beta, int64_t D, bool stream, T shift,
                T m, T r, T b0) {
  const auto xhat = [=](auto v) {
    if constexpr (Centre)
      return ((v - shift) - m) * r;
    else
      return v * r + b0;
  };
  if (gamma && beta)
    detail::map_row(
        yr, D, stream, [=](auto v, auto g, auto b) { return xhat(v) * g + b; }, xr, gamma, beta);
  else if (gamma)
    detail::map_row(
        yr, D, stream, [=](auto v, auto g) { return xhat(v) * g; }, xr, gamma);
  else if (beta)
    detail::map_row(
        yr, D, stream, [=](auto v, auto b) { return xhat(v) + b; }, xr, beta);
  else
    detail::map_row(yr, D, stream, xhat, xr);
}

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int64_t N,
                       int64_t D, T eps) {
  const bool stream = detail::stream_output<T>(N * D);
  // The largest |gamma| and |beta|: xhat * gamma (+ beta) stays below float's
  // largest value only while |xhat| * gmax + bmax does. Without FMA (an
  // x86-64-v2 build) the product is rounded to T on its own and overflows
  // where the reference's double does not, so such rows go exact too.
  double gmax = gamma ? 0.0 : 1.0, bmax = 0.0;
  for (int64_t d = 0; gamma && d < D; ++d) gmax = std::max(gmax, std::abs(double(gamma[d])));
  for (int64_t d = 0; beta && d < D; ++d) bmax = std::max(bmax, std::abs(double(beta[d])));
#pragma omp parallel num_threads(detail::kernel_threads(N* D))
  {
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      T* yr = y + n * D;
      if (n + 1 < N) detail::prefetch_row(xr + D, D);
      // Moments in T around a shift near the mean (fast_moments), or where
      // that is not safe, around the row's first value (exact centring for
      // large means, see shifted_moments) summed in double; mo.mean is the
      // mean of x - shift.
      FastMoments mo;
      const bool fast = fast_moments(mo, xr, D);
      if (!fast) {
        const detail::Moments dm = detail::shifted_moments(xr, D, static_cast<double>(xr[0]));
        mo = {static_cast<double>(xr[0]), dm.mean, dm.m2};
      }
      const T shift = static_cast<T>(mo.shift);
      const double rd = 1.0 / std::sqrt(mo.m2 / static_cast<double>(D) + static_cast<double>(eps));
      const double md = mo.shift + mo.mean;
      const T m = static_cast<T>(mo.mean), r = static_cast<T>(rd);
      rstd[n] = r;
      // In T below: x - shift - m (at most dev), times r (at most ~sqrt(D)), then
      // times gamma plus beta; gamma is never folded into r (rstd * gamma can
      // overflow where xhat * gamma does not: a constant row with gamma 1e37).
      // A spread near float's largest values, or an rstd too small to be a
      // normal float, takes the row as ref:: does.
      const double dev = std::sqrt(mo.m2) + std::abs(mo.mean);
      if (!(dev < detail::fold_big<T> && detail::fold_coeff_ok<T>(rd) &&
            detail::fold_product_ok<T>(mo.mean, rd) &&
            dev * rd * gmax + bmax < detail::fold_big<T>)) {
        exact_row(yr, xr, gamma, beta, D, md, rd);
      } else if (kFma && md * md * static_cast<double>(D) <= 64 * mo.m2) {
        // x * r + b0 where |mean| <= 8 sd: the rounding of b0 is then at most
        // ~8 ulps of the spread's xhat (with a large eps, rd is far below 1 / sd
        // and |mean| * rd says nothing about it).
        affine_row<false>(yr, xr, gamma, beta, D, stream, shift, m, r, static_cast<T>(-md * rd));
      } else {
        affine_row<true>(yr, xr, gamma, beta, D, stream, shift, m, r, T(0));
      }
      // The saved mean within one float ulp of the exact one: fast rows sum
      // the row again in double (from L1, after y).
      mean[n] = fast ? row_mean(xr, D) : static_cast<T>(md);
    }
    if (stream) detail::stream_fence();
  }
}

// The backward's row sums in one pass: sx = sum (x - m), sg = sum g,
// sgx = sum g * (x - m), sgg = sum g^2 with g = dy * gamma (gamma may be
// null); two vector accumulators each. Wide: terms and sums in double;
// otherwise in T (float's vector width, as PyTorch's float LayerNorm backward).
template <bool Wide, typename T>
void row_grad_sums(double& sx, double& sg, double& sgx, double& sgg, const T* x, const T* dy,
                   const T* gamma, T m, int64_t D) {
  using A = std::conditional_t<Wide, double, T>;
  using V = detail::Vec<A>;
  constexpr int64_t W =
      Wide ? detail::kWideLanes : static_cast<int64_t>(detail::kVecBytes / sizeof(T));
  const auto ld = [](const T* p) {
    if constexpr (Wide)
      return detail::load_wide(p);
    else
      return detail::load(p);
  };
  const A mm = m;
  V a0{}, a1{}, b0{}, b1{}, c0{}, c1{}, e0{}, e1{};
  const auto step = [&](int64_t i, V& a, V& b, V& c, V& e) {
    const V d = ld(x + i) - mm;
    V g = ld(dy + i);
    if (gamma) g *= ld(gamma + i);
    a += d;
    b += g;
    c += g * d;
    e += g * g;
  };
  int64_t i = 0;
  for (; i + 2 * W <= D; i += 2 * W) {
    step(i, a0, b0, c0, e0);
    step(i + W, a1, b1, c1, e1);
  }
  for (; i + W <= D; i += W) step(i, a0, b0, c0, e0);
  A s1 = detail::hsum<A>(a0 + a1), s2 = detail::hsum<A>(b0 + b1);
  A s3 = detail::hsum<A>(c0 + c1), s4 = detail::hsum<A>(e0 + e1);
  for (; i < D; ++i) {
    const A d = static_cast<A>(x[i]) - mm, g = static_cast<A>(dy[i]) * (gamma ? gamma[i] : T(1));
    s1 += d, s2 += g, s3 += g * d, s4 += g * g;
  }
  sx = s1, sg = s2, sgx = s3, sgg = s4;
}

// dx, and the row's shares of dgamma and dbeta (added into dg, db: this
// thread's partial sums, in L1), in one pass over a row in L1:
//   xhat = (x - m) * r + nd,  dg += dy * xhat,  db += dy,
//   dx = (dy * gamma) * r + (xhat * c1h + c0h)
// (7 vector operations; streaming stores for dx if stream).
template <bool Gamma, typename T>
void grad_dx_row(T* dxr, T* dg, T* db, const T* x, const T* dy, const T* gamma, int64_t D,
                 bool stream, T m, T r, T nd, T c1h, T c0h) {
  using V = detail::Vec<T>;
  constexpr int64_t W = static_cast<int64_t>(detail::kVecBytes / sizeof(T));
  const auto one = [=](auto v, auto dv, auto gm, auto& ga, auto& ba) {
    const auto xh = (v - m) * r + nd;
    ga += dv * xh;
    ba += dv;
    if constexpr (Gamma)
      return (dv * gm) * r + (xh * c1h + c0h);
    else
      return dv * r + (xh * c1h + c0h);
  };
  const auto scalar = [&](int64_t i) {
    dxr[i] = one(x[i], dy[i], Gamma ? gamma[i] : T(1), dg[i], db[i]);
  };
  int64_t i = 0;
  if (stream)
    for (; i < D && reinterpret_cast<uintptr_t>(dxr + i) % detail::kVecBytes != 0; ++i) scalar(i);
  const auto body = [&](auto streaming) {
    for (; i + W <= D; i += W) {
      V ga = detail::load(dg + i), ba = detail::load(db + i);
      const V out = one(detail::load(x + i), detail::load(dy + i),
                        Gamma ? detail::load(gamma + i) : V{}, ga, ba);
      std::memcpy(dg + i, &ga, sizeof ga);
      std::memcpy(db + i, &ba, sizeof ba);
      if constexpr (decltype(streaming)::value)
        detail::stream_store(dxr + i, out);
      else
        std::memcpy(dxr + i, &out, sizeof out);
    }
  };
  if (stream)
    body(std::true_type{});
  else
    body(std::false_type{});
  for (; i < D; ++i) scalar(i);
}

// Per row, with g = dy * gamma and xhat = (x - mean) * rstd:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))     (docs/derivations.md)
// The row is read from memory once (by the first row sum); the other sums
// (in double), the row's share of dgamma and dbeta (into this thread's partial
// sums) and dx work on it in L1. Without dx, the sums are skipped.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                        const T* rstd, const T* gamma, int64_t N, int64_t D) {
  const int threads = detail::kernel_threads(N * D);
  const bool stream = detail::stream_output<T>(N * D);
  const int64_t Dp = detail::padded(D);
  T* partial = detail::scratch<T>(2 * Dp * threads);  // per thread: dgamma (D), dbeta (D)
#pragma omp parallel num_threads(threads)
  {
    T* dg = partial + 2 * Dp * omp_get_thread_num();
    T* db = dg + Dp;
    std::fill(dg, dg + 2 * Dp, T(0));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      const T* dyr = dy + n * D;
      const T m = mean[n], r = rstd[n];
      const double md = m, rd = r;
      if (n + 1 < N) {
        detail::prefetch_row(xr + D, D);
        detail::prefetch_row(dyr + D, D);
      }
      // The saved mean is the row mean rounded to T; for inputs like 1e4 + 0.01 * randn
      // that rounding is a few % of the spread. The exact mean is m + delta with
      // delta = mean(x - m), so every (x - m) below becomes xc = (x - m) - delta.
      // With g = dy * gamma: dx = g * r + xc * c1 + c0, where c1 = -r^3 * mean(g * xc)
      // and c0 = -r * mean(g); folded: (x - m) * c1 + (c0 - delta * c1). The row sums
      // come first: loads only, so the row streams in from memory at full speed.
      // One pass in T (as before; PyTorch's float backward also sums in float):
      // delta's sum, and with g = dy * gamma, sum g, sum g * (x - m) and sum g^2
      // (the last bounds |g| for the checks below). A row whose sums or
      // coefficients fail the checks is summed again in double and computed as
      // ref:: does.
      const double inv_d = 1.0 / static_cast<double>(D);
      double sx = 0, sg = 0, sgx = 0, sgg = 0;
      row_grad_sums<false>(sx, sg, sgx, sgg, xr, dyr, dx ? gamma : nullptr, m, dx ? D : 0);
      if (!dx)
        sx = detail::sum_row<T>(
            D, [=](auto v) { return v - m; }, xr);
      double delta = sx * inv_d;
      const double c1 = -rd * rd * rd * ((sgx - delta * sg) * inv_d),
                   c0 = -rd * sg * inv_d - delta * c1;
      // In T: x - m (at most sqrt(D) / r + |delta|), xhat; dy * gamma (at most
      // sqrt(sgg)), times r, plus (x - m) times c1, plus c0. Where a bound fails
      // (huge gamma or dy, spreads near float's limits) the row is computed in
      // double, as ref:: does. (NaN in any sum fails every check.)
      const double gmax = std::sqrt(sgg),
                   dev = 1.01 * std::sqrt(static_cast<double>(D)) / rd + std::abs(delta);
      const bool stats_ok = dev < detail::fold_big<T> && detail::fold_coeff_ok<T>(rd);
      const bool dx_ok =
          stats_ok && gmax < detail::fold_big<T> && detail::fold_product_ok<T>(gmax, rd) &&
          detail::fold_coeff_ok<T>(c1 / rd) && detail::fold_product_ok<T>(dev * rd, c1 / rd) &&
          detail::fold_coeff_ok<T>(c1) && detail::fold_product_ok<T>(dev, c1) &&
          std::abs(c0) < detail::fold_big<T> && std::abs(rd * sg * inv_d) < detail::fold_big<T> &&
          std::abs(delta * rd) < detail::fold_big<T>;
      T* dxr = dx ? dx + n * D : nullptr;
      if (!stats_ok || (dx && !dx_ok)) {
        row_grad_sums<true>(sx, sg, sgx, sgg, xr, dyr, gamma, m, D);
        delta = sx * inv_d;
        const double m_exact = md + delta, mg = sg * inv_d,
                     mgx = (sgx - delta * sg) * inv_d * rd;  // mean(g * xhat)
        for (int64_t d = 0; d < D; ++d) {
          const double xhat = (xr[d] - m_exact) * rd;
          dg[d] += static_cast<T>(dyr[d] * xhat);
          db[d] += dyr[d];
          if (!dxr) continue;
          const double g = static_cast<double>(dyr[d]) * (gamma ? gamma[d] : T(1));
          dxr[d] = static_cast<T>(rd * (g - mg - xhat * mgx));
        }
        continue;
      }
      const T delta_t = static_cast<T>(delta);
      if (!dx || !stream) {
        // The row's share of dgamma (dy * xhat) and dbeta (dy), from L1.
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          dg[d] += dyr[d] * (((xr[d] - m) - delta_t) * r);
          db[d] += dyr[d];
        }
        if (!dx) continue;
        const T c1t = static_cast<T>(c1), c0t = static_cast<T>(c0);
        if (gamma)
          detail::map_row(
              dxr, D, stream,
              [=](auto v, auto dv, auto gm) { return (dv * gm) * r + (v - m) * c1t + c0t; }, xr,
              dyr, gamma);
        else
          detail::map_row(
              dxr, D, stream, [=](auto v, auto dv) { return dv * r + (v - m) * c1t + c0t; }, xr,
              dyr);
        continue;
      }
      // With streaming stores for dx (large inputs), one pass from L1 for the parameter gradients'
      // shares and dx, in terms of xhat = (x - m) * r - delta * r: dx = g * r + xhat * c1h + c0h
      // with c1h = c1 / r and c0h = -r * mean(g).
      const T nd = static_cast<T>(-delta * rd), c1h = static_cast<T>(c1 / rd),
              c0h = static_cast<T>(-rd * sg * inv_d);
      if (gamma)
        grad_dx_row<true>(dxr, dg, db, xr, dyr, gamma, D, stream, m, r, nd, c1h, c0h);
      else
        grad_dx_row<false>(dxr, dg, db, xr, dyr, gamma, D, stream, m, r, nd, c1h, c0h);
    }
    if (stream) detail::stream_fence();
    // The threads' partial sums, added into the accumulating parameter gradients.
    const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t d = 0; d < D; ++d) {
      T sg = 0, sb = 0;
      for (int t = 0; t < nt; ++t) {
        sg += partial[2 * Dp * t + d];
        sb += partial[2 * Dp * t + Dp + d];
      }
      if (dgamma) dgamma[d] += sg;
      if (dbeta) dbeta[d] += sb;
    }
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

NORMLAB_KERNEL(layernorm_forward, float, float*, float*, float*, const float*, const float*,
               const float*, int64_t, int64_t, float)
NORMLAB_KERNEL(layernorm_forward, double, double*, double*, double*, const double*, const double*,
               const double*, int64_t, int64_t, double)
NORMLAB_KERNEL(layernorm_backward, float, float*, float*, float*, const float*, const float*,
               const float*, const float*, const float*, int64_t, int64_t)
NORMLAB_KERNEL(layernorm_backward, double, double*, double*, double*, const double*, const double*,
               const double*, const double*, const double*, int64_t, int64_t)
