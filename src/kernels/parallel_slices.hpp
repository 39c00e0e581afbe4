// Splitting a kernel's output into one contiguous slice per thread, for the
// matrix products and the layers fused around them (gemm.cpp, linear.cpp,
// weightnorm_linear.cpp). Each thread then runs oneDNN's sgemm on its own
// slice: inside our parallel region oneDNN runs single-threaded, so one
// region per layer replaces one per product, and no thread writes another's
// output.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <utility>

namespace normlab::detail {

// Products smaller than this run on one thread: waking a second one costs
// more than it saves (the MLP's 256->10 layer, ~1 MFLOP, is below).
inline constexpr double kParallelMinFlop = 4e6;

// How many threads a piece of work of `flop` FLOP should use from here:
// 1 inside a parallel region or for small work, else OpenMP's count.
inline int slice_threads(double flop) {
  if (omp_in_parallel() || flop < kParallelMinFlop) return 1;
  return omp_get_max_threads();
}

// Thread t's part [begin, end) of [0, n) split in `threads` contiguous slices
// that start on multiples of `align` (64-byte lines for align = 16 floats).
// Trailing threads may get an empty slice when n is small.
inline std::pair<int64_t, int64_t> slice_of(int64_t n, int64_t align, int t, int threads) {
  const int64_t per = ((n + threads - 1) / threads + align - 1) / align * align;
  const int64_t begin = std::min(n, per * t);
  return {begin, std::min(n, begin + per)};
}

}  // namespace normlab::detail
