#include "normlab/kernels.hpp"

namespace normlab {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, const T* b, int64_t N, int64_t I, int64_t O) {
  if (b) {
    // Start from the broadcast bias and let the product accumulate onto it (beta = 1).
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) y[n * O + o] = b[o];
  }
  gemm<T>(false, true, N, O, I, T(1), x, I, w, I, b ? T(1) : T(0), y, O);
}

template <typename T>
void linear_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, int64_t N, int64_t I,
                     int64_t O) {
  if (dx) gemm<T>(false, false, N, I, O, T(1), dy, O, w, I, T(0), dx, I);
  gemm<T>(true, false, O, I, N, T(1), dy, O, x, I, T(1), dw, I);
  if (db) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < O; ++o) db[o] += dy[n * O + o];
  }
}

#define NORMLAB_INSTANTIATE(T)                                                                  \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                   int64_t);
NORMLAB_INSTANTIATE(float)
NORMLAB_INSTANTIATE(double)
#undef NORMLAB_INSTANTIATE

}  // namespace normlab
