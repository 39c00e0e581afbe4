// Linear forward and backward, each in one parallel region: thread t takes
// output features o in its slice for the forward, dw and db, and input
// features i in its slice for dx (linear_slices.hpp), so the bias and db
// passes run on data the thread has just produced.
#include <omp.h>

#include "kernels/isa.hpp"
#include "kernels/linear_slices.hpp"
#include "kernels/parallel_slices.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t I, int64_t O) {
  const int threads = detail::slice_threads(2.0 * static_cast<double>(N) * I * O);
  detail::run_slices(threads, O, 16, [&](int64_t o0, int64_t o1) {
    detail::linear_forward_cols(y, x, w, b, N, I, O, o0, o1);
  });
}

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t I,
                     int64_t O) {
  const int threads = detail::slice_threads((dx ? 4.0 : 2.0) * static_cast<double>(N) * I * O);
  detail::run_threads(threads, [&](int t, int team) {
    if (dx) {
      const auto [i0, i1] = detail::slice_of(I, 16, t, team);
      detail::linear_backward_dx_cols(dx, dy, w, N, I, O, i0, i1);
    }
    const auto [o0, o1] = detail::slice_of(O, 8, t, team);
    detail::linear_backward_dw_rows(dw, db, dy, x, N, I, O, o0, o1, true);
  });
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                   \
  NORMLAB_KERNEL(linear_forward, T, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t) \
  NORMLAB_KERNEL(linear_backward, T, T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                 int64_t)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
