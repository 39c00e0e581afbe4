// Run-time choice of the fast kernels' instruction set (docs/architecture.md,
// "Kernels for several instruction sets").
//
// Every source in CMake's NORMLAB_DISPATCHED_SOURCES is compiled once per level
// into its own object library, with NORMLAB_ISA_NAMESPACE set to that level's
// namespace:
//   isa_default  -march=x86-64-v2 (SSE4.2)          NORMLAB_CPU_CAPABILITY=default
//   isa_avx2     -march=x86-64-v3 (AVX2, FMA)       NORMLAB_CPU_CAPABILITY=avx2
//   isa_avx512   -march=x86-64-v4 (AVX-512 F/BW/DQ/VL) NORMLAB_CPU_CAPABILITY=avx512
// or, with -DNORMLAB_ARCH=<a -march value> (e.g. native), once as isa_native.
// A dispatched source puts its code in namespace normlab::NORMLAB_ISA_NAMESPACE
// and names each public kernel once with NORMLAB_KERNEL after closing it:
//
//   namespace normlab::NORMLAB_ISA_NAMESPACE {
//   template <typename T> void foo_forward(T* y, const T* x, int64_t n) { ... }
//   }  // namespace normlab::NORMLAB_ISA_NAMESPACE
//   NORMLAB_KERNEL(foo_forward, float, float*, const float*, int64_t)
//
// In each level's compile NORMLAB_KERNEL instantiates the level's copy and
// publishes its address as normlab::<level>::entry::foo_forward_float; in the
// lowest level's compile (NORMLAB_ISA_DISPATCHER) it also defines the public
// normlab::foo_forward<float> (declared in include/normlab/), which calls the
// copy of the level chosen once per process (detail::kernel_level()).
//
// The private kernel headers (simd.hpp, norm_common.hpp, ...) put their inline
// functions in the inline namespace normlab::detail::NORMLAB_ISA_NAMESPACE:
// each level's copies get their own symbols, so the linker can never hand the
// AVX-512 copy of an inline helper to a baseline caller (the ODR trap of
// multi-ISA builds). Other sources include them with the default namespace
// isa_base (the library's baseline flags). scripts/test-portable checks that
// no function outside the avx2/avx512 namespaces holds a ymm/zmm instruction.
#pragma once
#include <type_traits>

#ifndef NORMLAB_ISA_NAMESPACE
#define NORMLAB_ISA_NAMESPACE isa_base
#endif

namespace normlab::detail {
// The level in use: 0 default (x86-64-v2), 1 avx2 (x86-64-v3), 2 avx512
// (x86-64-v4); chosen on first call (src/core/isa.cpp). Throws normlab::Error
// for a bad NORMLAB_CPU_CAPABILITY.
int kernel_level();

template <typename F>
F isa_pick(F base, std::type_identity_t<F> avx2, std::type_identity_t<F> avx512) {
#if NORMLAB_ISA_DISPATCH
  switch (kernel_level()) {
    case 2:
      return avx512;
    case 1:
      return avx2;
    default:
      return base;
  }
#else
  (void)avx2;
  (void)avx512;
  return base;
#endif
}
}  // namespace normlab::detail

// ---- Parameter lists from a list of types: (float*, int64_t) -> (float* a1, int64_t a2) ----
#define NORMLAB_ISA_NARGS(...)                                                                     \
  NORMLAB_ISA_NARGS_(__VA_ARGS__, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, \
                     2, 1)
#define NORMLAB_ISA_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, \
                           _17, _18, _19, _20, n, ...)                                            \
  n
#define NORMLAB_ISA_CAT(a, b) NORMLAB_ISA_CAT_(a, b)
#define NORMLAB_ISA_CAT_(a, b) a##b
#define NORMLAB_ISA_PARAMS(...) \
  NORMLAB_ISA_CAT(NORMLAB_ISA_P, NORMLAB_ISA_NARGS(__VA_ARGS__))(__VA_ARGS__)
#define NORMLAB_ISA_ARGS(...) NORMLAB_ISA_CAT(NORMLAB_ISA_A, NORMLAB_ISA_NARGS(__VA_ARGS__))
#define NORMLAB_ISA_P1(t1) t1 a1
#define NORMLAB_ISA_P2(t1, t2) t1 a1, t2 a2
#define NORMLAB_ISA_P3(t1, t2, t3) t1 a1, t2 a2, t3 a3
#define NORMLAB_ISA_P4(t1, t2, t3, t4) t1 a1, t2 a2, t3 a3, t4 a4
#define NORMLAB_ISA_P5(t1, t2, t3, t4, t5) t1 a1, t2 a2, t3 a3, t4 a4, t5 a5
#define NORMLAB_ISA_P6(t1, t2, t3, t4, t5, t6) t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6
#define NORMLAB_ISA_P7(t1, t2, t3, t4, t5, t6, t7) t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7
#define NORMLAB_ISA_P8(t1, t2, t3, t4, t5, t6, t7, t8) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8
#define NORMLAB_ISA_P9(t1, t2, t3, t4, t5, t6, t7, t8, t9) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9
#define NORMLAB_ISA_P10(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10
#define NORMLAB_ISA_P11(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11
#define NORMLAB_ISA_P12(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12
#define NORMLAB_ISA_P13(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12, t13 a13
#define NORMLAB_ISA_P14(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14)        \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12, \
      t13 a13, t14 a14
#define NORMLAB_ISA_P15(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15)   \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12, \
      t13 a13, t14 a14, t15 a15
#define NORMLAB_ISA_P16(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15, t16) \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12,    \
      t13 a13, t14 a14, t15 a15, t16 a16
#define NORMLAB_ISA_P17(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15, t16, \
                        t17)                                                                   \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12,    \
      t13 a13, t14 a14, t15 a15, t16 a16, t17 a17
#define NORMLAB_ISA_P18(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15, t16, \
                        t17, t18)                                                              \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12,    \
      t13 a13, t14 a14, t15 a15, t16 a16, t17 a17, t18 a18
#define NORMLAB_ISA_P19(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15, t16, \
                        t17, t18, t19)                                                         \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12,    \
      t13 a13, t14 a14, t15 a15, t16 a16, t17 a17, t18 a18, t19 a19
#define NORMLAB_ISA_P20(t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12, t13, t14, t15, t16, \
                        t17, t18, t19, t20)                                                    \
  t1 a1, t2 a2, t3 a3, t4 a4, t5 a5, t6 a6, t7 a7, t8 a8, t9 a9, t10 a10, t11 a11, t12 a12,    \
      t13 a13, t14 a14, t15 a15, t16 a16, t17 a17, t18 a18, t19 a19, t20 a20
#define NORMLAB_ISA_A1 a1
#define NORMLAB_ISA_A2 a1, a2
#define NORMLAB_ISA_A3 a1, a2, a3
#define NORMLAB_ISA_A4 a1, a2, a3, a4
#define NORMLAB_ISA_A5 a1, a2, a3, a4, a5
#define NORMLAB_ISA_A6 a1, a2, a3, a4, a5, a6
#define NORMLAB_ISA_A7 a1, a2, a3, a4, a5, a6, a7
#define NORMLAB_ISA_A8 a1, a2, a3, a4, a5, a6, a7, a8
#define NORMLAB_ISA_A9 a1, a2, a3, a4, a5, a6, a7, a8, a9
#define NORMLAB_ISA_A10 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10
#define NORMLAB_ISA_A11 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11
#define NORMLAB_ISA_A12 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12
#define NORMLAB_ISA_A13 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13
#define NORMLAB_ISA_A14 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14
#define NORMLAB_ISA_A15 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15
#define NORMLAB_ISA_A16 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16
#define NORMLAB_ISA_A17 a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17
#define NORMLAB_ISA_A18 \
  a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18
#define NORMLAB_ISA_A19 \
  a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19
#define NORMLAB_ISA_A20 \
  a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20

// The other levels' entry points, as the dispatcher names them (nullptr for a
// level this build lacks).
#if NORMLAB_ISA_DISPATCH
#define NORMLAB_ISA_BASE_NS isa_default
#define NORMLAB_ISA_DECLARE_OTHERS(fn, ...) \
  namespace normlab::isa_avx2::entry {      \
  extern void (*const fn)(__VA_ARGS__);     \
  }                                         \
  namespace normlab::isa_avx512::entry {    \
  extern void (*const fn)(__VA_ARGS__);     \
  }
#define NORMLAB_ISA_ENTRY_AVX2(fn) ::normlab::isa_avx2::entry::fn
#define NORMLAB_ISA_ENTRY_AVX512(fn) ::normlab::isa_avx512::entry::fn
#else
#define NORMLAB_ISA_BASE_NS isa_native
#define NORMLAB_ISA_DECLARE_OTHERS(fn, ...)
#define NORMLAB_ISA_ENTRY_AVX2(fn) nullptr
#define NORMLAB_ISA_ENTRY_AVX512(fn) nullptr
#endif

#define NORMLAB_ISA_ENTRY(name, T, ...)                                               \
  namespace normlab::NORMLAB_ISA_NAMESPACE::entry {                                   \
  extern void (*const name##_##T)(__VA_ARGS__);                                       \
  void (*const name##_##T)(__VA_ARGS__) = &::normlab::NORMLAB_ISA_NAMESPACE::name<T>; \
  }

#ifdef NORMLAB_ISA_DISPATCHER
#define NORMLAB_ISA_FORWARDER(name, T, ...)                                                \
  NORMLAB_ISA_DECLARE_OTHERS(name##_##T, __VA_ARGS__)                                      \
  namespace normlab {                                                                      \
  template <>                                                                              \
  void name<T>(NORMLAB_ISA_PARAMS(__VA_ARGS__)) {                                          \
    detail::isa_pick(::normlab::NORMLAB_ISA_BASE_NS::entry::name##_##T,                    \
                     NORMLAB_ISA_ENTRY_AVX2(name##_##T),                                   \
                     NORMLAB_ISA_ENTRY_AVX512(name##_##T))(NORMLAB_ISA_ARGS(__VA_ARGS__)); \
  }                                                                                        \
  }
#else
#define NORMLAB_ISA_FORWARDER(name, T, ...)
#endif

// One public kernel template instance: name<T> with parameter types ... (all
// kernels return void). At file scope, after the level's namespace is closed.
#define NORMLAB_KERNEL(name, T, ...)      \
  NORMLAB_ISA_ENTRY(name, T, __VA_ARGS__) \
  NORMLAB_ISA_FORWARDER(name, T, __VA_ARGS__)
