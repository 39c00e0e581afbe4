// The matrix product and the linear / WeightNormLinear kernels that split
// their work into per-thread slices (gemm.cpp, linear.cpp,
// weightnorm_linear.cpp), against plain loops in double written here, at
// sizes that take the sliced path (and awkward ones: O not a multiple of the
// slice alignment, N = 1, a first layer without dx), on one thread and two.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "normlab/kernels.hpp"
#include "normlab/rng.hpp"
#include "omp_threads.hpp"

using namespace normlab;

namespace {

template <typename T>
std::vector<T> random(int64_t n, uint64_t seed, double lo = -1, double hi = 1) {
  std::vector<T> v(static_cast<size_t>(n));
  Rng rng(seed);
  rng.fill_uniform(v.data(), n, lo, hi);
  return v;
}

// Largest |a - b| / (1 + |b|): relative for large values, absolute near zero.
template <typename T>
double worst(const std::vector<T>& a, const std::vector<double>& b) {
  double w = 0;
  for (size_t i = 0; i < b.size(); ++i)
    w = std::max(w, std::abs(static_cast<double>(a[i]) - b[i]) / (1 + std::abs(b[i])));
  return w;
}

struct Dims {
  int64_t N, I, O;
};

std::string label(const char* what, Dims d, int threads) {
  return std::string(what) + " N=" + std::to_string(d.N) + " I=" + std::to_string(d.I) +
         " O=" + std::to_string(d.O) + " threads=" + std::to_string(threads);
}

// The plain definitions, in double.
struct Reference {
  std::vector<double> w, norm, y, dx, dw, db, dv, dg;
};

Reference reference(Dims d, const std::vector<double>& x, const std::vector<double>& v,
                    const std::vector<double>& g, const std::vector<double>& b,
                    const std::vector<double>& dy, bool weightnorm) {
  const auto [N, I, O] = d;
  Reference r;
  r.w = v;
  r.norm.assign(O, 0);
  if (weightnorm)
    for (int64_t o = 0; o < O; ++o) {
      double ss = 0;
      for (int64_t i = 0; i < I; ++i) ss += v[o * I + i] * v[o * I + i];
      r.norm[o] = std::sqrt(ss);
      for (int64_t i = 0; i < I; ++i) r.w[o * I + i] = g[o] * v[o * I + i] / r.norm[o];
    }
  r.y.assign(N * O, 0);
  r.dx.assign(N * I, 0);
  r.dw.assign(O * I, 0);
  r.db.assign(O, 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) {
      double s = b[o];
      for (int64_t i = 0; i < I; ++i) s += x[n * I + i] * r.w[o * I + i];
      r.y[n * O + o] = s;
      r.db[o] += dy[n * O + o];
      for (int64_t i = 0; i < I; ++i) {
        r.dx[n * I + i] += dy[n * O + o] * r.w[o * I + i];
        r.dw[o * I + i] += dy[n * O + o] * x[n * I + i];
      }
    }
  r.dv.assign(O * I, 0);
  r.dg.assign(O, 0);
  if (weightnorm)
    for (int64_t o = 0; o < O; ++o) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += r.dw[o * I + i] * v[o * I + i];
      const double n = r.norm[o];
      r.dg[o] = s / n;
      for (int64_t i = 0; i < I; ++i)
        r.dv[o * I + i] = g[o] / n * r.dw[o * I + i] - g[o] * s / (n * n * n) * v[o * I + i];
    }
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Runs the kernels of T on data drawn in double and compares with the reference.
template <typename T>
void check_layer_kernels(Dims d, int threads, bool with_dx, bool with_bias, double tol) {
  Threads guard(threads);
  const auto [N, I, O] = d;
  const std::vector<double> x = random<double>(N * I, 1), v = random<double>(O * I, 2),
                            g = random<double>(O, 3, 0.5, 2), dy = random<double>(N * O, 4);
  const std::vector<double> b = with_bias ? random<double>(O, 5) : std::vector<double>(O, 0.0);
  const std::vector<T> xt = cast<T>(x), vt = cast<T>(v), gt = cast<T>(g), bt = cast<T>(b),
                       dyt = cast<T>(dy);
  const T* bp = with_bias ? bt.data() : nullptr;

  // Linear with w = v.
  {
    const Reference r = reference(d, x, v, g, b, dy, false);
    const std::string what = label("linear", d, threads);
    std::vector<T> y(N * O), dx(N * I, T(7)), dw(O * I, T(0.5)), db(O, T(0.25));
    linear_forward(y.data(), xt.data(), vt.data(), bp, N, I, O);
    linear_backward(with_dx ? dx.data() : nullptr, dw.data(), with_bias ? db.data() : nullptr,
                    dyt.data(), xt.data(), vt.data(), N, I, O);
    EXPECT_LE(worst(y, r.y), tol) << what << " y";
    if (with_dx) {
      EXPECT_LE(worst(dx, r.dx), tol) << what << " dx";
    }
    if (!with_dx) {
      EXPECT_EQ(dx[0], T(7)) << what << " dx must be untouched";
    }
    std::vector<double> dw_acc = r.dw, db_acc = r.db;  // gradients accumulate onto 0.5 / 0.25
    for (double& e : dw_acc) e += 0.5;
    for (double& e : db_acc) e += 0.25;
    EXPECT_LE(worst(dw, dw_acc), tol) << what << " dw";
    if (with_bias) {
      EXPECT_LE(worst(db, db_acc), tol) << what << " db";
    }
  }
  // WeightNormLinear, fused.
  {
    const Reference r = reference(d, x, v, g, b, dy, true);
    const std::string what = label("weightnorm_linear", d, threads);
    std::vector<T> y(N * O), z(N * O), norm(O), scale(O), dx(N * I, T(7)), dys(N * O, T(99)),
        dot(O, T(99)), dv(O * I, T(0.5)), dg(O, T(0.25)), db(O, T(0.125));
    weightnorm_linear_forward(y.data(), z.data(), norm.data(), scale.data(), xt.data(), vt.data(),
                              gt.data(), bp, N, I, O);
    weightnorm_linear_backward(with_dx ? dx.data() : nullptr, dv.data(), dg.data(),
                               with_bias ? db.data() : nullptr, dys.data(), dot.data(), dyt.data(),
                               xt.data(), z.data(), vt.data(), gt.data(), norm.data(), scale.data(),
                               N, I, O);
    EXPECT_LE(worst(norm, r.norm), tol) << what << " norm";
    EXPECT_LE(worst(y, r.y), tol) << what << " y";
    if (with_dx) {
      EXPECT_LE(worst(dx, r.dx), tol) << what << " dx";
    }
    if (!with_dx) {
      EXPECT_EQ(dx[0], T(7)) << what << " dx must be untouched";
    }
    std::vector<double> dv_acc = r.dv, dg_acc = r.dg, db_acc = r.db;
    for (double& e : dv_acc) e += 0.5;
    for (double& e : dg_acc) e += 0.25;
    for (double& e : db_acc) e += 0.125;
    EXPECT_LE(worst(dv, dv_acc), tol) << what << " dv";
    EXPECT_LE(worst(dg, dg_acc), tol) << what << " dg";
    if (with_bias) {
      EXPECT_LE(worst(db, db_acc), tol) << what << " db";
    }
  }
}

// (N, I, O): the seed-001 shapes at a smaller batch, a last layer of 10,
// sizes off the 16-float alignment, one row, and one too small to split.
const Dims kDims[] = {{64, 784, 512}, {64, 256, 10}, {37, 301, 133}, {1, 515, 257}, {5, 7, 3}};

}  // namespace

TEST(LinearKernels, DoubleMatchesPlainLoops) {
  for (Dims d : kDims)
    for (int threads : {1, 2}) {
      check_layer_kernels<double>(d, threads, true, true, 1e-12);
      check_layer_kernels<double>(d, threads, false, false, 1e-12);
    }
}

TEST(LinearKernels, FloatMatchesPlainLoops) {
  // Sums of ~800 products of values in [-1, 1]: float rounding stays well below 1e-4.
  for (Dims d : kDims)
    for (int threads : {1, 2}) {
      check_layer_kernels<float>(d, threads, true, true, 1e-4);
      check_layer_kernels<float>(d, threads, false, false, 1e-4);
    }
}

// gemm<float> splits C by columns or by rows, or runs on one thread; every
// transpose combination against a plain loop.
TEST(LinearKernels, GemmSlicesMatchPlainLoops) {
  struct Case {
    int64_t M, N, K;
  };
  for (int threads : {1, 2})
    for (Case c : {Case{128, 512, 784}, Case{512, 40, 128}, Case{130, 47, 300}, Case{3, 5, 2}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          Threads guard(threads);
          const auto [M, N, K] = c;
          const std::vector<float> A = random<float>(M * K, 1), B = random<float>(K * N, 2);
          std::vector<float> C = random<float>(M * N, 3);
          std::vector<double> want(M * N);
          const int64_t lda = ta ? M : K, ldb = tb ? K : N;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double s = 0;
              for (int64_t k = 0; k < K; ++k)
                s += static_cast<double>(ta ? A[k * lda + i] : A[i * lda + k]) *
                     (tb ? B[j * ldb + k] : B[k * ldb + j]);
              want[i * N + j] = 0.5 * s + 2.0 * C[i * N + j];
            }
          gemm<float>(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 2.0f, C.data(), N);
          EXPECT_LE(worst(C, want), 1e-4) << "M=" << M << " N=" << N << " K=" << K << " ta=" << ta
                                          << " tb=" << tb << " threads=" << threads;
        }
}

// The fused kernel (which never forms w) agrees with weightnorm_forward then
// linear_forward up to float rounding.
TEST(LinearKernels, FusedWeightNormMatchesSeparateKernels) {
  Threads guard(2);
  const int64_t N = 64, I = 784, O = 512;
  const std::vector<float> x = random<float>(N * I, 1), v = random<float>(O * I, 2),
                           g = random<float>(O, 3, 0.5, 2), b = random<float>(O, 4);
  std::vector<float> z(N * O), n1(O), s(O), y1(N * O), w2(O * I), n2(O), y2(N * O);
  weightnorm_linear_forward(y1.data(), z.data(), n1.data(), s.data(), x.data(), v.data(), g.data(),
                            b.data(), N, I, O);
  weightnorm_forward(w2.data(), n2.data(), v.data(), g.data(), O, I, true);
  linear_forward(y2.data(), x.data(), w2.data(), b.data(), N, I, O);
  auto wide = [](const std::vector<float>& f) { return std::vector<double>(f.begin(), f.end()); };
  EXPECT_LE(worst(n1, wide(n2)), 1e-6);
  EXPECT_LE(worst(y1, wide(y2)), 1e-5);
}
