// GroupNorm and InstanceNorm1d: the fast kernels against ref:: and a
// long-double reference (shapes, thread counts, the numerics edges the other
// norms pass), the invariants (G = 1 is LayerNorm over (C, *), G = C is
// InstanceNorm1d), the layers' PyTorch semantics (errors, empty batches,
// eps = 0, running statistics, unbatched input) and gradient checks in double
// for every option. PyTorch's own numbers: tests/fixtures/layers/groupnorm_*,
// instancenorm1d_* (test_torch_fixtures.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gradcheck.hpp"
#include "normlab/error.hpp"
#include "normlab/groupnorm_kernels.hpp"
#include "normlab/layers.hpp"
#include "normlab/rng.hpp"
#include "omp_threads.hpp"

namespace normlab {
namespace {

using LD = long double;

std::vector<float> normal(int64_t n, uint64_t seed, double mean, double sd) {
  constexpr double kMax = std::numeric_limits<float>::max();
  std::vector<float> v(static_cast<size_t>(n));
  Rng rng(seed);
  for (auto& e : v) e = static_cast<float>(std::clamp(mean + sd * rng.normal(), -kMax, kMax));
  return v;
}

struct Dims {
  int64_t N, C, S, G;
};

std::string str(const Dims& d) {
  return "(N " + std::to_string(d.N) + ", C " + std::to_string(d.C) + ", S " + std::to_string(d.S) +
         ", G " + std::to_string(d.G) + ")";
}

struct Result {
  std::vector<float> y, dx, dgamma, dbeta, mean, rstd, var;
};

// The definition in long double, with the size of each output's terms (errors
// are measured against them, as in test_numerics_edges.cpp).
struct Reference {
  std::vector<LD> y, dx, dgamma, dbeta;
  LD y_scale = 0, dx_scale = 0, dgamma_scale = 0, dbeta_scale = 0;
};

Reference reference(const std::vector<float>& x, const std::vector<float>& dy, const float* gamma,
                    const float* beta, float eps, const Dims& d) {
  const int64_t Cg = d.C / d.G, D = Cg * d.S;
  Reference r;
  r.y.assign(x.size(), 0), r.dx.assign(x.size(), 0);
  r.dgamma.assign(d.C, 0), r.dbeta.assign(d.C, 0);
  std::vector<LD> gt(d.C, 0), bt(d.C, 0);
  for (int64_t row = 0; row < d.N * d.G; ++row) {
    const int64_t base = row * D, c0 = (row % d.G) * Cg;
    LD m = 0, v = 0;
    for (int64_t i = 0; i < D; ++i) m += x[base + i];
    m /= D;
    for (int64_t i = 0; i < D; ++i) v += (x[base + i] - m) * (x[base + i] - m);
    v /= D;
    const LD rstd = 1 / std::sqrt(v + static_cast<LD>(eps));
    LD mg = 0, mgx = 0;
    for (int64_t i = 0; i < D; ++i) {
      const int64_t c = c0 + i / d.S;
      const LD gm = gamma ? gamma[c] : 1, bt_ = beta ? beta[c] : 0;
      const LD xhat = (x[base + i] - m) * rstd;
      r.y[base + i] = xhat * gm + bt_;
      const LD g = static_cast<LD>(dy[base + i]) * gm;
      mg += g;
      mgx += g * xhat;
      r.dgamma[c] += dy[base + i] * xhat;
      r.dbeta[c] += dy[base + i];
      gt[c] += std::abs(dy[base + i] * xhat);
      bt[c] += std::abs(static_cast<LD>(dy[base + i]));
      r.y_scale = std::max(r.y_scale, std::abs(xhat * gm) + std::abs(bt_));
      r.dx_scale = std::max(r.dx_scale, std::abs(g * rstd));
    }
    mg /= D, mgx /= D;
    for (int64_t i = 0; i < D; ++i) {
      const int64_t c = c0 + i / d.S;
      const LD gm = gamma ? gamma[c] : 1;
      const LD xhat = (x[base + i] - m) * rstd;
      r.dx[base + i] = rstd * (static_cast<LD>(dy[base + i]) * gm - mg - xhat * mgx);
    }
  }
  for (int64_t c = 0; c < d.C; ++c) {
    r.dgamma_scale = std::max(r.dgamma_scale, gt[c]);
    r.dbeta_scale = std::max(r.dbeta_scale, bt[c]);
  }
  return r;
}

template <bool Fast>
Result run(const std::vector<float>& x, const std::vector<float>& dy, const float* gamma,
           const float* beta, float eps, const Dims& d, bool want_dx = true) {
  Result r;
  r.y.assign(x.size(), -1), r.dx.assign(want_dx ? x.size() : 0, -1);
  r.dgamma.assign(d.C, 0.5f), r.dbeta.assign(d.C, -0.5f);  // accumulate onto these
  r.mean.resize(d.N * d.G), r.rstd.resize(d.N * d.G), r.var.resize(d.N * d.G);
  auto fwd = Fast ? &groupnorm_forward<float> : &ref::groupnorm_forward<float>;
  auto bwd = Fast ? &groupnorm_backward<float> : &ref::groupnorm_backward<float>;
  fwd(r.y.data(), r.mean.data(), r.rstd.data(), r.var.data(), x.data(), gamma, beta, d.N, d.C, d.S,
      d.G, eps);
  bwd(want_dx ? r.dx.data() : nullptr, gamma ? r.dgamma.data() : nullptr,
      gamma ? r.dbeta.data() : nullptr, dy.data(), x.data(), r.mean.data(), r.rstd.data(), gamma,
      d.N, d.C, d.S, d.G);
  for (auto& v : r.dgamma) v -= 0.5f;
  for (auto& v : r.dbeta) v += 0.5f;
  return r;
}

double error(const std::vector<float>& got, const std::vector<LD>& want, LD scale) {
  LD worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(static_cast<LD>(got[i]) - want[i]));
  }
  return static_cast<double>(worst / std::max<LD>(scale, std::numeric_limits<LD>::min()));
}

// Both kernel sets on x (N, C, S) with random gamma, beta, dy: y, dx, dgamma,
// dbeta within tol of the long-double definition (relative to their terms).
void check_kernels(const std::string& what, const std::vector<float>& x, const Dims& d,
                   float eps = 1e-5f, double tol = 2e-5, bool affine = true) {
  SCOPED_TRACE(what + " " + str(d));
  ASSERT_EQ(static_cast<int64_t>(x.size()), d.N * d.C * d.S);
  const std::vector<float> dy = normal(x.size(), 99, 0, 1);
  const std::vector<float> gamma = normal(d.C, 5, 1, 0.3), beta = normal(d.C, 6, 0, 0.5);
  const float* gp = affine ? gamma.data() : nullptr;
  const float* bp = affine ? beta.data() : nullptr;
  const Reference want = reference(x, dy, gp, bp, eps, d);
  for (int fast = 0; fast < 2; ++fast) {
    SCOPED_TRACE(fast ? "default kernels" : "ref kernels");
    const Result got = fast ? run<true>(x, dy, gp, bp, eps, d) : run<false>(x, dy, gp, bp, eps, d);
    EXPECT_LE(error(got.y, want.y, want.y_scale), tol) << "y";
    EXPECT_LE(error(got.dx, want.dx, want.dx_scale), tol) << "dx";
    if (affine) {
      EXPECT_LE(error(got.dgamma, want.dgamma, want.dgamma_scale), tol) << "dgamma";
      EXPECT_LE(error(got.dbeta, want.dbeta, want.dbeta_scale), tol) << "dbeta";
    }
  }
}

const std::vector<Dims> kShapes = {
    {4, 6, 1, 1},   {4, 6, 1, 3},     {4, 6, 1, 6},     {3, 8, 5, 2},     {3, 8, 5, 8},
    {2, 16, 37, 4}, {5, 32, 3, 8},    {2, 64, 256, 32}, {33, 12, 100, 3}, {1, 4, 4096, 1},
    {7, 96, 1, 4},  {64, 512, 1, 32}, {3, 128, 64, 128}};

TEST(GroupNormKernels, MatchTheDefinitionOnEveryShapeAndThreadCount) {
  for (int threads : {1, 2}) {
    Threads scope(threads);
    for (const Dims& d : kShapes) {
      const std::vector<float> x = normal(d.N * d.C * d.S, 1 + d.S, 0.5, 2);
      check_kernels("threads " + std::to_string(threads), x, d);
      check_kernels("no affine, threads " + std::to_string(threads), x, d, 1e-5f, 2e-5, false);
    }
  }
}

TEST(GroupNormKernels, WithoutDxStillAccumulatesParameterGradients) {
  const Dims d{3, 8, 17, 4};
  const std::vector<float> x = normal(3 * 8 * 17, 3, 0, 1), dy = normal(3 * 8 * 17, 4, 0, 1);
  const std::vector<float> gamma = normal(8, 5, 1, 0.3), beta = normal(8, 6, 0, 0.5);
  const Result a = run<true>(x, dy, gamma.data(), beta.data(), 1e-5f, d, true);
  const Result b = run<true>(x, dy, gamma.data(), beta.data(), 1e-5f, d, false);
  for (int64_t c = 0; c < 8; ++c) {
    EXPECT_FLOAT_EQ(a.dgamma[c], b.dgamma[c]);
    EXPECT_FLOAT_EQ(a.dbeta[c], b.dbeta[c]);
  }
}

// The statistics: mean, rstd and the biased variance of each (sample, group).
TEST(GroupNormKernels, SavedStatisticsAreThePerGroupMoments) {
  const Dims d{3, 6, 5, 3};
  const std::vector<float> x = normal(90, 8, 2, 3), dy(90, 0);
  const Result r = run<true>(x, dy, nullptr, nullptr, 1e-5f, d);
  for (int64_t row = 0; row < 9; ++row) {
    double m = 0, v = 0;
    for (int64_t i = 0; i < 10; ++i) m += x[row * 10 + i];
    m /= 10;
    for (int64_t i = 0; i < 10; ++i) v += (x[row * 10 + i] - m) * (x[row * 10 + i] - m);
    v /= 10;
    EXPECT_NEAR(r.mean[row], m, 1e-6 * (1 + std::abs(m)));
    EXPECT_NEAR(r.var[row], v, 1e-6 * v);
    EXPECT_NEAR(r.rstd[row], 1 / std::sqrt(v + 1e-5), 1e-6 / std::sqrt(v));
  }
}

// ---- the numerics edges of tests/test_numerics_edges.cpp, on groups ----

TEST(GroupNormNumerics, LargeMeanSmallSpread) {
  check_kernels("mean 1e4, sd 1e-2", normal(16 * 8 * 12, 1, 1e4, 1e-2), {16, 8, 12, 2});
  check_kernels("mean 1e4, sd 1e-2, (N, C)", normal(64 * 96, 2, 1e4, 1e-2), {64, 96, 1, 4});
}

TEST(GroupNormNumerics, ConstantGroups) {
  for (float v : {7.25f, -3e30f, 0.0f}) {
    std::vector<float> x(16 * 8 * 5, v);
    check_kernels("every value " + std::to_string(v), x, {16, 8, 5, 2});
    check_kernels("every value " + std::to_string(v) + " (N, C)", x, {16, 40, 1, 8});
  }
  std::vector<float> x = normal(16 * 8 * 5, 2, 0, 1);
  for (size_t i = 0; i < x.size() / 2; ++i) x[i] = 1e4f;
  check_kernels("half the groups 1e4", x, {16, 8, 5, 2});
}

TEST(GroupNormNumerics, TinyAndHugeEps) {
  check_kernels("eps 1e-12, sd 1e-3", normal(32 * 10 * 5, 5, 0.5, 1e-3), {32, 10, 5, 5}, 1e-12f);
  check_kernels("eps 1e-12, constant", std::vector<float>(32 * 10 * 5, 2.0f), {32, 10, 5, 5},
                1e-12f);
  check_kernels("eps 1e3", normal(32 * 10 * 5, 6, 1, 1), {32, 10, 5, 2}, 1e3f);
  check_kernels("eps 1e3, sd 1e3", normal(32 * 10 * 5, 7, 0, 1e3), {32, 10, 5, 2}, 1e3f);
}

TEST(GroupNormNumerics, NearFloatOverflow) {
  std::vector<float> extremes(16 * 32);
  for (size_t i = 0; i < extremes.size(); ++i)
    extremes[i] = (i % 3 ? 1 : -1) * std::numeric_limits<float>::max();
  const std::vector<std::pair<std::string, std::vector<float>>> cases = {
      {"sd 1e19", normal(16 * 32, 16, 0, 1e19)},
      {"sd 1e25", normal(16 * 32, 17, 5e25, 1e25)},
      {"sd 1e38", normal(16 * 32, 14, 0, 1e38)},
      {"mean 2e38, sd 1e37", normal(16 * 32, 15, 2e38, 1e37)},
      {"+-FLT_MAX", extremes}};
  for (int threads : {1, 2}) {
    Threads scope(threads);
    for (const auto& [name, x] : cases) {
      check_kernels(name, x, {16, 8, 4, 2});
      check_kernels(name, x, {16, 32, 1, 4});
      check_kernels(name, x, {4, 8, 16, 8});
    }
  }
}

// A constant group with a huge gamma: rstd * gamma overflows where xhat * gamma
// = 0 does not (y = beta). The fast kernels must not fold it into inf * 0 = NaN.
TEST(GroupNormNumerics, ConstantGroupHugeWeight) {
  const Dims d{2, 4, 16, 2};
  std::vector<float> x(2 * 4 * 16, 3.0f), dy = normal(2 * 4 * 16, 3, 0, 1);
  std::vector<float> gamma(4, 1e37f), beta = {0.5f, -1, 2, 0};
  for (int fast = 0; fast < 2; ++fast) {
    const Result r = fast ? run<true>(x, dy, gamma.data(), beta.data(), 1e-5f, d)
                          : run<false>(x, dy, gamma.data(), beta.data(), 1e-5f, d);
    for (int64_t i = 0; i < 2 * 4 * 16; ++i) EXPECT_EQ(r.y[i], beta[(i / 16) % 4]) << i;
  }
  // Fast equals ref wherever ref is finite.
  const Result a = run<true>(x, dy, gamma.data(), beta.data(), 1e-5f, d);
  const Result b = run<false>(x, dy, gamma.data(), beta.data(), 1e-5f, d);
  for (size_t i = 0; i < a.dx.size(); ++i) {
    if (std::isfinite(b.dx[i])) {
      EXPECT_NEAR(a.dx[i], b.dx[i], 1e-5 * std::abs(b.dx[i]) + 1e-30);
    }
  }
}

// ---- invariants ----

Tensor<double> randn(const Shape& s, uint64_t seed, double mean = 0, double sd = 1) {
  return test::randn(s, seed, mean, sd);
}

// GroupNorm(1, C) = LayerNorm over (C, *) without affine, then the per-channel affine.
TEST(GroupNormInvariants, OneGroupIsLayerNormOverChannelsAndLength) {
  const int64_t N = 3, C = 4, L = 5;
  const Tensor<double> x = randn({N, C, L}, 1, 0.3, 2), dy = randn({N, C, L}, 2);
  GroupNorm<double> gn(1, C);
  Rng rng(3);
  for (int64_t c = 0; c < C; ++c) gn.weight[c] = 1 + 0.5 * rng.normal(), gn.bias[c] = rng.normal();
  LayerNormOptions o;
  o.elementwise_affine = false;
  LayerNorm<double> ln({C, L}, o);
  const Tensor<double>& y = gn.forward(x);
  const Tensor<double>& z = ln.forward(x);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = (i / L) % C;
    EXPECT_NEAR(y[i], z[i] * gn.weight[c] + gn.bias[c], 1e-12) << i;
  }
  // Backward: LayerNorm's dx for dy * weight[c].
  Tensor<double> dyw({N, C, L});
  for (int64_t i = 0; i < x.numel(); ++i) dyw[i] = dy[i] * gn.weight[(i / L) % C];
  const Tensor<double>& dx = gn.backward(dy);
  const Tensor<double>& dz = ln.backward(dyw);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(dx[i], dz[i], 1e-12) << i;
  // Without affine the two layers are the same.
  GroupNorm<double> plain(1, C, {1e-5, false});
  const Tensor<double>& y2 = plain.forward(x);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y2[i], z[i], 1e-13) << i;
}

// GroupNorm(C, C) = InstanceNorm1d(C, affine=true), forward and backward.
TEST(GroupNormInvariants, OneGroupPerChannelIsInstanceNorm) {
  const int64_t N = 3, C = 4, L = 6;
  const Tensor<double> x = randn({N, C, L}, 4, -1, 3), dy = randn({N, C, L}, 5);
  GroupNorm<double> gn(C, C);
  InstanceNormOptions o;
  o.affine = true;
  InstanceNorm1d<double> in(C, o);
  Rng rng(6);
  for (int64_t c = 0; c < C; ++c) {
    gn.weight[c] = in.weight[c] = 1 + 0.5 * rng.normal();
    gn.bias[c] = in.bias[c] = rng.normal();
  }
  const Tensor<double>& y = gn.forward(x);
  const Tensor<double>& z = in.forward(x);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(y[i], z[i], 1e-13) << i;
  const Tensor<double>& dx = gn.backward(dy);
  const Tensor<double>& dz = in.backward(dy);
  for (int64_t i = 0; i < x.numel(); ++i) EXPECT_NEAR(dx[i], dz[i], 1e-13) << i;
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_NEAR(gn.dweight[c], in.dweight[c], 1e-12);
    EXPECT_NEAR(gn.dbias[c], in.dbias[c], 1e-12);
  }
}

// (C, L) is one sample: the same numbers as (1, C, L).
TEST(InstanceNormLayer, UnbatchedInputIsOneSample) {
  InstanceNormOptions o;
  o.affine = o.track_running_stats = true;
  InstanceNorm1d<float> a(3, o), b(3, o);
  Tensor<float> x2({3, 7}), x3({1, 3, 7}), g2({3, 7}), g3({1, 3, 7});
  const std::vector<float> xv = normal(21, 1, 1, 2), gv = normal(21, 2, 0, 1);
  std::copy(xv.begin(), xv.end(), x2.data()), std::copy(xv.begin(), xv.end(), x3.data());
  std::copy(gv.begin(), gv.end(), g2.data()), std::copy(gv.begin(), gv.end(), g3.data());
  const Tensor<float>& y2 = a.forward(x2);
  const Tensor<float>& y3 = b.forward(x3);
  ASSERT_EQ(y2.shape(), (Shape{3, 7}));
  for (int i = 0; i < 21; ++i) EXPECT_EQ(y2[i], y3[i]);
  const Tensor<float>& d2 = a.backward(g2);
  const Tensor<float>& d3 = b.backward(g3);
  for (int i = 0; i < 21; ++i) EXPECT_EQ(d2[i], d3[i]);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(a.running_mean[c], b.running_mean[c]);
    EXPECT_EQ(a.running_var[c], b.running_var[c]);
  }
}

// ---- layer semantics ----

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GroupNormLayer, ConstructionAndShapeErrorsNameTheNumbers) {
  EXPECT_NE(error_of([] { GroupNorm<float>(3, 4); })
                .find("num_channels (4) must be divisible by "
                      "num_groups (3)"),
            std::string::npos);
  EXPECT_NE(error_of([] { GroupNorm<float>(0, 4); }).find("num_groups must be positive, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { GroupNorm<float>(2, -4); }).find("num_channels must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              GroupNorm<float>(2, 4, {-1.0, true});
            }).find("eps must be >= 0"),
            std::string::npos);
  GroupNorm<float> gn(2, 4);
  EXPECT_NE(error_of([&] { gn.output_shape({4}); }).find("at least 2 dimensions, got shape (4)"),
            std::string::npos);
  const std::string e = error_of([&] { gn.output_shape({2, 6, 3}); });
  EXPECT_NE(e.find("GroupNorm(2, 4): expected 4 channels (dim 1), got 6"), std::string::npos) << e;
  EXPECT_EQ(gn.name(), "GroupNorm(2, 4)");
  EXPECT_EQ(GroupNorm<float>(1, 3, {1e-3, false}).name(),
            "GroupNorm(1, 3, affine=false, eps=0.001)");
}

TEST(GroupNormLayer, EmptyBatchAndEmptyLength) {
  for (const Shape& s : {Shape{0, 4, 3}, Shape{0, 4}, Shape{2, 4, 0}}) {
    GroupNorm<float> gn(2, 4);
    const Tensor<float> x(s), dy(s);
    EXPECT_EQ(gn.forward(x).shape(), s);
    EXPECT_EQ(gn.backward(dy).shape(), s);
    for (int c = 0; c < 4; ++c) EXPECT_EQ(gn.dweight[c], 0.0f);
  }
}

// eps = 0 on a constant group: NaN, as PyTorch's GroupNorm gives; NaN in one
// group stays in that group.
TEST(GroupNormLayer, EpsZeroAndNaN) {
  GroupNorm<float> gn(2, 4, {0.0, true});
  Tensor<float> x({1, 4, 3}, 1.0f);
  const Tensor<float>& y = gn.forward(x);
  for (int64_t i = 0; i < 12; ++i) EXPECT_TRUE(std::isnan(y[i])) << i;
  GroupNorm<float> g2(2, 4);
  Tensor<float> z({2, 4, 3});
  const std::vector<float> v = normal(24, 3, 0, 1);
  std::copy(v.begin(), v.end(), z.data());
  z[0] = std::numeric_limits<float>::quiet_NaN();
  const Tensor<float>& w = g2.forward(z);
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(std::isnan(w[i]), i < 6) << i;
}

TEST(InstanceNormLayer, ErrorsAsPyTorch) {
  InstanceNormOptions aff;
  aff.affine = true;
  InstanceNorm1d<float> a(3, aff);
  EXPECT_NE(error_of([&] {
              a.output_shape({2, 3, 4, 5});
            }).find("expected a 2D (C, L) or 3D (N, C, L) input, got shape (2, 3, 4, 5)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              a.output_shape({2, 4, 5});
            }).find("expected 3 channels (dim 1), got 4"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              a.output_shape({4, 5});
            }).find("expected 3 channels (dim 0), got 4"),
            std::string::npos);
  Tensor<float> x1({2, 3, 1}, 1.0f);
  EXPECT_NE(error_of([&] { a.forward(x1); }).find("more than 1 spatial element"),
            std::string::npos);
  EXPECT_NE(error_of([] { InstanceNorm1d<float>(0); }).find("num_features must be positive"),
            std::string::npos);
  InstanceNormOptions bad;
  bad.momentum = std::numeric_limits<double>::infinity();
  EXPECT_NE(error_of([&] { InstanceNorm1d<float>(2, bad); }).find("momentum must be a finite"),
            std::string::npos);
  // Without affine and running statistics num_features is unused: PyTorch warns and goes on.
  InstanceNorm1d<float> plain(3);
  Tensor<float> x({2, 4, 5}, 2.0f);
  EXPECT_EQ(plain.forward(x).shape(), (Shape{2, 4, 5}));
  // Eval with running statistics takes L = 1 (PyTorch does).
  InstanceNormOptions tr;
  tr.track_running_stats = true;
  InstanceNorm1d<float> t(3, tr);
  t.set_training(false);
  EXPECT_EQ(t.forward(x1).shape(), (Shape{2, 3, 1}));
  EXPECT_EQ(InstanceNorm1d<float>(3, tr).name(), "InstanceNorm1d(3, track_running_stats=true)");
}

// PyTorch's instance norm gives rstd 0 for a constant instance with eps = 0
// (its batch-norm kernel): y = beta, dx = 0.
TEST(InstanceNormLayer, EpsZeroConstantInstanceGivesBeta) {
  InstanceNormOptions o;
  o.eps = 0;
  o.affine = true;
  InstanceNorm1d<float> in(2, o);
  in.bias[0] = 0.5f, in.bias[1] = -2;
  Tensor<float> x({1, 2, 4}, 3.0f);
  for (int l = 0; l < 4; ++l) x[4 + l] = static_cast<float>(l);  // channel 1 varies
  const Tensor<float>& y = in.forward(x);
  for (int l = 0; l < 4; ++l) EXPECT_EQ(y[l], 0.5f);
  EXPECT_NEAR(y[4], -2 - 1.5 / std::sqrt(1.25), 1e-6);
  Tensor<float> dy({1, 2, 4}, 1.0f);
  dy[1] = 5;
  const Tensor<float>& dx = in.backward(dy);
  for (int l = 0; l < 4; ++l) EXPECT_EQ(dx[l], 0.0f);
}

// Running statistics: the batch average of the instance statistics, unbiased
// variance; momentum none never moves them; num_batches_tracked stays 0.
TEST(InstanceNormLayer, RunningStatistics) {
  InstanceNormOptions o;
  o.track_running_stats = true;
  o.momentum = 0.25;
  InstanceNorm1d<double> in(2, o);
  const Tensor<double> x = test::randn({3, 2, 5}, 7, 1, 2);
  in.forward(x);
  for (int64_t c = 0; c < 2; ++c) {
    double m = 0, v = 0;
    for (int64_t n = 0; n < 3; ++n) {
      double mn = 0, vn = 0;
      for (int l = 0; l < 5; ++l) mn += x[(n * 2 + c) * 5 + l];
      mn /= 5;
      for (int l = 0; l < 5; ++l) vn += std::pow(x[(n * 2 + c) * 5 + l] - mn, 2);
      m += mn / 3, v += vn / 4 / 3;
    }
    EXPECT_NEAR(in.running_mean[c], 0.25 * m, 1e-12);
    EXPECT_NEAR(in.running_var[c], 0.75 + 0.25 * v, 1e-12);
  }
  EXPECT_EQ(in.num_batches_tracked, 0);
  o.momentum = std::nullopt;
  InstanceNorm1d<double> none(2, o);
  none.forward(x);
  EXPECT_EQ(none.running_mean[0], 0.0);
  EXPECT_EQ(none.running_var[1], 1.0);
  // An empty batch averages nothing: NaN, as PyTorch 2.15 writes.
  InstanceNorm1d<double> empty(2, o);
  const Tensor<double> x0({0, 2, 5});
  EXPECT_EQ(empty.forward(x0).shape(), (Shape{0, 2, 5}));
  EXPECT_TRUE(std::isnan(empty.running_mean[0]));
}

// ---- gradient checks in double ----

void jitter(Layer<double>& layer, uint64_t seed) {
  Rng rng(seed);
  for (auto& e : layer.state())
    if (e.is_param())
      for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += 0.5 * rng.normal();
}

TEST(GradCheckGroupNorm, EveryGroupingShapeAndAffine) {
  for (bool affine : {true, false})
    for (const Shape& s : {Shape{3, 6}, Shape{2, 6, 4}, Shape{2, 6, 3, 2}})
      for (int64_t G : {1, 2, 3, 6}) {
        // (3, 6) with G = 3: groups of two values, xhat = +-1 whatever x is, so
        // dx is 0 by symmetry and the numeric derivative is rounding noise.
        if (s.size() == 2 && G == 3) continue;
        SCOPED_TRACE("G " + std::to_string(G) + " shape " + shape_str(s) +
                     (affine ? " affine" : ""));
        GroupNorm<double> gn(G, 6, {1e-5, affine});
        jitter(gn, 11);
        EXPECT_GRADIENTS_OK(gn, s, 12);
      }
  GroupNorm<double> eps(2, 4, {0.3, true});
  jitter(eps, 13);
  EXPECT_GRADIENTS_OK(eps, Shape({3, 4, 5}), 14);
}

TEST(GradCheckInstanceNorm, EveryOption) {
  for (bool affine : {true, false})
    for (bool track : {true, false})
      for (std::optional<double> momentum : {std::optional<double>(0.1), std::optional<double>()})
        for (const Shape& s : {Shape{3, 4, 5}, Shape{4, 6}}) {
          SCOPED_TRACE(std::string(affine ? "affine " : "") + (track ? "track " : "") +
                       (momentum ? "" : "momentum none ") + shape_str(s));
          InstanceNormOptions o;
          o.affine = affine;
          o.track_running_stats = track;
          o.momentum = momentum;
          o.eps = 1e-3;
          InstanceNorm1d<double> in(4, o);
          jitter(in, 21);
          in.set_training(true);
          for (uint64_t k = 0; k < 3; ++k) {
            const Tensor<double> w = test::randn(s, 30 + k, 0.7, 2.0);
            in.forward(w);  // running statistics away from (0, 1)
          }
          EXPECT_GRADIENTS_OK(in, s, 22);
        }
}

TEST(GradCheckUnflatten, SplitsAndJoins) {
  Unflatten<double> u({3, 4});
  EXPECT_GRADIENTS_OK(u, Shape({2, 12}), 5);
  EXPECT_EQ(u.output_shape({2, 12, 5}), (Shape{2, 3, 4, 5}));
}

}  // namespace
}  // namespace normlab
