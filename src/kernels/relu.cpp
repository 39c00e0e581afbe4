#include "kernels/isa.hpp"
#include "normlab/kernels.hpp"

// Compiled once per ISA level (kernels/isa.hpp).
namespace normlab::NORMLAB_ISA_NAMESPACE {

// A batch of activations (128 x 512: 0.25 MB in, 0.25 MB out) is worth
// splitting: one thread moves it well below the caches' speed.
constexpr int64_t kParallelMin = 1 << 15;

// PyTorch's relu (clamp_min) and threshold_backward, comparison for comparison:
// a NaN input stays NaN (x < 0 is false) and so does -0.0, and the gradient is
// masked only where the output is <= 0, so a NaN output passes dy through. The
// trainer's non-finite check then sees the NaN that PyTorch would show it.
template <typename T>
void relu_forward(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}

template <typename T>
void relu_backward(T* dx, const T* dy, const T* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] <= T(0) ? T(0) : dy[i];
}

}  // namespace normlab::NORMLAB_ISA_NAMESPACE

NORMLAB_KERNEL(relu_forward, float, float*, const float*, int64_t)
NORMLAB_KERNEL(relu_forward, double, double*, const double*, int64_t)
NORMLAB_KERNEL(relu_backward, float, float*, const float*, const float*, int64_t)
NORMLAB_KERNEL(relu_backward, double, double*, const double*, const double*, int64_t)
