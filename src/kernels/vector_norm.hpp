// The Euclidean norm of a vector, without overflow or underflow: the one
// helper every norm in normlab goes through (weight norm per row, per column,
// over the whole matrix; the depth experiment's output norm).
//
// A sum of squares kept in the data's own type overflows long before the norm
// does: float squares pass 3.4e38 once a value passes 1.8e19 (v = [1e20, 1, 1]
// has the norm 1e20, but a float sum of squares gives inf and then g / inf = 0
// weights), and squares of values below 1e-23 underflow to 0. So:
//   * float data: squares and sums in double. A float square lies in
//     [1e-90, 1.2e77] and a double sum of up to 2^53 of them neither overflows
//     nor underflows, so no scaling is needed and the vector loop stays one
//     convert and one FMA per value;
//   * double data: scaled as BLAS dnrm2 does: if the largest |v| puts the
//     squares outside double's comfortable range, the sum is taken of
//     (v / amax)^2 and the norm is amax * sqrt(sum).
// Results are returned in double; callers form g / norm in double and round
// once (the norm itself may exceed float's range: then the stored float norm
// is inf, as PyTorch's).
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>
#include "kernels/isa.hpp"

#include "kernels/simd.hpp"

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

// Largest |v| for which double squares and their sums stay far from overflow
// and underflow (2^+-230: squares within 2^+-460, sums of 2^53 terms fine).
inline constexpr double kNormSafeBig = 0x1p230, kNormSafeSmall = 0x1p-230;

// ||v|| over n contiguous values.
template <typename T>
double norm2(const T* v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return std::sqrt(sum_row_wide<float>(
        n, [](auto a) { return a * a; }, v));
  } else {
    double amax = 0;
#pragma omp simd reduction(max : amax)
    for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::abs(static_cast<double>(v[i])));
    if (!(amax > 0) || !std::isfinite(amax)) {
      // 0, inf, or NaN somewhere (max skips NaN lanes: sum them to propagate).
      double s = 0;
      for (int64_t i = 0; i < n; ++i) s += static_cast<double>(v[i]) * v[i];
      return std::sqrt(s);
    }
    if (amax < kNormSafeBig && amax > kNormSafeSmall)
      return std::sqrt(sum_row_wide<T>(
          n, [](auto a) { return a * a; }, v));
    const double inv = 1.0 / amax;  // each scaled term is off by an ulp at most
    const double s = sum_row_wide<T>(
        n,
        [=](auto a) {
          const auto t = a * inv;
          return t * t;
        },
        v);
    return amax * std::sqrt(s);
  }
}

// The norms of the I columns of a row-major (O, I) matrix: out[i] = ||v[:, i]||,
// rows read contiguously. `work` is scratch of 2 * I doubles.
template <typename T>
void column_norms(double* out, double* work, const T* v, int64_t O, int64_t I) {
  double* amax = work;
  double* ss = work + I;
  for (int64_t i = 0; i < I; ++i) amax[i] = 0, ss[i] = 0;
  if constexpr (!std::is_same_v<T, float>) {
    for (int64_t o = 0; o < O; ++o) {
      const T* vr = v + o * I;
#pragma omp simd
      for (int64_t i = 0; i < I; ++i) amax[i] = std::max(amax[i], std::abs(double(vr[i])));
    }
    // Unscaled where the column's squares are safe: scale 1.
    for (int64_t i = 0; i < I; ++i)
      amax[i] = (amax[i] < kNormSafeBig && amax[i] > kNormSafeSmall) || !(amax[i] > 0) ||
                        !std::isfinite(amax[i])
                    ? 1.0
                    : amax[i];
  } else {
    for (int64_t i = 0; i < I; ++i) amax[i] = 1.0;
  }
  for (int64_t o = 0; o < O; ++o) {
    const T* vr = v + o * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const double t = static_cast<double>(vr[i]) / amax[i];
      ss[i] += t * t;
    }
  }
  for (int64_t i = 0; i < I; ++i) out[i] = amax[i] * std::sqrt(ss[i]);
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
