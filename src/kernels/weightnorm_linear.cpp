// WeightNormLinear (per-row norms) forward and backward, each in one parallel
// region. Thread t owns output rows o in its slice: it normalizes them and
// multiplies them into its columns of y (forward); it computes its rows of dw,
// carries them into dv and dg right away, and adds its part of db (backward),
// besides its slice of dx columns. Nothing is shared between threads but the
// read-only inputs, so no barrier is needed inside a pass.
#include "kernels/linear_slices.hpp"
#include "kernels/parallel_slices.hpp"
#include "kernels/weightnorm_rows.hpp"
#include "normlab/kernels.hpp"
#include "normlab/profile.hpp"

namespace normlab {

template <typename T>
void weightnorm_linear_forward(T* y, T* w, T* norm, const T* x, const T* v, const T* g, const T* b,
                               int64_t N, int64_t I, int64_t O) {
  const int threads = detail::slice_threads(2.0 * static_cast<double>(N) * I * O);
  detail::run_slices(threads, O, 16, [&](int64_t o0, int64_t o1) {
    {
      const profile::Scope timer("weightnorm forward");  // thread 0's share, if profiling
      detail::weightnorm_rows_forward(w, norm, v, g, I, o0, o1);
    }
    detail::linear_forward_cols(y, x, w, b, N, I, O, o0, o1);
  });
}

template <typename T>
void weightnorm_linear_backward(T* dx, T* dw, T* dv, T* dg, T* db, const T* dy, const T* x,
                                const T* w, const T* v, const T* g, const T* norm, int64_t N,
                                int64_t I, int64_t O) {
  const int threads = detail::slice_threads((dx ? 4.0 : 2.0) * static_cast<double>(N) * I * O);
  detail::run_threads(threads, [&](int t, int team) {
    if (dx) {
      const auto [i0, i1] = detail::slice_of(I, 16, t, team);
      detail::linear_backward_dx_cols(dx, dy, w, N, I, O, i0, i1);
    }
    const auto [o0, o1] = detail::slice_of(O, 8, t, team);
    detail::linear_backward_dw_rows(dw, db, dy, x, N, I, O, o0, o1, false);
    const profile::Scope timer("weightnorm backward");
    detail::weightnorm_rows_backward(dv, dg, dw, v, g, norm, I, o0, o1);
  });
}

#define NORMLAB_INSTANTIATE(T)                                                                   \
  template void weightnorm_linear_forward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, \
                                             int64_t, int64_t, int64_t);                         \
  template void weightnorm_linear_backward<T>(T*, T*, T*, T*, T*, const T*, const T*, const T*,  \
                                              const T*, const T*, const T*, int64_t, int64_t,    \
                                              int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
