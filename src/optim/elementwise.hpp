// Helpers for the optimizers' fused per-tensor loops.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

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

// Steps over fewer elements than this are not worth waking the threads for.
inline constexpr int64_t kParallelElementwiseMin = 1 << 15;

// kernel(i, begin, end) for every tensor i < count over [0, numel(i)), in one
// parallel region per step (a barrier per tensor costs more than the work of
// a small one): each thread takes one contiguous range of every big tensor
// (boundaries on 64-byte lines) and whole small tensors in turn. Every element
// is computed alone, so the result is the same for any thread count; the
// kernel's plain loop is what the compiler vectorises.
template <typename Numel, typename Kernel>
void parallel_tensor_ranges(size_t count, const Numel& numel, const Kernel& kernel) {
  int64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += numel(i);
  if (total < kParallelElementwiseMin || omp_in_parallel() || omp_get_max_threads() == 1) {
    for (size_t i = 0; i < count; ++i) kernel(i, int64_t{0}, numel(i));
    return;
  }
#pragma omp parallel
  {
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t small = 0;  // small tensors go to the threads in turn
    for (size_t i = 0; i < count; ++i) {
      const int64_t n = numel(i);
      if (n < kParallelElementwiseMin) {
        if (small++ % threads == t) kernel(i, int64_t{0}, n);
        continue;
      }
      const int64_t chunk = ((n + threads - 1) / threads + 15) / 16 * 16;
      const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
      if (begin < end) kernel(i, begin, end);
    }
  }
}

}  // namespace normlab
