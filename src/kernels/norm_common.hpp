// Pieces shared by the fast LayerNorm and BatchNorm kernels (layernorm_fast.cpp,
// batchnorm_fast.cpp). Why the kernels look the way they do: docs/performance.md.
#pragma once
#include <omp.h>
#include "kernels/isa.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/simd.hpp"

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

// Below this many elements a kernel stays on the calling thread: waking the
// OpenMP pool (a few microseconds) would cost more than the work.
inline constexpr int64_t kParallelMinElems = int64_t{1} << 14;

// Threads a kernel over n elements will use: the pool's size (the same GNU
// OpenMP pool oneDNN uses, so the two never oversubscribe) or 1 for small work,
// and 1 inside a parallel region (Ghost BatchNorm runs BatchNorm's kernels on
// its virtual batches from the threads of its own region).
inline int kernel_threads(int64_t n) {
  return n >= kParallelMinElems && !omp_in_parallel() ? omp_get_max_threads() : 1;
}

// Whether Ghost BatchNorm's threads take whole virtual batches (G of them,
// over N * C * L values) rather than sharing each one.
inline bool ghost_by_batches(int64_t G, int64_t N, int64_t C, int64_t L) {
  return G > 1 && G >= kernel_threads(N * C * L);
}

// Outputs of at least this many bytes are written with non-temporal stores
// (map_row): they would not stay in the cores' L2 anyway, and a plain store
// first reads each destination line (a third of a copy's memory traffic).
// Smaller outputs stay in cache for the next layer.
inline constexpr int64_t kStreamMinBytes = int64_t{4} << 20;

template <typename T>
bool stream_output(int64_t n) {
  return n * static_cast<int64_t>(sizeof(T)) >= kStreamMinBytes;
}

// Rows per block in BatchNorm's backward: eval writes dx while a block of dy
// is cached.
inline constexpr int64_t kBlockRows = 64;

// Asks for the first 8 KB of a row the thread will work on next. Row kernels
// alternate a pass that streams a row in from memory with passes over it in
// L1; during those the hardware prefetchers stall, and the next row starts
// with cache misses. Measured: LayerNorm forward on 4096 x 1024 floats 20-25%
// faster with the next row requested up front.
template <typename T>
void prefetch_row(const T* row, int64_t n) {
  const int64_t bytes = std::min<int64_t>(n * static_cast<int64_t>(sizeof(T)), int64_t{8} << 10);
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

// A slice length rounded up to whole 64-byte lines, so threads' partial sums
// never share a cache line.
inline int64_t padded(int64_t n) {
  return (n + 15) / 16 * 16;
}

// Scratch owned by the calling thread: it grows to the largest request and is
// then reused, so the kernels allocate nothing in steady state. One buffer per
// element type and slot; a kernel takes each at most once and slices it. The
// start is 64-byte aligned, so slices of padded() lengths never share a line.
template <typename T, int Slot = 0>
T* scratch(int64_t n) {
  thread_local std::vector<T> buf;
  const int64_t extra = 64 / sizeof(T);
  if (static_cast<int64_t>(buf.size()) < n + extra) buf.resize(static_cast<size_t>(n + extra));
  T* p = buf.data();
  while (reinterpret_cast<uintptr_t>(p) % 64 != 0) ++p;
  return p;
}

// Mean of (x - shift) and M2 = sum (x - shift - mean)^2 over n contiguous
// values, in one pass with every term and sum in double: S1 = sum d and
// S2 = sum d^2 with d = x - shift, M2 = S2 - S1^2 / n. Shifting by a value of
// the data (or near the mean) keeps large-mean inputs (1e4 + 0.01 * randn)
// exact, and then the one-pass formula loses at most ~n * 1e-16 relative
// ((mean - shift)^2 <= n * var when shift is a data value): invisible in
// float. Double sums make the mean as accurate as PyTorch's (which sums
// BatchNorm statistics in double on CPU) and squares of float values cannot
// overflow.
struct Moments {
  double mean, m2;
};
template <typename T>
Moments shifted_moments(const T* x, int64_t n, double shift) {
  constexpr int64_t W = kWideLanes;
  Vec<double> a0{}, a1{}, q0{}, q1{};
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    const Vec<double> d0 = load_wide(x + i) - shift, d1 = load_wide(x + i + W) - shift;
    a0 += d0;
    a1 += d1;
    q0 += d0 * d0;
    q1 += d1 * d1;
  }
  for (; i + W <= n; i += W) {
    const Vec<double> d0 = load_wide(x + i) - shift;
    a0 += d0;
    q0 += d0 * d0;
  }
  double s1 = hsum<double>(a0 + a1), s2 = hsum<double>(q0 + q1);
  for (; i < n; ++i) {
    const double d = x[i] - shift;
    s1 += d;
    s2 += d * d;
  }
  const double m = s1 / static_cast<double>(n);
  return {m, std::max(0.0, s2 - s1 * m)};
}

// ---- Folding coefficients without overflow or underflow ----
// The fast kernels fold per-row / per-channel constants (rstd * gamma, the
// mean's correction, the backward's coefficients) and evaluate the fold in T.
// A fold can overflow where the unfolded expression does not (rstd * gamma =
// inf times x - mean = 0 is NaN, where y = beta) or lose precision to
// subnormal coefficients. Each kernel bounds every intermediate of its folded
// expression from the statistics (in double) and, where a bound fails, computes
// that row or channel exactly as the reference does (in double): the results
// then equal ref:: wherever ref:: is finite (docs/numerics.md).
//
// A value below fold_big<T> can be added to a few others in T without
// overflowing; a coefficient is usable in T if it is 0 or a normal number
// below fold_big<T>.
template <typename T>
inline constexpr double fold_big = static_cast<double>(std::numeric_limits<T>::max()) / 64;
template <typename T>
bool fold_coeff_ok(double c) {
  const double a = std::abs(c);
  return a == 0 || (a >= static_cast<double>(std::numeric_limits<T>::min()) && a < fold_big<T>);
}
// |a * b| < fold_big<T>, with NaN false.
template <typename T>
bool fold_product_ok(double a, double b) {
  return std::abs(a) * std::abs(b) < fold_big<T>;
}

// Chan, Golub & LeVeque's merge of two (count, mean, M2) summaries into a.
inline void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b,
                       double m2_b) {
  if (n_b == 0) return;
  const double n = n_a + n_b, delta = mean_b - mean_a;
  mean_a += delta * (n_b / n);
  m2_a += m2_b + delta * delta * (n_a * n_b / n);
  n_a = n;
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
