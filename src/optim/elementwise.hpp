// Helpers for the optimizers' fused loops over the flat parameter blocks.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "normlab/optim.hpp"

namespace normlab {

// a * b + c as PyTorch 1.13's CPU kernels compute `c.add_(b, alpha=a)` and
// `c.addcmul_(..)`: fused (one rounding) when the CPU has FMA, as they are in
// its AVX2 kernels. With FMA every optimizer fixture matches PyTorch bit for
// bit; without it (portable build) results differ in the last bit.
inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Loops over fewer elements than this are not worth waking the threads for.
inline constexpr int64_t kParallelElementwiseMin = 1 << 15;

// kernel(begin, end) over [0, n): in one parallel region, each thread one
// contiguous range with boundaries on 64-byte lines (16 floats), when n is
// large enough; else one call over everything. Every element is computed
// alone, so the result is the same for any thread count; the kernel's plain
// loop is what the compiler vectorises.
template <typename Kernel>
void parallel_ranges(int64_t n, const Kernel& kernel) {
  if (n < kParallelElementwiseMin || omp_in_parallel() || omp_get_max_threads() == 1) {
    if (n > 0) kernel(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunk = ((n + threads - 1) / threads + 15) / 16 * 16;
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    if (begin < end) kernel(begin, end);
  }
}

// Each thread's range cut to the runs of parameters, so that the padding
// between parameters is never read or written (with eps = 0, Adam would turn
// its zeros into 0/0).
template <typename Kernel>
void Optimizer::for_each_range(const Kernel& kernel) const {
  parallel_ranges(flat_size_, [&](int64_t begin, int64_t end) {
    for (const auto& segment : segments_) {
      const int64_t b = std::max(begin, segment.first), e = std::min(end, segment.second);
      if (b < e) kernel(b, e);
    }
  });
}

}  // namespace normlab
