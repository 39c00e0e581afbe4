// The fast LayerNorm / BatchNorm kernels against their ref:: twins at awkward
// sizes (D or C not a multiple of the vector width, N = 1, C = 1, L > 1), on one
// thread and on several, with and without affine parameters and optional outputs.
//
// Tolerances (float): the reference accumulates its statistics in double and
// rounds once, but sums LayerNorm's dgamma/dbeta row by row in float; the fast
// kernels accumulate statistics in double and LayerNorm's backward row sums in
// float in vector lanes. Each result thus carries the rounding of float sums of at
// most ~1000 terms in sequence: worst case ~1000 * 6e-8 = 6e-5 relative to the
// sum of |terms|, typically ~1e-7. Measured over all cases below: median 1.1e-7,
// max 2.0e-5 (LayerNorm dgamma over N = 1030 rows, where both sides sum in
// float in different orders). Values are compared as
// |fast - ref| <= tol * (1 + |ref|) with tol = 1e-4; a wrong formula, index or
// missed row is off by O(1). Doubles: tol = 1e-11.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "normlab/kernels.hpp"
#include "normlab/rng.hpp"
#include "omp_threads.hpp"

namespace normlab {
namespace {

constexpr double kTolF = 1e-4;

template <typename T>
std::vector<T> randn(int64_t n, uint64_t seed, double mean = 0.0, double stddev = 1.0) {
  std::vector<T> v(static_cast<size_t>(n));
  Rng(seed).fill_normal(v.data(), n, mean, stddev);
  return v;
}

template <typename T>
void expect_close(const std::vector<T>& got, const std::vector<T>& want, double tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(want[i])) / (1 + std::abs(double(want[i])));
    if (!(err <= worst)) worst = err, at = i;  // also catches NaN
  }
  EXPECT_LE(worst, tol) << what << ": element " << at << " fast " << got[at] << " ref " << want[at];
}

// A nullable pointer to a vector's data.
template <typename T>
T* ptr(std::vector<T>& v, bool on) {
  return on ? v.data() : nullptr;
}

struct Affine {
  bool gamma, beta;
};
constexpr Affine kAffines[] = {{true, true}, {true, false}, {false, true}, {false, false}};

std::string label(const char* op, int64_t N, int64_t D, int64_t L, int threads, Affine af) {
  return std::string(op) + " N=" + std::to_string(N) + " D/C=" + std::to_string(D) +
         " L=" + std::to_string(L) + " threads=" + std::to_string(threads) +
         " gamma=" + std::to_string(af.gamma) + " beta=" + std::to_string(af.beta);
}

template <typename T>
void check_layernorm(int64_t N, int64_t D, int threads, Affine af, double tol, double x_mean = 0,
                     double x_std = 1) {
  Threads guard(threads);
  const std::string what = label("layernorm", N, D, 1, threads, af);
  const int64_t n = N * D;
  auto x = randn<T>(n, 1, x_mean, x_std), dy = randn<T>(n, 2);
  auto gamma = randn<T>(D, 3, 1.0, 0.5), beta = randn<T>(D, 4);
  const T eps = T(1e-5);
  std::vector<T> y(n), m(N), r(N), y_ref(n), m_ref(N), r_ref(N);
  layernorm_forward(y.data(), m.data(), r.data(), x.data(), ptr(gamma, af.gamma),
                    ptr(beta, af.beta), N, D, eps);
  ref::layernorm_forward(y_ref.data(), m_ref.data(), r_ref.data(), x.data(), ptr(gamma, af.gamma),
                         ptr(beta, af.beta), N, D, eps);
  expect_close(y, y_ref, tol, what + " y");
  expect_close(m, m_ref, tol, what + " mean");
  expect_close(r, r_ref, tol, what + " rstd");

  // Backward from the reference statistics; parameter grads start non-zero (they accumulate).
  for (bool want_dx : {true, false}) {
    auto dg = randn<T>(D, 5), db = randn<T>(D, 6), dg_ref = dg, db_ref = db;
    std::vector<T> dx(n, T(7)), dx_ref(n, T(7));
    layernorm_backward(ptr(dx, want_dx), ptr(dg, af.gamma), ptr(db, af.beta), dy.data(), x.data(),
                       m_ref.data(), r_ref.data(), ptr(gamma, af.gamma), N, D);
    ref::layernorm_backward(ptr(dx_ref, want_dx), ptr(dg_ref, af.gamma), ptr(db_ref, af.beta),
                            dy.data(), x.data(), m_ref.data(), r_ref.data(), ptr(gamma, af.gamma),
                            N, D);
    const std::string w = what + (want_dx ? " dx" : " no-dx");
    expect_close(dx, dx_ref, tol, w + " dx");
    expect_close(dg, dg_ref, tol, w + " dgamma");
    expect_close(db, db_ref, tol, w + " dbeta");
  }
}

template <typename T>
void check_batchnorm(int64_t N, int64_t C, int64_t L, int threads, Affine af, double tol,
                     double x_mean = 0, double x_std = 1) {
  Threads guard(threads);
  const std::string what = label("batchnorm", N, C, L, threads, af);
  const int64_t n = N * C * L;
  auto x = randn<T>(n, 11, x_mean, x_std), dy = randn<T>(n, 12);
  auto gamma = randn<T>(C, 13, 1.0, 0.5), beta = randn<T>(C, 14);
  const T eps = T(1e-5);
  std::vector<T> y(n), m(C), r(C), v(C), y_ref(n), m_ref(C), r_ref(C), v_ref(C);
  batchnorm_forward_train(y.data(), m.data(), r.data(), v.data(), x.data(), ptr(gamma, af.gamma),
                          ptr(beta, af.beta), N, C, L, eps);
  ref::batchnorm_forward_train(y_ref.data(), m_ref.data(), r_ref.data(), v_ref.data(), x.data(),
                               ptr(gamma, af.gamma), ptr(beta, af.beta), N, C, L, eps);
  expect_close(y, y_ref, tol, what + " train y");
  expect_close(m, m_ref, tol, what + " train mean");
  expect_close(r, r_ref, tol, what + " train rstd");
  expect_close(v, v_ref, tol, what + " train var");
  // var is optional
  batchnorm_forward_train(y.data(), m.data(), r.data(), static_cast<T*>(nullptr), x.data(),
                          ptr(gamma, af.gamma), ptr(beta, af.beta), N, C, L, eps);
  expect_close(y, y_ref, tol, what + " train y (var=null)");

  // Eval with given (positive) statistics.
  auto rm = randn<T>(C, 15, x_mean, x_std), rv = randn<T>(C, 16);
  for (T& s : rv) s = s * s + T(0.1);
  batchnorm_forward_eval(y.data(), x.data(), rm.data(), rv.data(), ptr(gamma, af.gamma),
                         ptr(beta, af.beta), N, C, L, eps);
  ref::batchnorm_forward_eval(y_ref.data(), x.data(), rm.data(), rv.data(), ptr(gamma, af.gamma),
                              ptr(beta, af.beta), N, C, L, eps);
  expect_close(y, y_ref, tol, what + " eval y");

  for (bool train : {true, false})
    for (bool want_dx : {true, false}) {
      auto dg = randn<T>(C, 17), db = randn<T>(C, 18), dg_ref = dg, db_ref = db;
      std::vector<T> dx(n, T(7)), dx_ref(n, T(7));
      auto fast = train ? batchnorm_backward_train<T> : batchnorm_backward_eval<T>;
      auto slow = train ? ref::batchnorm_backward_train<T> : ref::batchnorm_backward_eval<T>;
      fast(ptr(dx, want_dx), ptr(dg, af.gamma), ptr(db, af.beta), dy.data(), x.data(), m_ref.data(),
           r_ref.data(), ptr(gamma, af.gamma), N, C, L);
      slow(ptr(dx_ref, want_dx), ptr(dg_ref, af.gamma), ptr(db_ref, af.beta), dy.data(), x.data(),
           m_ref.data(), r_ref.data(), ptr(gamma, af.gamma), N, C, L);
      const std::string w =
          what + (train ? " backward_train" : " backward_eval") + (want_dx ? "" : " no-dx");
      expect_close(dx, dx_ref, tol, w + " dx");
      expect_close(dg, dg_ref, tol, w + " dgamma");
      expect_close(db, db_ref, tol, w + " dbeta");
    }
}

// Thread counts: one, the pool's two, and more threads than cores with an uneven split.
constexpr int kThreads[] = {1, 2, 3};

TEST(FastKernels, LayerNormMatchesReference) {
  const int64_t shapes[][2] = {{1, 1},    {1, 3},     {3, 17},   {5, 1000},
                               {2, 1025}, {40, 1025}, {513, 33}, {1, 20000}};
  for (int threads : kThreads)
    for (const auto& s : shapes)
      for (Affine af : kAffines) check_layernorm<float>(s[0], s[1], threads, af, kTolF);
}

TEST(FastKernels, BatchNormMatchesReference) {
  // (N, C, L): C = 1, N = 1, L > 1, several row blocks (C = 1000: 32 rows per block),
  // big enough to go parallel (>= 16384 elements), and N < threads.
  const int64_t shapes[][3] = {{2, 1, 1}, {7, 17, 1}, {3, 1000, 1}, {100, 1025, 1}, {20000, 1, 1},
                               {1, 5, 7}, {4, 3, 17}, {16, 5, 300}, {2, 3, 1},      {64, 1, 513}};
  for (int threads : kThreads)
    for (const auto& s : shapes)
      for (Affine af : kAffines) check_batchnorm<float>(s[0], s[1], s[2], threads, af, kTolF);
}

// Outputs of 4 MB and more are written with non-temporal stores (map_row in
// norm_common.hpp): sizes past that threshold, rows not a multiple of 16 (so
// every row has an unaligned head and a tail), and (N,C,L) at that size.
TEST(FastKernels, StreamedOutputsMatchReference) {
  for (int threads : {1, 3}) {
    check_layernorm<float>(1030, 1025, threads, {true, true}, kTolF);
    check_batchnorm<float>(1030, 1025, 1, threads, {true, true}, kTolF);
    check_batchnorm<float>(40, 31, 1057, threads, {true, true}, kTolF);
  }
}

TEST(FastKernels, DoubleMatchesReference) {
  for (int threads : {1, 3}) {
    check_layernorm<double>(40, 1025, threads, {true, true}, 1e-11);
    check_batchnorm<double>(100, 1025, 1, threads, {true, true}, 1e-11);
    check_batchnorm<double>(16, 5, 300, threads, {true, true}, 1e-11);
  }
}

// After one call per shape (scratch grows once), further calls allocate nothing.
TEST(FastKernels, NoAllocationOnceWarm) {
  Threads guard(2);
  const int64_t N = 300, D = 1025;
  auto x = randn<float>(N * D, 31), dy = randn<float>(N * D, 32);
  std::vector<float> y(N * D), dx(N * D), g(D, 1.f), b(D, 0.f), dg(D), db(D), m(N + D), r(N + D),
      v(D, 1.f);
  auto all = [&] {
    layernorm_forward(y.data(), m.data(), r.data(), x.data(), g.data(), b.data(), N, D, 1e-5f);
    layernorm_backward(dx.data(), dg.data(), db.data(), dy.data(), x.data(), m.data(), r.data(),
                       g.data(), N, D);
    batchnorm_forward_train(y.data(), m.data(), r.data(), v.data(), x.data(), g.data(), b.data(), N,
                            D, int64_t{1}, 1e-5f);
    batchnorm_backward_train(dx.data(), dg.data(), db.data(), dy.data(), x.data(), m.data(),
                             r.data(), g.data(), N, D, int64_t{1});
    batchnorm_forward_eval(y.data(), x.data(), m.data(), v.data(), g.data(), b.data(), N, D,
                           int64_t{1}, 1e-5f);
    batchnorm_backward_eval(dx.data(), dg.data(), db.data(), dy.data(), x.data(), m.data(),
                            r.data(), g.data(), N, D, int64_t{1});
  };
  all();
  EXPECT_EQ(normlab::testing::allocations_during([&] {
              for (int i = 0; i < 3; ++i) all();
            }),
            0);
}

// randn * 0.01 + 1e4: computing E[x^2] - E[x]^2, or centring with a rounded
// float mean, would be off by O(1) here. The output must match the reference
// and be normalized: per row / channel mean ~0 and variance ~1.
TEST(FastKernels, LargeMeanInputsNormalize) {
  for (int threads : {1, 2}) {
    check_layernorm<float>(64, 1000, threads, {false, false}, kTolF, 1e4, 0.01);
    check_batchnorm<float>(256, 65, 1, threads, {false, false}, kTolF, 1e4, 0.01);
    check_batchnorm<float>(16, 5, 300, threads, {false, false}, kTolF, 1e4, 0.01);
  }
  const int64_t N = 300, D = 257;
  auto x = randn<float>(N * D, 21, 1e4, 0.01);
  std::vector<float> y(N * D), m(D), r(D);
  batchnorm_forward_train(y.data(), m.data(), r.data(), static_cast<float*>(nullptr), x.data(),
                          static_cast<const float*>(nullptr), static_cast<const float*>(nullptr), N,
                          D, int64_t{1}, 1e-9f);
  for (int64_t c = 0; c < D; ++c) {
    double s = 0, q = 0;
    for (int64_t i = 0; i < N; ++i) s += y[i * D + c];
    for (int64_t i = 0; i < N; ++i) q += double(y[i * D + c]) * y[i * D + c];
    ASSERT_NEAR(s / N, 0.0, 1e-4) << "channel " << c;
    ASSERT_NEAR(q / N, 1.0, 1e-3) << "channel " << c;
  }
  layernorm_forward(y.data(), m.data(), r.data(), x.data(), static_cast<const float*>(nullptr),
                    static_cast<const float*>(nullptr), D, N, 1e-9f);  // D rows of N
  for (int64_t i = 0; i < D; ++i) {
    double s = 0, q = 0;
    for (int64_t d = 0; d < N; ++d) s += y[i * N + d];
    for (int64_t d = 0; d < N; ++d) q += double(y[i * N + d]) * y[i * N + d];
    ASSERT_NEAR(s / N, 0.0, 1e-4) << "row " << i;
    ASSERT_NEAR(q / N, 1.0, 1e-3) << "row " << i;
  }
}

// The forward's row moments in float (fast_moments, layernorm_fast.cpp) and
// the rows it leaves to the double sums, and both forms of y: an ordinary row
// and one of mean 5, sd 1 (y in two FMAs), first values atypical (S2 > 2 M2),
// a spread of 1e-20 (M2 / D < 1e-30), mean 100 and sd 1 (centred first), a
// constant row; then the streamed backward's fused pass without gamma.
TEST(FastKernels, LayerNormRowKinds) {
  const int64_t N = 6, D = 1000;
  std::vector<float> x = randn<float>(N * D, 41);
  for (int64_t d = 0; d < D; ++d) {
    x[D + d] = 5 + x[D + d];
    if (d < 64) x[2 * D + d] += 50;
    x[3 * D + d] *= 1e-20f;
    x[4 * D + d] += 100;
    x[5 * D + d] = 3.0f;
  }
  auto gamma = randn<float>(D, 42, 1.0, 0.5), beta = randn<float>(D, 43);
  for (int threads : {1, 2}) {
    Threads guard(threads);
    std::vector<float> y(N * D), m(N), r(N), y_ref(N * D), m_ref(N), r_ref(N);
    layernorm_forward(y.data(), m.data(), r.data(), x.data(), gamma.data(), beta.data(), N, D,
                      1e-5f);
    ref::layernorm_forward(y_ref.data(), m_ref.data(), r_ref.data(), x.data(), gamma.data(),
                           beta.data(), N, D, 1e-5f);
    expect_close(y, y_ref, kTolF, "row kinds y");
    for (int64_t n = 0; n < N; ++n) {
      // Both the double sum (in another order), rounded once: at most an ulp apart.
      EXPECT_LE(std::abs(m[n] - m_ref[n]),
                std::nextafter(std::abs(m_ref[n]), 1e38f) - std::abs(m_ref[n]))
          << "row " << n;
      EXPECT_NEAR(r[n], r_ref[n], 1e-5 * r_ref[n]) << "row " << n;
    }
  }
  for (int threads : {1, 3}) check_layernorm<float>(1030, 1025, threads, {false, true}, kTolF);
}

}  // namespace
}  // namespace normlab
