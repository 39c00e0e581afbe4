// The default RMSNorm kernels, built like LayerNorm's (layernorm_fast.cpp):
// OpenMP over rows, vector loops over a row, the row read from memory once
// per pass over the batch. RMSNorm needs one statistic (the mean of squares,
// no mean to subtract), so the forward is one sum and one map per row.
// Tested against ref:: in tests/test_rmsnorm.cpp; timings in docs/performance.md.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/isa.hpp"
#include "kernels/norm_common.hpp"
#include "normlab/rmsnorm.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* gamma, int64_t N, int64_t D, T eps) {
  const bool stream = detail::stream_output<T>(N * D);
  // |x * rstd| <= sqrt(sum x^2) * rstd (<= sqrt(D)); times gamma it stays a
  // float while that bound times max |gamma| does.
  double gmax = gamma ? 0.0 : 1.0;
  for (int64_t d = 0; gamma && d < D; ++d) gmax = std::max(gmax, std::abs(double(gamma[d])));
  const double inv_d = 1.0 / static_cast<double>(D);
#pragma omp parallel num_threads(detail::kernel_threads(N* D))
  {
#pragma omp for schedule(static) nowait
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      T* yr = y + n * D;
      if (n + 1 < N) detail::prefetch_row(xr + D, D);
      // Squares and their sum in double: a float square overflows from
      // |x| ~ 1.8e19 on, a double one never (PyTorch's float kernel gives
      // y = 0 for such rows; here they come out right).
      const double ss = detail::sum_row_wide<T>(
          D, [](auto v) { return v * v; }, xr);
      const double rd = 1.0 / std::sqrt(ss * inv_d + static_cast<double>(eps));
      const T r = static_cast<T>(rd);
      rstd[n] = r;
      // In T: x * r, then times gamma. An rstd that is not a normal float
      // (rms near float's largest values, or eps = 0 on a zero row), or a
      // product that could overflow, takes the row as ref:: does (in double;
      // NaN and inf give the same NaN and 0 as there).
      if (!(detail::fold_coeff_ok<T>(rd) && detail::fold_product_ok<T>(std::sqrt(ss) * rd, gmax))) {
        for (int64_t d = 0; d < D; ++d) {
          double out = xr[d] * rd;
          if (gamma) out *= gamma[d];
          yr[d] = static_cast<T>(out);
        }
        continue;
      }
      if (gamma)
        detail::map_row(
            yr, D, stream, [=](auto v, auto g) { return (v * r) * g; }, xr, gamma);
      else
        detail::map_row(
            yr, D, stream, [=](auto v) { return v * r; }, xr);
    }
    if (stream) detail::stream_fence();
  }
}

// One pass over a row, from memory: returns sum g * xhat (g = dy * gamma,
// xhat = x * r) summed in T in two vector accumulators (PyTorch's float
// backward sums in float too), and adds the row's share of dgamma, dy * xhat,
// into dg (this thread's partial sums, in L1) if DG.
template <bool Gamma, bool DG, typename T>
T grad_row_pass(const T* x, const T* dy, const T* gamma, T* dg, T r, int64_t D) {
  using V = detail::Vec<T>;
  constexpr int64_t W = static_cast<int64_t>(detail::kVecBytes / sizeof(T));
  V a0{}, a1{};
  const auto step = [&](int64_t i, V& a) {
    const V xh = detail::load(x + i) * r;
    const V dv = detail::load(dy + i);
    V g = dv;
    if constexpr (Gamma) g *= detail::load(gamma + i);
    a += g * xh;
    if constexpr (DG) {
      const V d = detail::load(dg + i) + dv * xh;
      std::memcpy(dg + i, &d, sizeof d);
    }
  };
  int64_t i = 0;
  for (; i + 2 * W <= D; i += 2 * W) {
    step(i, a0);
    step(i + W, a1);
  }
  for (; i + W <= D; i += W) step(i, a0);
  T s = detail::hsum<T>(a0 + a1);
  for (; i < D; ++i) {
    const T xh = x[i] * r, dv = dy[i];
    s += (Gamma ? dv * gamma[i] : dv) * xh;
    if constexpr (DG) dg[i] += dv * xh;
  }
  return s;
}

template <typename T>
T grad_row(const T* x, const T* dy, const T* gamma, T* dg, T r, int64_t D) {
  if (gamma)
    return dg ? grad_row_pass<true, true>(x, dy, gamma, dg, r, D)
              : grad_row_pass<true, false>(x, dy, gamma, dg, r, D);
  return dg ? grad_row_pass<false, true>(x, dy, gamma, dg, r, D)
            : grad_row_pass<false, false>(x, dy, gamma, dg, r, D);
}

// Per row, with g = dy * gamma and xhat = x * rstd (docs/derivations.md):
//   dx = rstd * (g - xhat * mean(g * xhat)) = g * rstd + x * c1,
//   c1 = -rstd^2 * mean(g * xhat)
// The first pass streams the row in (sum g * xhat, and dgamma's share); dx
// then works on it in L1/L2.
template <typename T>
void rmsnorm_backward(T* dx, T* dgamma, const T* dy, const T* x, const T* rstd, const T* gamma,
                      int64_t N, int64_t D) {
  const int threads = detail::kernel_threads(N * D);
  const bool stream = detail::stream_output<T>(N * D);
  const int64_t Dp = detail::padded(D);
  T* partial = dgamma ? detail::scratch<T>(Dp * threads) : nullptr;  // per thread: dgamma (D)
  const double inv_d = 1.0 / static_cast<double>(D);
#pragma omp parallel num_threads(threads)
  {
    T* dg = partial ? partial + Dp * omp_get_thread_num() : nullptr;
    if (dg) std::fill(dg, dg + Dp, T(0));
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* xr = x + n * D;
      const T* dyr = dy + n * D;
      T* dxr = dx ? dx + n * D : nullptr;
      if (!dxr && !dg) continue;
      const T r = rstd[n];
      const double rd = r;
      if (n + 1 < N) {
        detail::prefetch_row(xr + D, D);
        detail::prefetch_row(dyr + D, D);
      }
      // dgamma's share in T: xhat = x * r is at most ~sqrt(D) for this row's
      // rstd (an rstd that is subnormal, 0 or inf gives what ref:: gives from
      // the same saved value, to rounding).
      if (!dxr) {
        grad_row(xr, dyr, static_cast<const T*>(nullptr), dg, r, D);
        continue;
      }
      const double sgx = grad_row(xr, dyr, gamma, dg, r, D);
      const double c1 = -rd * rd * (sgx * inv_d);
      // In T: dy * gamma * r plus x * c1. Coefficients must be normal floats
      // (or 0), the sum finite, and an output that overflowed anyway (huge dy
      // or gamma) is seen by map_row_finite: such rows are summed again in
      // double and computed as ref:: does.
      if (std::isfinite(sgx) && detail::fold_coeff_ok<T>(rd) && detail::fold_coeff_ok<T>(c1)) {
        const T c1t = static_cast<T>(c1);
        const bool ok =
            gamma ? detail::map_row_finite(
                        dxr, D, stream,
                        [=](auto v, auto dv, auto gm) { return (dv * gm) * r + v * c1t; }, xr, dyr,
                        gamma)
                  : detail::map_row_finite(
                        dxr, D, stream, [=](auto v, auto dv) { return dv * r + v * c1t; }, xr, dyr);
        if (ok) continue;
      }
      const double s =
          gamma ? detail::sum_row_wide<T>(
                      D, [](auto a, auto b, auto c) { return a * b * c; }, dyr, gamma, xr)
                : detail::sum_row_wide<T>(
                      D, [](auto a, auto b) { return a * b; }, dyr, xr);
      const double mgx = s * inv_d * rd;  // mean(g * xhat)
      for (int64_t d = 0; d < D; ++d) {
        const double g = static_cast<double>(dyr[d]) * (gamma ? gamma[d] : T(1));
        dxr[d] = static_cast<T>(rd * (g - xr[d] * rd * mgx));
      }
    }
    if (stream) detail::stream_fence();
    if (dgamma) {
      // The threads' partial sums, added into the accumulating gradient.
      const int nt = omp_get_num_threads();
#pragma omp for schedule(static)
      for (int64_t d = 0; d < D; ++d) {
        T s = 0;
        for (int t = 0; t < nt; ++t) s += partial[Dp * t + d];
        dgamma[d] += s;
      }
    }
  }
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

NORMLAB_KERNEL(rmsnorm_forward, float, float*, float*, const float*, const float*, int64_t, int64_t,
               float)
NORMLAB_KERNEL(rmsnorm_forward, double, double*, double*, const double*, const double*, int64_t,
               int64_t, double)
NORMLAB_KERNEL(rmsnorm_backward, float, float*, float*, const float*, const float*, const float*,
               const float*, int64_t, int64_t)
NORMLAB_KERNEL(rmsnorm_backward, double, double*, double*, const double*, const double*,
               const double*, const double*, int64_t, int64_t)
