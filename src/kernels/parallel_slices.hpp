// Splitting a kernel's output into one contiguous slice per thread, for the
// matrix products and the layers fused around them (gemm.cpp, linear.cpp,
// weightnorm_linear.cpp). Each thread then runs oneDNN's sgemm on its own
// slice: inside our parallel region oneDNN runs single-threaded, so one
// region per layer replaces one per product, and no thread writes another's
// output.
#pragma once
#include <omp.h>
#include "kernels/isa.hpp"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <utility>

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

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

// Runs body(t, team) for t in [0, team) on `threads` threads: in one
// parallel region if threads > 1 (team is the size OpenMP gave it), else
// body(0, 1) directly. An exception thrown by a body is rethrown here, once
// all threads are done, instead of ending the program.
template <typename Body>
void run_threads(int threads, const Body& body) {
  if (threads <= 1) {
    body(0, 1);
    return;
  }
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    try {
      body(omp_get_thread_num(), omp_get_num_threads());
    } catch (...) {
#pragma omp critical(normlab_run_threads)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// slice(begin, end) over [0, n) split as slice_of(n, align, ...) on `threads` threads.
template <typename Slice>
void run_slices(int threads, int64_t n, int64_t align, const Slice& slice) {
  run_threads(threads, [&](int t, int team) {
    const auto [begin, end] = slice_of(n, align, t, team);
    slice(begin, end);
  });
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
