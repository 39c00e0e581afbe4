// The two loop shapes of the normalization kernels, written once:
//   map_row: out[i] = f(in[i]...)            (normalize, dx)
//   sum_row: sum over i of f(in[i]...)       (row statistics)
// f is a generic lambda, called on scalars or on whole vectors (GCC/Clang
// vector extensions, 64/32/16 bytes for AVX-512/AVX/other), so each kernel
// states its arithmetic once and stays a few lines long.
#pragma once
#include "kernels/isa.hpp"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Per-ISA copies: see kernels/isa.hpp.
namespace normlab::detail {
inline namespace NORMLAB_ISA_NAMESPACE {

#if defined(__AVX512F__)
inline constexpr size_t kVecBytes = 64;
#elif defined(__AVX__)
inline constexpr size_t kVecBytes = 32;
#else
inline constexpr size_t kVecBytes = 16;
#endif

template <typename T, size_t Bytes = kVecBytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
template <typename T, size_t Bytes = kVecBytes>
using Vec = typename VecOf<T, Bytes>::type;

template <typename T>
Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The sum of a vector's lanes: add the halves until one lane is left.
template <typename T, size_t B = kVecBytes>
T hsum(Vec<T, B> v) {
  if constexpr (B == sizeof(T)) {
    return v[0];
  } else {
    Vec<T, B / 2> lo, hi;
    std::memcpy(&lo, &v, B / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return hsum<T, B / 2>(lo + hi);
  }
}

// A non-temporal store of one vector to a kVecBytes-aligned address: the line
// goes to memory without being read first and without evicting cached data.
template <typename T>
void stream_store(T* p, Vec<T> v) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), reinterpret_cast<__m512i>(v));
#elif defined(__AVX__)
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(v));
#elif defined(__SSE2__)
  _mm_stream_si128(reinterpret_cast<__m128i*>(p), reinterpret_cast<__m128i>(v));
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// Orders this thread's streaming stores before what follows (the barrier after
// which other threads may read them).
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// out[i] = f(in[i]...) for i in [0, n). Plain: an `omp simd` loop. Streaming:
// non-temporal vector stores interleaved with the loads (after a scalar head
// up to the first aligned element).
template <typename T, typename F, typename... In>
void map_row(T* out, int64_t n, bool stream, F f, const In*... in) {
  if (!stream) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = f(in[i]...);
    return;
  }
  constexpr int64_t W = kVecBytes / sizeof(T);
  int64_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(out + i) % kVecBytes != 0; ++i) out[i] = f(in[i]...);
  for (; i + W <= n; i += W) stream_store(out + i, f(load(in + i)...));
  for (; i < n; ++i) out[i] = f(in[i]...);
}

// map_row that also reports whether every output is finite: for each output
// vector r, z = r - r is 0, or NaN for an inf or NaN lane, and z != z is ORed
// into a mask (a one-cycle dependency chain, so the loop keeps map_row's
// speed). Kernels use it where a fold may overflow on inputs they have no
// bound for, and redo a row whose outputs are not all finite.
template <typename T, typename F, typename... In>
bool map_row_finite(T* out, int64_t n, bool stream, F f, const In*... in) {
  constexpr int64_t W = kVecBytes / sizeof(T);
  using Mask = decltype(Vec<T>{} != Vec<T>{});
  Mask bad{};
  bool tail_bad = false;
  const auto scalar = [&](int64_t i) {
    out[i] = f(in[i]...);
    const T z = out[i] - out[i];
    tail_bad |= z != z;
  };
  int64_t i = 0;
  if (stream)
    for (; i < n && reinterpret_cast<uintptr_t>(out + i) % kVecBytes != 0; ++i) scalar(i);
  for (; i + W <= n; i += W) {
    const Vec<T> r = f(load(in + i)...);
    const Vec<T> z = r - r;
    bad |= z != z;
    if (stream)
      stream_store(out + i, r);
    else
      std::memcpy(out + i, &r, sizeof r);
  }
  for (; i < n; ++i) scalar(i);
  for (int64_t k = 0; k < W; ++k)
    if (bad[k]) return false;
  return !tail_bad;
}

// Sum over i in [0, n) of f(in[i]...), in four vector accumulators: the adds
// form independent chains (a single accumulator waits on the add latency, 3-4x
// slower on a cached row).
template <typename T, typename F, typename... In>
T sum_row(int64_t n, F f, const In*... in) {
  constexpr int64_t W = kVecBytes / sizeof(T);
  Vec<T> a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += f(load(in + i)...);
    a1 += f(load(in + i + W)...);
    a2 += f(load(in + i + 2 * W)...);
    a3 += f(load(in + i + 3 * W)...);
  }
  for (; i + W <= n; i += W) a0 += f(load(in + i)...);
  T s = hsum<T>((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += f(in[i]...);
  return s;
}

// ---- Sums in double over float (or double) data ----
// load_wide reads one hardware vector's worth of doubles (kVecBytes / 8
// values) from T data: for float, half a vector of floats converted with
// vcvtps2pd. (A 2x-wide generic vector would be simpler to write, but GCC
// keeps such vectors in memory: measured 2x slower.)
inline constexpr int64_t kWideLanes = static_cast<int64_t>(kVecBytes / sizeof(double));

template <typename T>
Vec<double> load_wide(const T* p) {
  if constexpr (std::is_same_v<T, double>) {
    return load(p);
  } else {
    Vec<T, kVecBytes / 2> half;
    std::memcpy(&half, p, sizeof half);
    return __builtin_convertvector(half, Vec<double>);
  }
}

// Sum over i in [0, n) of f(in[i]...) with every input converted to double and
// the terms summed in double (four vector accumulators: independent add
// chains). Statistics use it: float sums of 1e3..1e6 terms lose up to 1e-4
// relative where PyTorch's double sums lose nothing (docs/numerics.md).
template <typename T, typename F, typename... In>
double sum_row_wide(int64_t n, F f, const In*... in) {
  constexpr int64_t W = kWideLanes;
  Vec<double> a0{}, a1{}, a2{}, a3{};
  int64_t i = 0;
  for (; i + 4 * W <= n; i += 4 * W) {
    a0 += f(load_wide(in + i)...);
    a1 += f(load_wide(in + i + W)...);
    a2 += f(load_wide(in + i + 2 * W)...);
    a3 += f(load_wide(in + i + 3 * W)...);
  }
  for (; i + W <= n; i += W) a0 += f(load_wide(in + i)...);
  double s = hsum<double>((a0 + a1) + (a2 + a3));
  for (; i < n; ++i) s += f(static_cast<double>(in[i])...);
  return s;
}

// The largest |in[i]| over i in [0, n) (0 for n = 0; NaN-free inputs assumed:
// a NaN lane is skipped, which callers treat as "small" and then see in y).
template <typename T>
T max_abs_row(int64_t n, const T* in) {
  T m = 0;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, in[i] < 0 ? -in[i] : in[i]);
  return m;
}

}  // namespace NORMLAB_ISA_NAMESPACE
}  // namespace normlab::detail
