// RMSNorm (issue 10): gradient checks of the layer, the fast kernels against
// their ref:: twins, the numerics at the edges against a long-double
// definition, the invariant RMSNorm = LayerNorm(bias=False) on zero-mean
// rows, the layer contract (errors, empty batches, NaN) and the model spec
// (rmsnorm, dims= / shape= for layernorm and rmsnorm). PyTorch fixtures:
// tests/test_torch_fixtures.cpp (rmsnorm_*.json); the MNIST training check:
// tests/test_rmsnorm_training.cpp.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/rng.hpp"
#include "omp_threads.hpp"

namespace normlab {
namespace {

// ---- Gradient checks (double layer, central differences) ----
struct RmsCase {
  const char* label;
  Shape normalized, input;
  RMSNormOptions opt;
};
void PrintTo(const RmsCase& c, std::ostream* os) {
  *os << c.label;
}
RMSNormOptions rms_opt(bool affine, std::optional<double> eps = std::nullopt) {
  RMSNormOptions o;
  o.elementwise_affine = affine;
  o.eps = eps;
  return o;
}

class GradCheckRMSNorm : public ::testing::TestWithParam<RmsCase> {};

TEST_P(GradCheckRMSNorm, TrainAndEval) {
  const RmsCase& c = GetParam();
  RMSNorm<double> l(c.normalized, c.opt);
  Rng rng(41);
  for (auto& e : l.state())
    for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += 0.5 * rng.normal();
  EXPECT_GRADIENTS_OK(l, c.input, 42);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, GradCheckRMSNorm,
    ::testing::Values(RmsCase{"one_dim", {5}, {3, 5}, rms_opt(true)},
                      RmsCase{"one_dim_3d_input", {5}, {2, 3, 5}, rms_opt(true)},
                      RmsCase{"two_dims", {3, 4}, {2, 3, 4}, rms_opt(true)},
                      RmsCase{"three_dims_4d_input", {2, 2, 3}, {2, 2, 2, 3}, rms_opt(true)},
                      RmsCase{"no_affine", {5}, {3, 5}, rms_opt(false)},
                      RmsCase{"two_dims_no_affine", {3, 4}, {2, 3, 4}, rms_opt(false)},
                      RmsCase{"eps_given", {6}, {4, 6}, rms_opt(true, 1e-3)},
                      RmsCase{"eps_huge", {6}, {4, 6}, rms_opt(true, 10.0)},
                      RmsCase{"eps_zero", {6}, {4, 6}, rms_opt(true, 0.0)},
                      RmsCase{"one_value_rows", {1}, {5, 1}, rms_opt(true, 0.5)}),
    [](const auto& info) { return std::string(info.param.label); });

// LayerNorm over three trailing dims (issue 10, item 2; ranks 1 and 2 are in
// tests/test_gradcheck_layers.cpp).
TEST(GradCheckLayerNormMultiDim, ThreeTrailingDims) {
  for (bool bias : {true, false}) {
    LayerNormOptions o;
    o.bias = bias;
    LayerNorm<double> l({2, 3, 4}, o);
    Rng rng(43);
    for (auto& e : l.state())
      for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += 0.5 * rng.normal();
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 3, 4}), 44);
  }
}

// ---- Fast kernels against ref:: ----
template <typename T>
std::vector<T> randv(int64_t n, uint64_t seed, double mean = 0, double sd = 1) {
  std::vector<T> v(static_cast<size_t>(n));
  Rng(seed).fill_normal(v.data(), n, mean, sd);
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
    if (!(err <= worst)) worst = err, at = i;  // NaN counts as worse
  }
  EXPECT_LE(worst, tol) << what << ": element " << at << " fast " << got[at] << " ref " << want[at];
}

template <typename T>
void check_kernels(int64_t N, int64_t D, int threads, bool affine, double tol) {
  Threads guard(threads);
  const std::string what = "N=" + std::to_string(N) + " D=" + std::to_string(D) +
                           " threads=" + std::to_string(threads) +
                           " affine=" + std::to_string(affine);
  const int64_t n = N * D;
  auto x = randv<T>(n, 1, 0.3, 1.5), dy = randv<T>(n, 2), gamma = randv<T>(D, 3, 1.0, 0.5);
  const T* g = affine ? gamma.data() : nullptr;
  std::vector<T> y(n), r(N), y_ref(n), r_ref(N);
  rmsnorm_forward(y.data(), r.data(), x.data(), g, N, D, T(1e-6));
  ref::rmsnorm_forward(y_ref.data(), r_ref.data(), x.data(), g, N, D, T(1e-6));
  expect_close(y, y_ref, tol, what + " y");
  expect_close(r, r_ref, tol, what + " rstd");
  for (bool want_dx : {true, false}) {
    auto dg = randv<T>(D, 5), dg_ref = dg;  // accumulates
    std::vector<T> dx(n, T(7)), dx_ref(n, T(7));
    rmsnorm_backward(want_dx ? dx.data() : nullptr, affine ? dg.data() : nullptr, dy.data(),
                     x.data(), r_ref.data(), g, N, D);
    ref::rmsnorm_backward(want_dx ? dx_ref.data() : nullptr, affine ? dg_ref.data() : nullptr,
                          dy.data(), x.data(), r_ref.data(), g, N, D);
    expect_close(dx, dx_ref, tol, what + (want_dx ? " dx" : " untouched dx"));
    expect_close(dg, dg_ref, tol, what + " dgamma");
  }
}

TEST(RMSNormKernels, FastMatchesReference) {
  const int64_t shapes[][2] = {{1, 1},      {3, 5},     {7, 17},    {2, 1000},
                               {100, 1025}, {20000, 1}, {1, 40000}, {64, 513}};
  for (int threads : {1, 2, 3})
    for (const auto& s : shapes)
      for (bool affine : {true, false}) check_kernels<float>(s[0], s[1], threads, affine, 1e-4);
}

TEST(RMSNormKernels, StreamedOutputsAndDoubleMatchReference) {
  for (int threads : {1, 3}) {
    check_kernels<float>(1030, 1025, threads, true, 1e-4);  // >= 4 MB: non-temporal stores
    check_kernels<double>(40, 1025, threads, true, 1e-11);
    check_kernels<double>(40, 1025, threads, false, 1e-11);
  }
}

// ---- Numerics at the edges: the float kernels against a long-double definition ----
// Error of a row: max |got - want| / (the row's largest term), the terms being
// |xhat * gamma| for y, rstd * |dy * gamma| + |xhat| * rstd * |mean(g * xhat)| for dx
// and sum over rows |dy * xhat| for dgamma. Where the exact value is not a float
// (beyond FLT_MAX) nothing is required; 1e-5 elsewhere, plus FLT_MIN for results
// that are float subnormals (docs/numerics.md, limit 3).
struct EdgeCase {
  std::string label;
  std::vector<float> x, gamma, dy;  // gamma empty: no affine
  int64_t D;
  float eps;
};

void check_edge(const EdgeCase& c) {
  SCOPED_TRACE(c.label);
  using LD = long double;
  const int64_t D = c.D, N = static_cast<int64_t>(c.x.size()) / D;
  const float* g = c.gamma.empty() ? nullptr : c.gamma.data();
  std::vector<float> y(c.x.size()), r(N), dx(c.x.size()), dg(D, 0.f);
  std::vector<float> y2(c.x.size()), r2(N), dx2(c.x.size()), dg2(D, 0.f);
  rmsnorm_forward(y.data(), r.data(), c.x.data(), g, N, D, c.eps);
  rmsnorm_backward(dx.data(), g ? dg.data() : nullptr, c.dy.data(), c.x.data(), r.data(), g, N, D);
  ref::rmsnorm_forward(y2.data(), r2.data(), c.x.data(), g, N, D, c.eps);
  ref::rmsnorm_backward(dx2.data(), g ? dg2.data() : nullptr, c.dy.data(), c.x.data(), r2.data(), g,
                        N, D);
  std::vector<LD> dg_want(D, 0), dg_scale(D, 0);
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = c.x.data() + n * D;
    const float* dyr = c.dy.data() + n * D;
    LD ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += LD(xr[d]) * xr[d];
    const LD rs = 1 / std::sqrt(ss / D + LD(c.eps));
    // The backward uses the saved float rstd, as PyTorch's does: its exact
    // derivative is taken at that rstd.
    const LD rb = r[n];
    LD sgx = 0;
    for (int64_t d = 0; d < D; ++d) sgx += LD(dyr[d]) * (g ? g[d] : 1.f) * xr[d] * rb;
    const LD mgx = sgx / D;
    LD ys = 0, dxs = 0;
    for (int64_t d = 0; d < D; ++d) {
      const LD gm = g ? g[d] : 1.f;
      ys = std::max(ys, std::abs(LD(xr[d]) * rs * gm));
      dxs = std::max(dxs, rb * std::abs(LD(dyr[d]) * gm) + std::abs(xr[d] * rb * rb * mgx));
      dg_want[d] += LD(dyr[d]) * xr[d] * rb;
      dg_scale[d] += std::abs(LD(dyr[d]) * xr[d] * rb);
    }
    for (int64_t d = 0; d < D; ++d) {
      const LD gm = g ? g[d] : 1.f;
      const LD yw = LD(xr[d]) * rs * gm;
      const LD dxw = rb * (LD(dyr[d]) * gm - LD(xr[d]) * rb * mgx);
      const size_t i = static_cast<size_t>(n * D + d);
      for (auto [got, want, scale, what] :
           {std::tuple{y[i], yw, ys, "y"}, std::tuple{y2[i], yw, ys, "ref y"},
            std::tuple{dx[i], dxw, dxs, "dx"}, std::tuple{dx2[i], dxw, dxs, "ref dx"}}) {
        if (!(std::abs(want) < FLT_MAX) || !(scale < LD(FLT_MAX) * 1e30L)) continue;
        EXPECT_LE(std::abs(LD(got) - want), 1e-5L * scale + FLT_MIN)
            << what << " row " << n << " d " << d << ": got " << got << ", want " << double(want);
      }
    }
  }
  if (g) {
    for (int64_t d = 0; d < D; ++d) {
      if (std::abs(dg_want[d]) < FLT_MAX) {
        EXPECT_LE(std::abs(LD(dg[d]) - dg_want[d]), 1e-5L * dg_scale[d] + FLT_MIN)
            << "dgamma " << d;
      }
    }
  }
}

std::vector<float> rows(int64_t N, int64_t D, uint64_t seed, double scale, double mean = 0) {
  std::vector<float> v = randv<float>(N * D, seed, mean, 1.0);
  for (float& f : v) f = static_cast<float>(double(f) * scale);
  return v;
}

TEST(RMSNormEdges, SweepOfScalesGammasEpsAndGradients) {
  for (int64_t D : {4, 37, 1000}) {
    const int64_t N = 6;
    for (double xs : {1e-30, 1e-3, 1.0, 1e17, 1e19, 1e25, 1e37})
      for (double gs : {0.0, 1e-30, 1.0, -3.0, 2e36})
        for (float eps : {1e-12f, FLT_EPSILON, 1e-5f, 1e3f})
          for (double dys : {1e-30, 1.0, 1e30}) {
            EdgeCase c{"D=" + std::to_string(D) + " x*" + std::to_string(xs) + " gamma*" +
                           std::to_string(gs) + " eps=" + std::to_string(eps) + " dy*" +
                           std::to_string(dys),
                       rows(N, D, 7, xs, 0.5),
                       rows(1, D, 8, gs, 1.0),
                       rows(N, D, 9, dys),
                       D,
                       eps};
            check_edge(c);
            c.gamma.clear();
            c.label += " no affine";
            check_edge(c);
          }
  }
}

TEST(RMSNormEdges, NearFloatMaxAndConstantRows) {
  const float M = FLT_MAX;
  const int64_t D = 8;
  std::vector<float> x = {
      M,     -M,    M,     M,     -M,     M,      -M,     M,  // every value +-FLT_MAX
      3e38f, 1,     2,     3,     4,      5,      6,      7,      7.25f,  7.25f,  7.25f,  7.25f,
      7.25f, 7.25f, 7.25f, 7.25f, -3e30f, -3e30f, -3e30f, -3e30f, -3e30f, -3e30f, -3e30f, -3e30f};
  for (float eps : {0.f, 1e-12f, FLT_EPSILON})
    check_edge({"near FLT_MAX eps=" + std::to_string(eps), x, rows(1, D, 3, 1.0, 1.0),
                rows(4, D, 4, 1.0), D, eps});
  // Means of 1e4 with a spread of 1e-2, and rows of one value repeated (RMSNorm
  // does not centre: y = x / rms, the spread rides on a large rms).
  std::vector<float> big = rows(16, 96, 11, 1e-2);
  for (float& v : big) v += 1e4f;
  for (float eps : {1e-12f, 1e-5f})
    check_edge(
        {"mean 1e4 sd 1e-2", big, rows(1, 96, 12, 1.0, 1.0), rows(16, 96, 13, 1.0), 96, eps});
  // +-FLT_MAX rows: y = +-1 * gamma exactly as the definition.
  std::vector<float> y(x.size()), r(4);
  rmsnorm_forward(y.data(), r.data(), x.data(), static_cast<const float*>(nullptr), 4, D, 0.f);
  for (int64_t d = 0; d < D; ++d) EXPECT_FLOAT_EQ(y[d], x[d] > 0 ? 1.f : -1.f);
  for (int64_t d = 16; d < 32; ++d) EXPECT_FLOAT_EQ(std::abs(y[d]), 1.f);
}

// PyTorch 2.15's float RMSNorm squares in float: for x = [3e19, 1, 2, -4e19]
// the mean of squares is inf and it returns all zeros (float64: [1.2, 4e-20,
// 8e-20, -1.6]). normlab sums the squares in double and returns the float64
// result (docs/model-spec.md): more accurate, never less finite.
TEST(RMSNormEdges, LargeRowsAreNormalizedWherePyTorchFloatGivesZeros) {
  const std::vector<float> x = {3e19f, 1, 2, -4e19f};
  for (bool fast : {true, false}) {
    std::vector<float> y(4), r(1);
    (fast ? rmsnorm_forward<float> : ref::rmsnorm_forward<float>)(y.data(), r.data(), x.data(),
                                                                  nullptr, 1, 4, FLT_EPSILON);
    EXPECT_FLOAT_EQ(y[0], 1.2f);
    EXPECT_FLOAT_EQ(y[1], 4e-20f);
    EXPECT_FLOAT_EQ(y[2], 8e-20f);
    EXPECT_FLOAT_EQ(y[3], -1.6f);
  }
}

TEST(RMSNormEdges, ZeroRows) {
  // eps > 0: y = 0, rstd = 1/sqrt(eps), dx = dy * gamma / sqrt(eps), dgamma += 0.
  RMSNorm<float> l({3});
  l.weight[0] = 2, l.weight[1] = -1, l.weight[2] = 0.5;
  const Tensor<float> x({2, 3}, 0.f);
  const Tensor<float>& y = l.forward(x);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(y[i], 0.f);
  Tensor<float> dy({2, 3}, 1.f);
  const Tensor<float>& dx = l.backward(dy);
  const float r = 1 / std::sqrt(FLT_EPSILON);
  EXPECT_FLOAT_EQ(dx[0], 2 * r);
  EXPECT_FLOAT_EQ(dx[4], -r);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(l.dweight[i], 0.f);
  // eps = 0: 0 / 0, NaN as in PyTorch (rsqrt(0) = inf, 0 * inf).
  RMSNormOptions o;
  o.eps = 0.0;
  RMSNorm<float> l0({3}, o);
  const Tensor<float>& y0 = l0.forward(x);
  for (int64_t i = 0; i < 6; ++i) EXPECT_TRUE(std::isnan(y0[i]));
}

TEST(RMSNormEdges, NaNAndInfPropagateAsInPyTorch) {
  // A NaN makes its row NaN; an inf makes the mean of squares inf, rstd 0:
  // finite values give 0 and the inf itself NaN (PyTorch 2.15, float and double).
  RMSNorm<float> l({3});
  Tensor<float> x({3, 3}, 1.f);
  x[1] = NAN;
  x[4] = INFINITY;
  const Tensor<float>& y = l.forward(x);
  for (int64_t i = 0; i < 3; ++i) EXPECT_TRUE(std::isnan(y[i]));
  EXPECT_EQ(y[3], 0.f);
  EXPECT_TRUE(std::isnan(y[4]));
  EXPECT_EQ(y[5], 0.f);
  for (int64_t i = 6; i < 9; ++i) EXPECT_FLOAT_EQ(y[i], 1.f / std::sqrt(1.f + FLT_EPSILON));
}

// ---- RMSNorm = LayerNorm(bias=False) on rows of zero mean ----
// With mean(x) = 0 per row, var = mean(x^2): the outputs and dgamma agree; dx
// differs by rstd * mean(dy * gamma) per row (LayerNorm's gradient has no
// component along the ones vector), which is 0 when dy * gamma has zero row means.
TEST(RMSNormInvariant, EqualsLayerNormWithoutBiasOnZeroMeanRows) {
  for (double eps : {1e-5, 1e-2}) {
    const Shape ns{3, 8};
    const int64_t N = 5, D = 24;
    LayerNormOptions lo;
    lo.bias = false;
    lo.eps = eps;
    RMSNormOptions ro;
    ro.eps = eps;
    LayerNorm<double> ln(ns, lo);
    RMSNorm<double> rms(ns, ro);
    Rng rng(77);
    for (int64_t d = 0; d < D; ++d) ln.weight[d] = rms.weight[d] = 1 + 0.5 * rng.normal();
    Tensor<double> x({N, 3, 8}), dy({N, 3, 8});
    Rng(78).fill_normal(x.data(), x.numel(), 2.0, 3.0);
    Rng(79).fill_normal(dy.data(), dy.numel(), 0.0, 1.0);
    for (int64_t n = 0; n < N; ++n) {
      double mx = 0, mg = 0;
      for (int64_t d = 0; d < D; ++d)
        mx += x[n * D + d] / D, mg += dy[n * D + d] * ln.weight[d] / D;
      for (int64_t d = 0; d < D; ++d) {
        x[n * D + d] -= mx;
        dy[n * D + d] -= mg / ln.weight[d];  // now sum_d dy * gamma = 0
      }
    }
    const Tensor<double>& y1 = ln.forward(x);
    const Tensor<double>& y2 = rms.forward(x);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y1[i], y2[i], 1e-12);
    const Tensor<double>& dx1 = ln.backward(dy);
    const Tensor<double>& dx2 = rms.backward(dy);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(dx1[i], dx2[i], 1e-12);
    for (int64_t d = 0; d < D; ++d) EXPECT_NEAR(ln.dweight[d], rms.dweight[d], 1e-11);
  }
}

// ---- The layer contract ----
TEST(RMSNormLayer, StateNameAndEps) {
  RMSNorm<float> a({4, 5});
  ASSERT_EQ(a.state().size(), 1u);
  EXPECT_EQ(a.state()[0].name, "weight");
  EXPECT_EQ(a.weight.shape(), Shape({4, 5}));
  for (int64_t i = 0; i < 20; ++i) EXPECT_EQ(a.weight[i], 1.f);
  EXPECT_EQ(a.name(), "RMSNorm(4x5)");
  EXPECT_EQ(a.eps(), FLT_EPSILON);
  EXPECT_EQ(RMSNorm<double>({4}).eps(), DBL_EPSILON);
  RMSNorm<float> b({7}, rms_opt(false, 1e-6));
  EXPECT_TRUE(b.state().empty());
  EXPECT_EQ(b.name(), "RMSNorm(7, eps=1e-06, elementwise_affine=false)");
  EXPECT_EQ(b.eps(), 1e-6f);
}

TEST(RMSNormLayer, BadConstructionAndShapesThrowNamingTheNumbers) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const normlab::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] { RMSNorm<float>(Shape{}); }).find("RMSNorm: normalized_shape"),
            std::string::npos);
  EXPECT_NE(msg([] { RMSNorm<float>({3, 0}); }).find("(3, 0)"), std::string::npos);
  EXPECT_NE(msg([] { RMSNorm<float>({3}, rms_opt(true, -1.0)); }).find("got -1"),
            std::string::npos);
  EXPECT_NE(msg([] { RMSNorm<float>({3}, rms_opt(true, NAN)); }).find("eps"), std::string::npos);
  RMSNorm<float> l({3, 4});
  const Tensor<float> x({2, 4, 3});
  const std::string m = msg([&] { l.forward(x); });
  EXPECT_NE(m.find("RMSNorm(3x4)"), std::string::npos) << m;
  EXPECT_NE(m.find("(2, 4, 3)"), std::string::npos) << m;
}

TEST(RMSNormLayer, EmptyBatchAndNoInputGradient) {
  RMSNorm<float> l({3});
  const Tensor<float> x({0, 3});
  EXPECT_EQ(l.forward(x).shape(), Shape({0, 3}));
  const Tensor<float> dy({0, 3});
  EXPECT_EQ(l.backward(dy).shape(), Shape({0, 3}));
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(l.dweight[i], 0.f);
  l.set_input_grad(false);
  const Tensor<float> x2({2, 3}, 1.f), dy2({2, 3}, 1.f);
  l.forward(x2);
  EXPECT_EQ(l.backward(dy2).numel(), 0);
  l.backward(dy2);  // parameter gradients accumulate
  const float r = 1 / std::sqrt(1 + FLT_EPSILON);
  EXPECT_FLOAT_EQ(l.dweight[0], 4 * r);
}

// ---- Model spec: rmsnorm, dims= and shape= ----
TEST(RMSNormSpec, PlansAndBuildsMultiDimNorms) {
  const auto plan = plan_model(
      "rmsnorm(shape=28x28, eps=1e-6), layernorm(dims=2, bias=false), ln(dims=1), flatten, "
      "rmsnorm(784, elementwise_affine=false, eps=none), rmsnorm",
      {2, 28, 28});
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[0].kind, LayerKind::RMSNorm);
  EXPECT_EQ(plan[0].norm_shape, Shape({28, 28}));
  EXPECT_EQ(plan[0].in, 784);
  EXPECT_EQ(plan[0].rms.eps, 1e-6);
  EXPECT_EQ(plan[1].kind, LayerKind::LayerNorm);
  EXPECT_EQ(plan[1].norm_shape, Shape({28, 28}));
  EXPECT_FALSE(plan[1].ln.bias);
  EXPECT_EQ(plan[2].norm_shape, Shape({28}));
  EXPECT_EQ(plan[4].norm_shape, Shape({784}));
  EXPECT_FALSE(plan[4].rms.eps.has_value());
  EXPECT_FALSE(plan[4].rms.elementwise_affine);
  EXPECT_FALSE(plan[5].rms.eps.has_value());
  Rng rng(1);
  auto net = build_model<float>(plan, rng);
  std::vector<std::string> keys;
  for (auto& e : net->state()) keys.push_back(e.name + " " + shape_str(e.value->shape()));
  EXPECT_EQ(keys, (std::vector<std::string>{"0.weight (28, 28)", "1.weight (28, 28)",
                                            "2.weight (28)", "2.bias (28)", "5.weight (784)"}));
  Tensor<float> x({2, 28, 28}, 0.5f);
  EXPECT_EQ(net->forward(x).shape(), Shape({2, 784}));
}

TEST(RMSNormSpec, BadOptionsNameTheItemAndNumbers) {
  auto msg = [](const std::string& spec, Shape in) {
    try {
      plan_model(spec, in);
    } catch (const normlab::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Shape in{2, 28, 28};
  EXPECT_NE(msg("rmsnorm(dims=3)", in).find("last 3 dims"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(dims=0)", in).find("size must be positive"), std::string::npos);
  EXPECT_NE(msg("layernorm(shape=28x27)", in).find("trailing dims (28, 27)"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(shape=28x0)", in).find("got 0"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(shape=28xa)", in).find("sizes separated by 'x'"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(shape=28, dims=1)", in).find("not both"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(28, dims=1)", in).find("not both"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(27)", in).find("normalizes over 27 features"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(eps=-1)", in).find("eps must be"), std::string::npos);
  EXPECT_NE(msg("layernorm(eps=none)", in).find("eps must be"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(bias=false)", in).find("unknown option 'bias'"), std::string::npos);
  EXPECT_NE(msg("rmsnorm(dims=2)", {2, 2048, 1024}).find("more than 1048576"), std::string::npos);
}

}  // namespace
}  // namespace normlab
