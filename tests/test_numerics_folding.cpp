// Issue "Correctness and compatibility", items 1 and 2 (docs/numerics.md):
//   * float batch statistics as accurate as PyTorch's (double sums on CPU) for
//     every layout ((N,C) and (N,C,L)), thread count and split of the work;
//   * no folded coefficient in a norm kernel turns a finite result into inf or
//     NaN: the fast kernels equal ref:: wherever ref:: is finite, over a sweep
//     of extreme gamma, beta, eps, input and upstream-gradient magnitudes.
#include <gtest/gtest.h>
#include <omp.h>

#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "normlab/kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/rng.hpp"
#include "omp_threads.hpp"

namespace normlab {
namespace {

std::vector<float> randn(int64_t n, uint64_t seed, double mean, double sd) {
  std::vector<float> v(static_cast<size_t>(n));
  Rng(seed).fill_normal(v.data(), n, mean, sd);
  return v;
}

// ------------------------------------------------------------ item 1: statistics

// The issue's case: PyTorch (float32 and float64) gives running_mean 1/6.
TEST(BatchStatistics, IssueCaseNCL) {
  for (const Shape& shape : {Shape{1, 1, 3}, Shape{3, 1}, Shape{3, 1, 1}}) {
    BatchNormOptions o;
    o.momentum = 1.0;
    BatchNorm1d<float> bn(1, o);
    Tensor<float> x(shape);
    x[0] = 2083.5f, x[1] = -694.5f, x[2] = -1388.5f;
    bn.forward(x);
    EXPECT_EQ(bn.running_mean[0], 0.16666667f) << shape_str(shape);
    // torch.float32: 3375617.25 (the unbiased variance 3375617.33 rounded to float).
    EXPECT_FLOAT_EQ(bn.running_var[0], 3375617.25f) << shape_str(shape);
  }
}

// Mean and biased variance of every channel against a long-double two-pass
// reference: off by at most one float ulp (PyTorch's double sums rounded once),
// for (N,C) and (N,C,L), 1..3 threads, sizes below and above the parallel
// threshold, and inputs whose mean is small against the spread (the sums
// cancel) or large (x - mean loses the leading digits).
TEST(BatchStatistics, WithinOneUlpOfExactForEveryLayoutAndThreadCount) {
  struct Case {
    Shape shape;
    double mean, sd;
  };
  const std::vector<Case> cases = {
      {{1, 1, 3}, 0.1, 1500},  {{5, 3, 7}, 0.1, 1e3},     {{64, 300, 1}, 0.3, 1e3},
      {{64, 300}, 1e4, 1},     {{700, 3, 9}, 0.2, 2e3},   {{3, 2, 5000}, 1e4, 1e-2},
      {{2000, 17}, -0.5, 3e3}, {{4, 5, 4099}, 1e-3, 1e3}, {{37, 1, 1000}, 123.4, 5e2},
  };
  for (const Case& cs : cases)
    for (int threads : {1, 2, 3}) {
      const Threads scope(threads);
      const int64_t N = cs.shape[0], C = cs.shape[1], L = cs.shape.size() == 3 ? cs.shape[2] : 1;
      const std::vector<float> x = randn(N * C * L, 7 + N + C, cs.mean, cs.sd);
      std::vector<float> y(x.size()), mean(C), rstd(C), var(C);
      batchnorm_forward_train<float>(y.data(), mean.data(), rstd.data(), var.data(), x.data(),
                                     static_cast<const float*>(nullptr), nullptr, N, C, L, 1e-5f);
      for (int64_t c = 0; c < C; ++c) {
        long double m = 0, v = 0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t l = 0; l < L; ++l) m += x[(n * C + c) * L + l];
        m /= N * L;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t l = 0; l < L; ++l) {
            const long double d = x[(n * C + c) * L + l] - m;
            v += d * d;
          }
        v /= N * L;
        const float mf = static_cast<float>(m), vf = static_cast<float>(v);
        const auto ulp = [](float f) { return std::nextafter(std::abs(f), FLT_MAX) - std::abs(f); };
        EXPECT_LE(std::abs(mean[c] - mf), ulp(mf))
            << shape_str(cs.shape) << " threads " << threads << " channel " << c << ": mean "
            << mean[c] << ", exact " << static_cast<double>(m);
        EXPECT_LE(std::abs(var[c] - vf), ulp(vf))
            << shape_str(cs.shape) << " threads " << threads << " channel " << c << ": var "
            << var[c] << ", exact " << static_cast<double>(v);
      }
    }
}

// LayerNorm's saved row means, likewise (the rows are summed in double too).
TEST(BatchStatistics, LayerNormRowMeansWithinOneUlp) {
  for (int64_t D : {3, 40, 1000, 5000}) {
    const int64_t N = 9;
    const std::vector<float> x = randn(N * D, 100 + D, 0.1, 1e3);
    std::vector<float> y(x.size()), mean(N), rstd(N);
    layernorm_forward<float>(y.data(), mean.data(), rstd.data(), x.data(),
                             static_cast<const float*>(nullptr), nullptr, N, D, 1e-5f);
    for (int64_t n = 0; n < N; ++n) {
      long double m = 0;
      for (int64_t d = 0; d < D; ++d) m += x[n * D + d];
      m /= D;
      const float mf = static_cast<float>(m);
      EXPECT_LE(std::abs(mean[n] - mf), std::nextafter(std::abs(mf), FLT_MAX) - std::abs(mf))
          << "D " << D << " row " << n;
    }
  }
}

// ------------------------------------------------------------ item 2: no folding overflows

// The issue's case: a constant row, weight 2e36, bias 0.5: x - mean is exactly 0.
TEST(FoldingOverflow, IssueCaseLayerNormConstantRowHugeWeight) {
  LayerNorm<float> ln(Shape{4});
  ln.weight.fill(2e36f);
  ln.bias.fill(0.5f);
  Tensor<float> x({1, 4}, 7.25f);
  const Tensor<float>& y = ln.forward(x);
  for (int d = 0; d < 4; ++d) EXPECT_EQ(y[d], 0.5f);
  Tensor<float> dy({1, 4}, 1.0f);
  const Tensor<float>& dx = ln.backward(dy);
  for (int d = 0; d < 4; ++d) EXPECT_EQ(dx[d], 0.0f) << d;  // PyTorch: 0
}

TEST(FoldingOverflow, IssueCaseBatchNormConstantChannelHugeWeight) {
  for (const Shape& shape : {Shape{4, 2}, Shape{2, 2, 3}}) {
    BatchNorm1d<float> bn(2);
    bn.weight.fill(2e36f);
    bn.bias.fill(0.5f);
    Tensor<float> x(shape, 7.25f);
    const Tensor<float>& y = bn.forward(x);
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], 0.5f) << shape_str(shape);
    Tensor<float> dy(shape, 1.0f);
    const Tensor<float>& dx = bn.backward(dy);
    for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_EQ(dx[i], 0.0f) << shape_str(shape);
    bn.set_training(false);  // running_var = 0.9: a = 2e36 / sqrt(0.9 + 1e-5), finite
    bn.running_mean.fill(7.25f);
    bn.running_var.fill(0.0f);  // a = 2e36 * 316 overflows float
    const Tensor<float>& ye = bn.forward(x);
    for (int64_t i = 0; i < ye.numel(); ++i) EXPECT_EQ(ye[i], 0.5f) << shape_str(shape);
  }
}

// |fast - ref| against the tensor's scale; where ref is finite fast must be too.
struct Compare {
  std::string failure;
  void check(const std::string& what, const std::vector<float>& fast, const std::vector<float>& ref,
             double scale, double tol = 2e-5) {
    if (!failure.empty()) return;
    for (const float r : ref)
      if (std::isfinite(r)) scale = std::max(scale, static_cast<double>(std::abs(r)));
    for (size_t i = 0; i < ref.size(); ++i) {
      if (!std::isfinite(ref[i])) continue;
      const double err = std::abs(static_cast<double>(fast[i]) - ref[i]);
      // The floor: values rounded as subnormals (a few of float's smallest steps).
      if (!(err <= tol * scale + 1e-42)) {
        failure = what + "[" + std::to_string(i) + "]: fast " + std::to_string(fast[i]) + " (" +
                  std::to_string(static_cast<double>(fast[i])) + "), ref " +
                  std::to_string(ref[i]) + ", scale " + std::to_string(scale);
        char buf[160];
        std::snprintf(buf, sizeof buf, " [fast %.9g ref %.9g scale %.3g]", fast[i], ref[i], scale);
        failure += buf;
        return;
      }
    }
  }
};

struct Extremes {
  float gamma, beta, eps;
  std::string x_kind;
  double x_scale, dy_scale;
  std::string str() const {
    char buf[200];
    std::snprintf(buf, sizeof buf, "gamma %g beta %g eps %g x %s*%g dy*%g", gamma, beta, eps,
                  x_kind.c_str(), x_scale, dy_scale);
    return buf;
  }
};

std::vector<float> make_input(const Extremes& e, int64_t n, uint64_t seed) {
  std::vector<float> x = randn(n, seed, 0, 1);
  for (int64_t i = 0; i < n; ++i) {
    double v = x[i];
    if (e.x_kind == "constant") v = 7.25;
    if (e.x_kind == "offset") v = 1 + 1e-3 * v;  // mean far above the spread
    if (e.x_kind == "extremes") v = (i % 3 == 0) ? FLT_MAX : (i % 3 == 1 ? -FLT_MAX : v);
    x[i] = static_cast<float>(v * (e.x_kind == "extremes" ? 1.0 : e.x_scale));
  }
  return x;
}

std::vector<Extremes> sweep() {
  std::vector<Extremes> out;
  for (float gamma : {0.0f, 1e-30f, 1.0f, -3.0f, 2e36f, 3e38f})
    for (float beta : {0.5f, -1e38f})
      for (float eps : {1e-12f, 1e-5f, 1e3f})
        for (const char* kind : {"constant", "randn", "offset", "extremes"})
          for (double xs : {1e-30, 1.0, 1e17, 1e37})
            for (double dys : {1.0, 1e-30, 1e30}) {
              if ((std::string(kind) == "constant" || std::string(kind) == "extremes") && xs != 1)
                continue;
              out.push_back({gamma, beta, eps, kind, xs, dys});
            }
  return out;
}

// Fast vs ref:: for LayerNorm: forward y, mean, rstd; backward dx, dgamma, dbeta.
TEST(FoldingOverflow, LayerNormSweepFastEqualsReference) {
  int checked = 0;
  for (int64_t D : {4, 37}) {
    const int64_t N = 3;
    for (const Extremes& e : sweep()) {
      const std::vector<float> x = make_input(e, N * D, 11 + D);
      std::vector<float> dy = randn(N * D, 12 + D, 0, e.dy_scale);
      std::vector<float> gamma = randn(D, 13, 0, 1), beta = randn(D, 14, 0, 1);
      for (auto& g : gamma) g = e.gamma * (1 + 0.1f * g);
      for (auto& b : beta) b = e.beta * (1 + 0.1f * b);
      std::vector<float> y[2], mean[2], rstd[2], dx[2], dg[2], db[2];
      for (int k = 0; k < 2; ++k) {
        y[k].assign(N * D, 0), mean[k].assign(N, 0), rstd[k].assign(N, 0);
        dx[k].assign(N * D, 0), dg[k].assign(D, 0), db[k].assign(D, 0);
        (k ? ref::layernorm_forward<float>
           : layernorm_forward<float>)(y[k].data(), mean[k].data(), rstd[k].data(), x.data(),
                                       gamma.data(), beta.data(), N, D, e.eps);
      }
      // Both backwards from the reference's statistics: the same inputs.
      std::fill(dg[0].begin(), dg[0].end(), 0.0f);
      std::fill(db[0].begin(), db[0].end(), 0.0f);
      layernorm_backward<float>(dx[0].data(), dg[0].data(), db[0].data(), dy.data(), x.data(),
                                mean[1].data(), rstd[1].data(), gamma.data(), N, D);
      ref::layernorm_backward<float>(dx[1].data(), dg[1].data(), db[1].data(), dy.data(), x.data(),
                                     mean[1].data(), rstd[1].data(), gamma.data(), N, D);
      Compare cmp;
      cmp.check("y", y[0], y[1], 0);
      // The mean is judged against the spread: ref's own double sum of +-FLT_MAX
      // values rounds at 1e22.
      double spread = 0;
      for (const float r : rstd[1]) spread = std::max(spread, 1.0 / r);
      cmp.check("mean", mean[0], mean[1], spread);
      cmp.check("rstd", rstd[0], rstd[1], 0);
      double dx_scale = 0;  // rstd * |dy * gamma|: dx is a difference of such terms
      for (int64_t i = 0; i < N * D; ++i)
        dx_scale = std::max(dx_scale, static_cast<double>(rstd[1][i / D]) *
                                          std::abs(static_cast<double>(dy[i]) * gamma[i % D]));
      cmp.check("dx", dx[0], dx[1], dx_scale);
      cmp.check("dgamma", dg[0], dg[1], 0, 1e-4);
      cmp.check("dbeta", db[0], db[1], 0, 1e-4);
      EXPECT_TRUE(cmp.failure.empty())
          << "LayerNorm D " << D << ", " << e.str() << ": " << cmp.failure;
      ++checked;
    }
  }
  EXPECT_GT(checked, 500);
}

// Fast vs ref:: for BatchNorm: training forward and backward, eval forward and
// backward, on (N,C) and (N,C,L), one and two threads.
TEST(FoldingOverflow, BatchNormSweepFastEqualsReference) {
  int checked = 0;
  for (const Shape& shape : {Shape{6, 3, 1}, Shape{3, 2, 5}})
    for (int threads : {1, 2}) {
      const Threads scope(threads);
      const int64_t N = shape[0], C = shape[1], L = shape[2], n = N * C * L;
      for (const Extremes& e : sweep()) {
        const std::vector<float> x = make_input(e, n, 21 + L);
        const std::vector<float> dy = randn(n, 22 + L, 0, e.dy_scale);
        std::vector<float> gamma = randn(C, 23, 0, 1), beta = randn(C, 24, 0, 1);
        for (auto& g : gamma) g = e.gamma * (1 + 0.1f * g);
        for (auto& b : beta) b = e.beta * (1 + 0.1f * b);
        std::vector<float> y[2], mean[2], rstd[2], var[2], dx[2], dg[2], db[2];
        for (int k = 0; k < 2; ++k) {
          y[k].assign(n, 0), mean[k].assign(C, 0), rstd[k].assign(C, 0), var[k].assign(C, 0);
          (k ? ref::batchnorm_forward_train<float>
             : batchnorm_forward_train<float>)(y[k].data(), mean[k].data(), rstd[k].data(),
                                               var[k].data(), x.data(), gamma.data(), beta.data(),
                                               N, C, L, e.eps);
        }
        Compare cmp;
        cmp.check("train y", y[0], y[1], 0);
        // The mean is judged against the spread: ref's own double sum of +-FLT_MAX
        // values rounds at 1e22.
        double spread = 0;
        for (const float r : rstd[1]) spread = std::max(spread, 1.0 / r);
        cmp.check("mean", mean[0], mean[1], spread);
        cmp.check("rstd", rstd[0], rstd[1], 0);
        cmp.check("var", var[0], var[1], 0);
        for (bool train : {true, false}) {
          for (int k = 0; k < 2; ++k) {
            dx[k].assign(n, 0), dg[k].assign(C, 0), db[k].assign(C, 0);
            auto* fn =
                train ? (k ? ref::batchnorm_backward_train<float> : batchnorm_backward_train<float>)
                      : (k ? ref::batchnorm_backward_eval<float> : batchnorm_backward_eval<float>);
            fn(dx[k].data(), dg[k].data(), db[k].data(), dy.data(), x.data(), mean[1].data(),
               rstd[1].data(), gamma.data(), N, C, L);
          }
          double dx_scale = 0;
          for (int64_t i = 0; i < n; ++i) {
            const int64_t c = (i / L) % C;
            dx_scale = std::max(dx_scale, static_cast<double>(rstd[1][c]) *
                                              std::abs(static_cast<double>(dy[i]) * gamma[c]));
          }
          const std::string mode = train ? "train " : "eval ";
          cmp.check(mode + "dx", dx[0], dx[1], dx_scale);
          cmp.check(mode + "dgamma", dg[0], dg[1], 0, 1e-4);
          cmp.check(mode + "dbeta", db[0], db[1], 0, 1e-4);
        }
        // Eval forward with the reference's statistics as running statistics.
        for (int k = 0; k < 2; ++k)
          (k ? ref::batchnorm_forward_eval<float>
             : batchnorm_forward_eval<float>)(y[k].data(), x.data(), mean[1].data(), var[1].data(),
                                              gamma.data(), beta.data(), N, C, L, e.eps);
        cmp.check("eval y", y[0], y[1], 0);
        EXPECT_TRUE(cmp.failure.empty()) << "BatchNorm " << shape_str(shape) << " threads "
                                         << threads << ", " << e.str() << ": " << cmp.failure;
        ++checked;
      }
    }
  EXPECT_GT(checked, 1000);
}

}  // namespace
}  // namespace normlab
