// WeightNormLinear (per-row norms) forward and backward without forming w,
// each in one parallel region (see kernels.hpp; derivation in
// docs/derivations.md). Thread t owns output features o in its slice: their
// norms, its columns of z = x v^T and y, its rows of dv; and a slice of dx's
// columns. Not forming w saves writing and reading a weight-sized matrix in
// the forward and the scratch dw in the backward: for the seed-001 MLP 6.4 MB
// less to move per step, and a working set that fits the caches better.
#include <omp.h>

#include <cmath>

#include "kernels/isa.hpp"
#include "kernels/parallel_slices.hpp"
#include "kernels/vector_norm.hpp"
#include "normlab/kernels.hpp"
#include "normlab/profile.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

template <typename T>
void weightnorm_linear_forward(T* y, T* z, T* norm, T* scale, const T* x, const T* v, const T* g,
                               const T* b, int64_t N, int64_t I, int64_t O, bool relu) {
  const int threads = detail::slice_threads(2.0 * static_cast<double>(N) * I * O);
  detail::run_slices(threads, O, 16, [&](int64_t o0, int64_t o1) {
    if (o0 >= o1) return;
    {
      const profile::Scope timer("weightnorm forward");  // thread 0's share, if profiling
      for (int64_t o = o0; o < o1; ++o) {                // norm2: no overflow (v = [1e20, 1, 1])
        const double n = detail::norm2(v + o * I, I);
        norm[o] = static_cast<T>(n);
        scale[o] = static_cast<T>(g[o] / n);
      }
    }
    gemm<T>(false, true, N, o1 - o0, I, T(1), x, I, v + o0 * I, I, T(0), z + o0, O);
    for (int64_t n = 0; n < N; ++n) {
      const T* zr = z + n * O;
      T* yr = y + n * O;
      if (b) {
#pragma omp simd
        for (int64_t o = o0; o < o1; ++o) yr[o] = zr[o] * scale[o] + b[o];
      } else {
#pragma omp simd
        for (int64_t o = o0; o < o1; ++o) yr[o] = zr[o] * scale[o];
      }
      if (relu) {
#pragma omp simd
        for (int64_t o = o0; o < o1; ++o) yr[o] = yr[o] < T(0) ? T(0) : yr[o];
      }
    }
  });
}

// With D = dy^T x (the gradient of w), c_o = D_o . v_o = sum_n dy[n,o] z[n,o]:
//   dg_o += c_o / n_o,   dv_o += s_o D_o - (g_o c_o / n_o^3) v_o = ((dy * s)^T x)_o - ...,
//   dx = dy w = (dy * s) v,   db_o += sum_n dy[n,o].
template <typename T>
void weightnorm_linear_backward(T* dx, T* dv, T* dg, T* db, T* dys, T* dot, const T* dy, const T* x,
                                const T* z, const T* v, const T* g, const T* norm, const T* scale,
                                int64_t N, int64_t I, int64_t O, const T* relu_y) {
  const int threads = detail::slice_threads((dx ? 4.0 : 2.0) * static_cast<double>(N) * I * O);
  detail::run_threads(threads, [&](int t, int team) {
    // Plain variables, not a structured binding: clang 14 cannot use a binding
    // inside an `omp simd` loop (the fuzz build uses clang).
    const auto o_slice = detail::slice_of(O, 16, t, team);
    const int64_t o0 = o_slice.first, o1 = o_slice.second;
    {
      const profile::Scope timer("weightnorm backward");  // thread 0's share, if profiling
      for (int64_t o = o0; o < o1; ++o) dot[o] = 0;
      for (int64_t n = 0; n < N; ++n) {
        const T* dyr = dy + n * O;
        const T* zr = z + n * O;
        T* dysr = dys + n * O;
        if (relu_y) {
          // A fused ReLU: dy counts only where its output is positive. The masked
          // row goes to dys first and is scaled there below.
          const T* yr = relu_y + n * O;
#pragma omp simd
          for (int64_t o = o0; o < o1; ++o) dysr[o] = yr[o] <= T(0) ? T(0) : dyr[o];
          dyr = dysr;
        }
        if (db) {
#pragma omp simd
          for (int64_t o = o0; o < o1; ++o) db[o] += dyr[o];
        }
#pragma omp simd
        for (int64_t o = o0; o < o1; ++o) {
          dot[o] += dyr[o] * zr[o];
          dysr[o] = dyr[o] * scale[o];
        }
      }
      for (int64_t o = o0; o < o1; ++o)
        dg[o] += static_cast<T>(dot[o] / static_cast<double>(norm[o]));
    }
    // dx needs every column of dys. (team > 1 only in run_threads' own region: an
    // orphaned barrier would otherwise bind to a caller's region.)
    if (team > 1) {
#pragma omp barrier
    }
    if (dx) {
      const auto [i0, i1] = detail::slice_of(I, 16, t, team);
      if (i0 < i1) gemm<T>(false, false, N, i1 - i0, O, T(1), dys, O, v + i0, I, T(0), dx + i0, I);
    }
    if (o0 >= o1) return;
    gemm<T>(true, false, o1 - o0, I, N, T(1), dys + o0, O, x, I, T(1), dv + o0 * I, I);
    const profile::Scope timer("weightnorm backward");
    for (int64_t o = o0; o < o1; ++o) {
      // g c / n^3 in double and applied in double: in T it can be subnormal or
      // overflow (n = 1e20: 1e-60) where its products with v are ordinary numbers.
      const double n = norm[o];
      const double c = (g[o] / n) * (static_cast<double>(dot[o]) / n) / n;
      const T* vr = v + o * I;
      T* dvr = dv + o * I;
#pragma omp simd
      for (int64_t i = 0; i < I; ++i) dvr[i] = static_cast<T>(dvr[i] - c * vr[i]);
    }
  });
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

#define NORMLAB_INSTANTIATE(T)                                                                \
  NORMLAB_KERNEL(weightnorm_linear_forward, T, T*, T*, T*, T*, const T*, const T*, const T*,  \
                 const T*, int64_t, int64_t, int64_t, bool)                                   \
  NORMLAB_KERNEL(weightnorm_linear_backward, T, T*, T*, T*, T*, T*, T*, const T*, const T*,   \
                 const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                 const T*)
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE
