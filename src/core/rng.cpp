#include "normlab/rng.hpp"

#include <cmath>
#include <numbers>

namespace normlab {

double Rng::normal() {
  // Box-Muller; 1 - u keeps the logarithm finite.
  const double u1 = 1.0 - uniform();
  const double u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

template <typename T>
void Rng::fill_uniform(T* out, int64_t n, double lo, double hi) {
  const uint64_t base = key_ + 0x9e3779b97f4a7c15ULL * (counter_ + 1);
  const T scale = static_cast<T>((hi - lo) * 0x1.0p-24);
  const T offset = static_cast<T>(lo);
  // 24 random bits per value: exactly representable in float, uniform on a 2^-24 grid.
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix64(base + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(i));
    out[i] = offset + scale * static_cast<T>(static_cast<int32_t>(r >> 40));
  }
  counter_ += static_cast<uint64_t>(n);
}

template <typename T>
void Rng::fill_normal(T* out, int64_t n, double mean, double stddev) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(mean + stddev * normal());
}

template void Rng::fill_uniform<float>(float*, int64_t, double, double);
template void Rng::fill_uniform<double>(double*, int64_t, double, double);
template void Rng::fill_normal<float>(float*, int64_t, double, double);
template void Rng::fill_normal<double>(double*, int64_t, double, double);

}  // namespace normlab
