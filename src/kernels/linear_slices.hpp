// A linear layer's products cut into independent slices, one per thread
// (see parallel_slices.hpp): the forward and dw by output features o, dx by
// input features i. Each piece is a plain function of its slice, so the
// fused layer kernels (linear.cpp, weightnorm_linear.cpp) can add their own
// per-slice work around it while the slice is in the thread's cache.
// y (N,O), x (N,I), w (O,I), b (O).
#pragma once
#include <cstdint>
#include "kernels/isa.hpp"

#include "normlab/kernels.hpp"

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

// y[:, o0:o1] = x w[o0:o1, :]^T + b[o0:o1] (b may be null).
template <typename T>
void linear_forward_cols(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t I, int64_t O,
                         int64_t o0, int64_t o1) {
  if (o0 >= o1) return;
  if (b) {
    // Start from the broadcast bias and let the product accumulate onto it (beta = 1).
    for (int64_t n = 0; n < N; ++n) {
      T* yr = y + n * O;
#pragma omp simd
      for (int64_t o = o0; o < o1; ++o) yr[o] = b[o];
    }
  }
  gemm<T>(false, true, N, o1 - o0, I, T(1), x, I, w + o0 * I, I, b ? T(1) : T(0), y + o0, O);
}

// dx[:, i0:i1] = dy w[:, i0:i1].
template <typename T>
void linear_backward_dx_cols(T* dx, const T* dy, const T* w, int64_t N, int64_t I, int64_t O,
                             int64_t i0, int64_t i1) {
  if (i0 >= i1) return;
  gemm<T>(false, false, N, i1 - i0, O, T(1), dy, O, w + i0, I, T(0), dx + i0, I);
}

// dw[o0:o1, :] (+)= dy[:, o0:o1]^T x (accumulated or overwritten);
// db[o0:o1] += sum over n of dy[n, o0:o1] (db may be null), row after row as the plain loop.
template <typename T>
void linear_backward_dw_rows(T* dw, T* db, const T* dy, const T* x, int64_t N, int64_t I, int64_t O,
                             int64_t o0, int64_t o1, bool accumulate) {
  if (o0 >= o1) return;
  gemm<T>(true, false, o1 - o0, I, N, T(1), dy + o0, O, x, I, accumulate ? T(1) : T(0), dw + o0 * I,
          I);
  if (db)
    for (int64_t n = 0; n < N; ++n) {
      const T* dyr = dy + n * O;
#pragma omp simd
      for (int64_t o = o0; o < o1; ++o) db[o] += dyr[o];
    }
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
