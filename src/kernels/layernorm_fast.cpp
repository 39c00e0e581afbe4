// The default LayerNorm kernels: OpenMP over rows, vector loops over a row.
// A row (D values) stays in L1/L2 while it is worked on, so x is read from
// memory once and y (or dx) written once. Tested against ref:: in
// tests/test_kernels_fast.cpp; timings in docs/performance.md.
#include <algorithm>
#include <cmath>
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
      // Moments around the row's first value (exact centring for large means, see
      // shifted_moments), summed in double; m is the mean of x - shift.
      if (n + 1 < N) detail::prefetch_row(xr + D, D);
      const T shift = xr[0];
      const detail::Moments mo = detail::shifted_moments(xr, D, static_cast<double>(shift));
      const double rd = 1.0 / std::sqrt(mo.m2 / static_cast<double>(D) + static_cast<double>(eps));
      const T m = static_cast<T>(mo.mean), r = static_cast<T>(rd);
      mean[n] = static_cast<T>(shift + mo.mean);
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
        exact_row(yr, xr, gamma, beta, D, static_cast<double>(shift) + mo.mean, rd);
        continue;
      }
      if (gamma && beta)
        detail::map_row(
            yr, D, stream, [=](auto v, auto g, auto b) { return ((v - shift - m) * r) * g + b; },
            xr, gamma, beta);
      else if (gamma)
        detail::map_row(
            yr, D, stream, [=](auto v, auto g) { return ((v - shift - m) * r) * g; }, xr, gamma);
      else if (beta)
        detail::map_row(
            yr, D, stream, [=](auto v, auto b) { return (v - shift) * r + (b - m * r); }, xr, beta);
      else
        detail::map_row(
            yr, D, stream, [=](auto v) { return (v - shift) * r - m * r; }, xr);
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
      const bool dx_ok = stats_ok && gmax < detail::fold_big<T> &&
                         detail::fold_product_ok<T>(gmax, rd) && detail::fold_coeff_ok<T>(c1) &&
                         detail::fold_product_ok<T>(dev, c1) && std::abs(c0) < detail::fold_big<T>;
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
            [=](auto v, auto dv, auto gm) { return (dv * gm) * r + (v - m) * c1t + c0t; }, xr, dyr,
            gamma);
      else
        detail::map_row(
            dxr, D, stream, [=](auto v, auto dv) { return dv * r + (v - m) * c1t + c0t; }, xr, dyr);
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
