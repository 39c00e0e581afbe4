// The BatchNorm variants (include/normlab/bn_family.hpp): gradient checks in
// double for every option (Batch Renorm with r and d frozen to the forward's
// values: the paper's stop_gradient), fast kernels against their references,
// the invariants (Batch Renorm with rmax = 1, dmax = 0 and Ghost BN with one
// virtual batch are BatchNorm1d; mean-only BN's output has zero batch mean per
// channel, plus bias), the schedule, and BatchNorm's edge cases (large means
// with small spread, constant channels, N = 0, one value per channel, eps = 0).
// The PyTorch fixtures are in test_torch_fixtures.cpp (tests/fixtures/layers/).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "gradcheck.hpp"
#include "normlab/bn_family.hpp"
#include "normlab/bn_family_kernels.hpp"
#include "normlab/error.hpp"
#include "normlab/kernels.hpp"
#include "normlab/model_spec.hpp"

namespace normlab {
namespace {

using test::randn;

void jitter_params(Layer<double>& layer, uint64_t seed, double scale = 0.5) {
  Rng rng(seed);
  for (auto& e : layer.state())
    if (e.is_param())
      for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += scale * rng.normal();
}

// Training forwards with shifted, scaled inputs: running statistics far from (0, 1).
void warm_up(Layer<double>& layer, const Shape& shape, uint64_t seed) {
  layer.set_training(true);
  for (uint64_t s = 0; s < 3; ++s) {
    const Tensor<double> x = randn(shape, seed + 100 + s, 0.7, 2.0);
    layer.forward(x);
  }
}

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

template <typename T>
double max_rel_diff(const Tensor<T>& a, const Tensor<T>& b) {
  double d = 0, s = 1e-30;
  for (int64_t i = 0; i < a.numel(); ++i) {
    d = std::max(d, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    s = std::max(s, std::abs(static_cast<double>(b[i])));
  }
  return d / s;
}

// ---------------------------------------------------------------- gradient checks

struct Case {
  const char* label;
  Shape shape;
  bool affine, track;
  std::optional<double> momentum;
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.label;
}
const Case kCases[] = {
    {"nc_affine", {5, 3}, true, true, 0.1},
    {"nc_no_affine", {5, 3}, false, true, 0.1},
    {"ncl_affine", {3, 2, 4}, true, true, 0.1},
    {"ncl_no_affine", {3, 2, 4}, false, true, 0.1},
    {"nc_momentum_none", {5, 3}, true, true, std::nullopt},
    {"nc_no_tracking", {5, 3}, true, false, 0.1},
    {"ncl_no_tracking", {3, 2, 4}, false, false, 0.1},
    // (N, C, H, W) (issue 11): per channel over N*H*W
    {"nchw_affine", {5, 2, 2, 3}, true, true, 0.1},
    {"nchw_no_affine_momentum_none", {5, 2, 3, 2}, false, true, std::nullopt},
    {"nchw_no_tracking", {5, 2, 2, 2}, true, false, 0.1},
};

class GradCheckMeanOnly : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheckMeanOnly, TrainAndEval) {
  const Case& c = GetParam();
  MeanOnlyBatchNorm1d<double> l(c.shape[1], {c.momentum, c.affine, c.track});
  jitter_params(l, 31);
  warm_up(l, c.shape, 32);
  EXPECT_GRADIENTS_OK(l, c.shape, 33);
}
INSTANTIATE_TEST_SUITE_P(BnFamily, GradCheckMeanOnly, ::testing::ValuesIn(kCases));

class GradCheckGhost : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheckGhost, TrainAndEvalWithARemainderBatch) {
  const Case& c = GetParam();
  BatchNormOptions o;
  o.affine = c.affine;
  o.track_running_stats = c.track;
  o.momentum = c.momentum;
  // Virtual batches of 2 samples: (5, C) gives 2 + 2 + 1 -- one value per
  // channel in the last, refused for (N, C): 3 there (3 + 2).
  const int64_t K = c.shape.size() == 3 ? 2 : 3;
  GhostBatchNorm1d<double> l(c.shape[1], K, o);
  jitter_params(l, 41);
  warm_up(l, c.shape, 42);
  EXPECT_GRADIENTS_OK(l, c.shape, 43);
}
INSTANTIATE_TEST_SUITE_P(BnFamily, GradCheckGhost, ::testing::ValuesIn(kCases));

// Batch Renorm: r and d are constants of the backward. The gradient check
// compares with central differences of a layer whose r and d are frozen to the
// values of the unperturbed forward, i.e. the function backward differentiates.
class GradCheckRenorm : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheckRenorm, FrozenCorrectionTrainAndEval) {
  const Case& c = GetParam();
  if (!c.track) GTEST_SKIP() << "Batch Renorm always tracks running statistics";
  for (auto [rmax, dmax] : {std::pair{1.5, 0.5}, std::pair{4.0, 3.0}}) {
    BatchRenormOptions o;
    o.affine = c.affine;
    o.momentum = c.momentum;
    o.rmax = rmax;
    o.dmax = dmax;
    BatchRenorm1d<double> l(c.shape[1], o);
    jitter_params(l, 51);
    warm_up(l, c.shape, 52);
    const Tensor<double> x = randn(c.shape, 53);
    const auto saved = std::make_tuple(l.running_mean, l.running_var, l.num_batches_tracked);
    l.forward(x);  // r, d of this x
    Tensor<double> r = l.last_r(), d = l.last_d();
    std::tie(l.running_mean, l.running_var, l.num_batches_tracked) = saved;
    l.freeze_correction(r, d);
    EXPECT_TRUE(test::gradients_ok(l, x, 53)) << "rmax " << rmax << " dmax " << dmax;
    // The unfrozen layer's backward is the frozen one's: r and d are constants.
    l.freeze_correction({}, {});
    l.set_training(true);
    l.zero_grad();
    const Tensor<double> g = randn(c.shape, 54);
    const Tensor<double> dx_live = l.forward(x).numel() ? l.backward(g) : Tensor<double>();
    std::vector<Tensor<double>> grads_live;
    for (auto& e : l.state())
      if (e.is_param()) grads_live.push_back(*e.grad);
    std::tie(l.running_mean, l.running_var, l.num_batches_tracked) = saved;
    l.freeze_correction(r, d);
    l.zero_grad();
    l.forward(x);
    EXPECT_LT(max_rel_diff(l.backward(g), dx_live), 1e-12);
    size_t k = 0;
    for (auto& e : l.state())
      if (e.is_param()) {
        EXPECT_LT(max_rel_diff(*e.grad, grads_live[k++]), 1e-12) << e.name;
      }
  }
}
INSTANTIATE_TEST_SUITE_P(BnFamily, GradCheckRenorm, ::testing::ValuesIn(kCases));

// With r and d clipped at their bounds on every channel they are locally
// constant anyway: the plain (unfrozen) layer passes the gradient check.
TEST(BnFamilyRenorm, SaturatedClippingPassesThePlainGradientCheck) {
  BatchRenormOptions o;
  o.rmax = 1.2;
  o.dmax = 0.1;
  BatchRenorm1d<double> l(3, o);
  jitter_params(l, 61);
  l.running_mean.fill(-2.0);  // d = +dmax
  l.running_var.fill(0.01);   // sigma_B / sigma ~ 10: r = rmax
  const Tensor<double> x = randn({6, 3}, 62);
  EXPECT_GRADIENTS_OK(l, x, 63);
  l.forward(x);
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_DOUBLE_EQ(l.last_r()[c], 1.2);
    EXPECT_DOUBLE_EQ(l.last_d()[c], 0.1);
  }
}

// ---------------------------------------------------------------- invariants

template <typename T>
void expect_same_state(Layer<T>& a, Layer<T>& b, double tol) {
  auto sa = a.state(), sb = b.state();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    ASSERT_EQ(sa[i].name, sb[i].name);
    if (sa[i].count) {
      EXPECT_EQ(*sa[i].count, *sb[i].count) << sa[i].name;
      continue;
    }
    EXPECT_LE(max_rel_diff(*sa[i].value, *sb[i].value), tol) << sa[i].name;
    if (sa[i].grad) {
      EXPECT_LE(max_rel_diff(*sa[i].grad, *sb[i].grad), tol) << sa[i].name << " grad";
    }
  }
}

// Several training steps and an eval step of two layers on the same inputs:
// outputs, dx, parameter gradients and buffers agree to tol.
template <typename T>
void expect_same_layers(Layer<T>& a, Layer<T>& b, const Shape& shape, double tol) {
  for (int step = 0; step < 4; ++step) {
    const bool train = step < 3;
    a.set_training(train);
    b.set_training(train);
    a.zero_grad();
    b.zero_grad();
    Tensor<T> x(shape), g(shape);
    Rng rng(700 + step);
    for (int64_t i = 0; i < x.numel(); ++i) {
      x[i] = static_cast<T>(rng.normal() * (1 + step) + 0.5 * step);
      g[i] = static_cast<T>(rng.normal());
    }
    EXPECT_LE(max_rel_diff(a.forward(x), b.forward(x)), tol) << "output, step " << step;
    EXPECT_LE(max_rel_diff(a.backward(g), b.backward(g)), tol) << "dx, step " << step;
    expect_same_state(a, b, tol);
  }
}

template <typename T>
void renorm_equals_batchnorm(const Shape& shape, bool affine, std::optional<double> momentum) {
  BatchRenormOptions ro;
  ro.rmax = 1;
  ro.dmax = 0;
  ro.affine = affine;
  ro.momentum = momentum;
  BatchNormOptions bo;
  bo.affine = affine;
  bo.momentum = momentum;
  BatchRenorm1d<T> rn(shape[1], ro);
  BatchNorm1d<T> bn(shape[1], bo);
  if (affine)
    for (int64_t c = 0; c < shape[1]; ++c) {
      rn.weight[c] = bn.weight[c] = static_cast<T>(1 + 0.1 * c);
      rn.bias[c] = bn.bias[c] = static_cast<T>(0.2 * c - 0.1);
    }
  expect_same_layers<T>(rn, bn, shape, 0.0);  // the same arithmetic: bit for bit
}

TEST(BnFamilyInvariants, RenormWithRmax1Dmax0IsBatchNorm) {
  for (const Shape& s : {Shape{64, 48}, Shape{4096, 8}, Shape{8, 6, 33}}) {
    renorm_equals_batchnorm<float>(s, true, 0.1);
    renorm_equals_batchnorm<float>(s, false, std::nullopt);
    renorm_equals_batchnorm<double>(s, true, 0.3);
  }
}

// The schedule's warm-up is plain BatchNorm too.
TEST(BnFamilyInvariants, RenormWarmupIsBatchNorm) {
  BatchRenormOptions ro;
  ro.rmax = 3;
  ro.dmax = 5;
  ro.warmup = 10;
  BatchRenorm1d<float> rn(16, ro);
  BatchNorm1d<float> bn(16);
  expect_same_layers<float>(rn, bn, {32, 16}, 0.0);
}

TEST(BnFamilyInvariants, GhostWithOneVirtualBatchIsBatchNorm) {
  for (const Shape& s : {Shape{64, 48}, Shape{4096, 8}, Shape{8, 6, 33}}) {
    for (int64_t K : {s[0], s[0] + 5}) {
      GhostBatchNorm1d<float> gb(s[1], K);
      BatchNorm1d<float> bn(s[1]);
      expect_same_layers<float>(gb, bn, s, 0.0);
      BatchNormOptions o;
      o.momentum = std::nullopt;
      o.track_running_stats = false;
      GhostBatchNorm1d<double> gd(s[1], K, o);
      BatchNorm1d<double> bd(s[1], o);
      expect_same_layers<double>(gd, bd, s, 0.0);
    }
  }
}

// Ghost BN = BatchNorm1d applied to each virtual batch in turn (the running
// statistics move once per virtual batch, num_batches_tracked counts them).
TEST(BnFamilyInvariants, GhostIsBatchNormPerVirtualBatch) {
  const int64_t N = 11, C = 5, K = 4;
  GhostBatchNorm1d<double> gb(C, K);
  BatchNorm1d<double> bn(C);
  const Tensor<double> x = randn({N, C}, 81, 1.0, 2.0), g = randn({N, C}, 82);
  const Tensor<double>& y = gb.forward(x);
  const Tensor<double>& dx = gb.backward(g);
  for (int64_t n0 = 0; n0 < N; n0 += K) {
    const int64_t ng = std::min(K, N - n0);
    Tensor<double> xs({ng, C}), gs({ng, C});
    std::copy(x.data() + n0 * C, x.data() + (n0 + ng) * C, xs.data());
    std::copy(g.data() + n0 * C, g.data() + (n0 + ng) * C, gs.data());
    const Tensor<double>& ys = bn.forward(xs);
    const Tensor<double>& dxs = bn.backward(gs);
    for (int64_t i = 0; i < ng * C; ++i) {
      EXPECT_NEAR(y[n0 * C + i], ys[i], 1e-12);
      EXPECT_NEAR(dx[n0 * C + i], dxs[i], 1e-12);
    }
  }
  EXPECT_EQ(gb.num_batches_tracked, 3);
  expect_same_state<double>(gb, bn, 1e-12);  // gradients summed over the virtual batches too
}

// The fast Ghost BN kernels (threads over whole virtual batches, vector
// finish) against BatchNorm's reference on each virtual batch, in float, with
// normal data and with means of 1e4 and a spread of 1e-2.
TEST(BnFamilyKernels, GhostMatchesReferencePerVirtualBatch) {
  for (const Shape& s : {Shape{4096, 64}, Shape{1000, 33}, Shape{96, 8, 40}}) {
    for (double big : {0.0, 1e4}) {
      const int64_t N = s[0], C = s[1], L = s.size() == 3 ? s[2] : 1, K = 32, S = C * L;
      const int64_t G = (N + K - 1) / K;
      Tensor<float> x(s), g(s), gamma({C}), beta({C});
      Rng rng(17);
      for (int64_t i = 0; i < x.numel(); ++i) {
        x[i] = static_cast<float>(big * (1 + 0.01 * ((i / L) % C)) +
                                  (big ? 1e-2 : 1.0) * rng.normal());
        g[i] = static_cast<float>(rng.normal());
      }
      for (int64_t c = 0; c < C; ++c) {
        gamma[c] = static_cast<float>(1 + 0.3 * rng.normal());
        beta[c] = static_cast<float>(0.3 * rng.normal());
      }
      Tensor<float> y(s), dx(s), m({G, C}), r({G, C}), v({G, C}), dg({C}, 0.0f), db({C}, 0.0f);
      ghost_batchnorm_forward_train(y.data(), m.data(), r.data(), v.data(), x.data(), gamma.data(),
                                    beta.data(), N, C, L, K, 1e-5f);
      ghost_batchnorm_backward_train(dx.data(), dg.data(), db.data(), g.data(), x.data(), m.data(),
                                     r.data(), gamma.data(), N, C, L, K,
                                     static_cast<const char*>(nullptr));
      Tensor<float> y2(s), dx2(s), m2({G, C}), r2({G, C}), v2({G, C}), dg2({C}, 0.0f),
          db2({C}, 0.0f);
      for (int64_t gi = 0; gi < G; ++gi) {
        const int64_t n0 = gi * K, ng = std::min(K, N - n0);
        ref::batchnorm_forward_train(y2.data() + n0 * S, m2.data() + gi * C, r2.data() + gi * C,
                                     v2.data() + gi * C, x.data() + n0 * S, gamma.data(),
                                     beta.data(), ng, C, L, 1e-5f);
        ref::batchnorm_backward_train(dx2.data() + n0 * S, dg2.data(), db2.data(),
                                      g.data() + n0 * S, x.data() + n0 * S, m2.data() + gi * C,
                                      r2.data() + gi * C, gamma.data(), ng, C, L);
      }
      const std::string at = shape_str(s) + (big ? " large means" : "");
      EXPECT_LE(max_rel_diff(y, y2), 2e-6) << at;
      EXPECT_LE(max_rel_diff(dx, dx2), 1e-5) << at;
      EXPECT_LE(max_rel_diff(dg, dg2), 1e-5) << at;
      EXPECT_LE(max_rel_diff(db, db2), 1e-5) << at;
      EXPECT_LE(max_rel_diff(r, r2), 1e-6) << at;
    }
  }
}

TEST(BnFamilyInvariants, MeanOnlyOutputHasZeroBatchMeanPlusBias) {
  for (const Shape& s : {Shape{256, 40}, Shape{6, 4, 50}}) {
    MeanOnlyBatchNorm1d<float> l(s[1]);
    for (int64_t c = 0; c < s[1]; ++c) l.bias[c] = 0.5f * static_cast<float>(c) - 3;
    Tensor<float> x(s);
    Rng rng(91);
    for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(rng.normal() * 3 + 7);
    const Tensor<float>& y = l.forward(x);
    const int64_t L = s.size() == 3 ? s[2] : 1;
    for (int64_t c = 0; c < s[1]; ++c) {
      double m = 0;
      for (int64_t n = 0; n < s[0]; ++n)
        for (int64_t k = 0; k < L; ++k) m += y[(n * s[1] + c) * L + k];
      EXPECT_NEAR(m / static_cast<double>(s[0] * L), l.bias[c], 1e-5) << "channel " << c;
    }
    // dx = dy - mean(dy): also zero mean per channel; dbias = sum dy.
    const Tensor<float>& dx = l.backward(x);
    for (int64_t c = 0; c < s[1]; ++c) {
      double m = 0;
      for (int64_t n = 0; n < s[0]; ++n)
        for (int64_t k = 0; k < L; ++k) m += dx[(n * s[1] + c) * L + k];
      EXPECT_NEAR(m / static_cast<double>(s[0] * L), 0, 1e-5);
    }
  }
}

TEST(BnFamilyRenorm, ScheduleWarmupAndLinearRamps) {
  BatchRenormOptions o;  // the paper's: BN for 5k steps, rmax 3 at 40k, dmax 5 at 25k
  o.warmup = 5000;
  o.rmax_ramp = 35000;
  o.dmax_ramp = 20000;
  BatchRenorm1d<float> l(2, o);
  EXPECT_EQ(l.rmax_at(0), 1);
  EXPECT_EQ(l.dmax_at(4999), 0);
  EXPECT_EQ(l.rmax_at(5000), 1);
  EXPECT_DOUBLE_EQ(l.rmax_at(22500), 2);
  EXPECT_DOUBLE_EQ(l.dmax_at(15000), 2.5);
  EXPECT_EQ(l.rmax_at(40000), 3);
  EXPECT_EQ(l.dmax_at(25000), 5);
  EXPECT_EQ(l.rmax_at(1000000), 3);
  EXPECT_EQ(l.dmax_at(1000000), 5);
  BatchRenorm1d<float> fixed(2);  // no schedule: the bounds from the first step
  EXPECT_EQ(fixed.rmax_at(0), 3);
  EXPECT_EQ(fixed.dmax_at(0), 5);
}

// ---------------------------------------------------------------- fast vs reference

using Fill = std::function<float(Rng&, int64_t c)>;

void renorm_fast_vs_ref(const Shape& s, const Fill& fill, double tol) {
  const int64_t N = s[0], C = s[1], L = s.size() == 3 ? s[2] : 1, M = N * C * L;
  Tensor<float> x(s), g(s), gamma({C}), beta({C}), rm({C}), rv({C});
  Rng rng(5);
  for (int64_t i = 0; i < M; ++i) {
    x[i] = fill(rng, (i / L) % C);
    g[i] = static_cast<float>(rng.normal());
  }
  for (int64_t c = 0; c < C; ++c) {
    gamma[c] = static_cast<float>(1 + 0.3 * rng.normal());
    beta[c] = static_cast<float>(0.3 * rng.normal());
    rm[c] = x[c * L] + static_cast<float>(0.01 * rng.normal());
    rv[c] = static_cast<float>(1e-4 * (1 + rng.uniform()));
  }
  Tensor<float> y[2] = {Tensor<float>(s), Tensor<float>(s)},
                dx[2] = {Tensor<float>(s), Tensor<float>(s)};
  Tensor<float> st[2][7];
  for (int k = 0; k < 2; ++k)
    for (auto& t : st[k]) t = Tensor<float>({C}, 0.0f);
  for (int k = 0; k < 2; ++k) {
    auto& [mean, rstd, var, r, d, dg, db] = st[k];
    (k ? ref::batchrenorm_forward_train<float>
       : batchrenorm_forward_train<float>)(y[k].data(), mean.data(), rstd.data(), var.data(),
                                           r.data(), d.data(), x.data(), gamma.data(), beta.data(),
                                           rm.data(), rv.data(), 2.0, 1.0, N, C, L, 1e-5f);
    (k ? ref::batchrenorm_backward_train<float>
       : batchrenorm_backward_train<float>)(dx[k].data(), dg.data(), db.data(), g.data(), x.data(),
                                            mean.data(), rstd.data(), r.data(), d.data(),
                                            gamma.data(), N, C, L);
  }
  EXPECT_LE(max_rel_diff(y[0], y[1]), tol) << "y " << shape_str(s);
  EXPECT_LE(max_rel_diff(dx[0], dx[1]), tol) << "dx " << shape_str(s);
  for (int t = 0; t < 7; ++t) EXPECT_LE(max_rel_diff(st[0][t], st[1][t]), tol) << "stat " << t;
}

void meanonly_fast_vs_ref(const Shape& s, const Fill& fill, double tol) {
  const int64_t N = s[0], C = s[1], L = s.size() == 3 ? s[2] : 1, M = N * C * L;
  Tensor<float> x(s), g(s), bias({C});
  Rng rng(6);
  for (int64_t i = 0; i < M; ++i) {
    x[i] = fill(rng, (i / L) % C);
    g[i] = static_cast<float>(rng.normal());
  }
  for (int64_t c = 0; c < C; ++c) bias[c] = static_cast<float>(rng.normal());
  for (bool train : {true, false}) {
    Tensor<float> y[2] = {Tensor<float>(s), Tensor<float>(s)};
    Tensor<float> dx[2] = {Tensor<float>(s), Tensor<float>(s)};
    Tensor<float> mean[2] = {Tensor<float>({C}), Tensor<float>({C})};
    Tensor<float> db[2] = {Tensor<float>({C}, 0.0f), Tensor<float>({C}, 0.0f)};
    for (int k = 0; k < 2; ++k) {
      if (train)
        (k ? ref::meanonly_batchnorm_forward_train<float>
           : meanonly_batchnorm_forward_train<float>)(y[k].data(), mean[k].data(), x.data(),
                                                      bias.data(), N, C, L);
      else
        (k ? ref::meanonly_batchnorm_forward_eval<float>
           : meanonly_batchnorm_forward_eval<float>)(y[k].data(), x.data(), bias.data(),
                                                     bias.data(), N, C, L);
      (k ? ref::meanonly_batchnorm_backward<float>
         : meanonly_batchnorm_backward<float>)(train, dx[k].data(), db[k].data(), g.data(), N, C,
                                               L);
    }
    EXPECT_LE(max_rel_diff(y[0], y[1]), tol) << "y " << shape_str(s) << " train " << train;
    EXPECT_LE(max_rel_diff(dx[0], dx[1]), 1e-6) << "dx";
    EXPECT_LE(max_rel_diff(db[0], db[1]), 1e-6) << "dbias";
    if (train) {
      EXPECT_LE(max_rel_diff(mean[0], mean[1]), 1e-7) << "mean";
    }
  }
}

const Shape kShapes[] = {{3, 5}, {64, 48}, {2048, 24}, {7, 3, 9}, {16, 8, 200}};

TEST(BnFamilyKernels, FastMatchesReferenceOnNormalData) {
  const Fill normal = [](Rng& r, int64_t) { return static_cast<float>(r.normal() * 2 + 1); };
  for (const Shape& s : kShapes) {
    renorm_fast_vs_ref(s, normal, 2e-6);
    meanonly_fast_vs_ref(s, normal, 2e-6);
  }
}

// Means of 1e4 with a spread of 1e-2 (the float mean alone is off by 5 % of
// the spread): the normalized outputs must not see it.
TEST(BnFamilyKernels, LargeMeansWithSmallSpread) {
  const Fill big = [](Rng& r, int64_t c) {
    return static_cast<float>(1e4 * (1 + 0.1 * c) + 1e-2 * r.normal());
  };
  for (const Shape& s : kShapes) {
    renorm_fast_vs_ref(s, big, 2e-5);
    meanonly_fast_vs_ref(s, big, 2e-5);
  }
}

TEST(BnFamilyKernels, ConstantChannels) {
  const Fill constant = [](Rng&, int64_t c) { return static_cast<float>(3.25 * c - 1e3); };
  for (const Shape& s : kShapes) {
    renorm_fast_vs_ref(s, constant, 1e-6);
    meanonly_fast_vs_ref(s, constant, 1e-6);
  }
}

TEST(BnFamilyLayers, LargeMeansNormalizeInFloat) {
  const Shape s{256, 16};
  Tensor<float> xf(s);
  Tensor<double> xd(s);
  Rng rng(7);
  for (int64_t i = 0; i < xf.numel(); ++i)
    xd[i] = xf[i] = static_cast<float>(1e4 + 1e-2 * rng.normal());
  GhostBatchNorm1d<float> gf(16, 64);
  GhostBatchNorm1d<double> gd(16, 64);
  EXPECT_LE(max_rel_diff(gf.forward(xf),
                         [&] {
                           const Tensor<double>& y = gd.forward(xd);
                           Tensor<float> t(s);
                           for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(y[i]);
                           return t;
                         }()),
            1e-5);
}

// ---------------------------------------------------------------- edge cases and errors

TEST(BnFamilyEdges, EmptyBatchGivesEmptyOutputsAndCountsTheStep) {
  const Tensor<float> x({0, 4}), g({0, 4});
  MeanOnlyBatchNorm1d<float> m(4);
  BatchRenorm1d<float> r(4);
  GhostBatchNorm1d<float> gh(4, 2);
  for (Layer<float>* l : std::initializer_list<Layer<float>*>{&m, &r, &gh}) {
    EXPECT_EQ(l->forward(x).shape(), Shape({0, 4})) << l->name();
    EXPECT_EQ(l->backward(g).shape(), Shape({0, 4})) << l->name();
    l->set_training(false);
    EXPECT_EQ(l->forward(x).shape(), Shape({0, 4})) << l->name();
  }
  EXPECT_EQ(m.num_batches_tracked, 1);
  EXPECT_EQ(r.num_batches_tracked, 1);
  EXPECT_EQ(gh.num_batches_tracked, 1);
  EXPECT_EQ(r.running_var[0], 1.0f);
}

TEST(BnFamilyEdges, OneValuePerChannelInTrainingIsRefusedAsByBatchNorm) {
  const Tensor<float> x({1, 3}, 1.0f);
  BatchRenorm1d<float> r(3);
  EXPECT_NE(error_of([&] { r.forward(x); }).find("expected more than 1 value per channel"),
            std::string::npos);
  GhostBatchNorm1d<float> gh(3, 4);
  EXPECT_NE(error_of([&] { gh.forward(x); }).find("expected more than 1 value per channel"),
            std::string::npos);
  // A last virtual batch of one sample: refused, naming the numbers.
  const Tensor<float> x9({9, 3}, 1.0f);
  const std::string e = error_of([&] { gh.forward(x9); });
  EXPECT_NE(e.find("GhostBatchNorm1d(3, virtual_batch_size=4)"), std::string::npos) << e;
  EXPECT_NE(e.find("9 = 2 x 4 + 1"), std::string::npos) << e;
  GhostBatchNorm1d<float> g1(3, 1);
  EXPECT_NE(error_of([&] { g1.forward(x9); }).find("virtual_batch_size=1 on input shape (9, 3)"),
            std::string::npos);
  // (1, C, L > 1) is fine for all; eval takes one sample.
  const Tensor<float> x1l({1, 3, 2}, 1.0f);
  EXPECT_NO_THROW(gh.forward(x1l));
  EXPECT_NO_THROW(r.forward(x1l));
  r.set_training(false);
  EXPECT_NO_THROW(r.forward(x));
  // Mean-only BN has no variance: one value per channel gives y = bias, dx = 0.
  MeanOnlyBatchNorm1d<float> m(3);
  m.bias.fill(0.25f);
  const Tensor<float>& y = m.forward(x);
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(y[c], 0.25f);
  const Tensor<float>& dx = m.backward(x);
  for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(dx[c], 0.0f);
}

TEST(BnFamilyEdges, BadOptionsAndShapesNameTheLayerAndNumbers) {
  BatchRenormOptions o;
  o.rmax = 0.5;
  EXPECT_NE(error_of([&] {
              BatchRenorm1d<float>(4, o);
            }).find("rmax must be a finite number >= 1, got 0.5"),
            std::string::npos);
  o = {};
  o.dmax = -1;
  EXPECT_NE(error_of([&] { BatchRenorm1d<float>(4, o); }).find("dmax"), std::string::npos);
  o = {};
  o.warmup = -3;
  EXPECT_NE(error_of([&] { BatchRenorm1d<float>(4, o); }).find("-3"), std::string::npos);
  EXPECT_NE(error_of([&] {
              GhostBatchNorm1d<float>(4, 0);
            }).find("virtual_batch_size must be positive, got 0"),
            std::string::npos);
  EXPECT_NE(error_of([&] { MeanOnlyBatchNorm1d<float>(0); }).find("num_features"),
            std::string::npos);
  MeanOnlyBatchNorm1d<float> m(4);
  const Tensor<float> x({2, 5});
  EXPECT_NE(error_of([&] { m.forward(x); }).find("expected 4 channels, got shape (2, 5)"),
            std::string::npos);
  BatchRenormOptions z;
  z.eps = 0;
  BatchRenorm1d<float> r(5, z);
  EXPECT_NE(error_of([&] { r.forward(x); }).find("eps must be positive"), std::string::npos);
}

// NaN in the input reaches the output of its channel only, as in BatchNorm1d.
TEST(BnFamilyEdges, NaNStaysInItsChannel) {
  Tensor<float> x({8, 3});
  Rng rng(9);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(rng.normal());
  x[4] = std::numeric_limits<float>::quiet_NaN();  // channel 1
  MeanOnlyBatchNorm1d<float> m(3);
  BatchRenorm1d<float> r(3);
  GhostBatchNorm1d<float> gh(3, 4);
  for (Layer<float>* l : std::initializer_list<Layer<float>*>{&m, &r, &gh}) {
    const Tensor<float>& y = l->forward(x);
    EXPECT_TRUE(std::isnan(y[4])) << l->name();
    EXPECT_TRUE(std::isfinite(y[0]) && std::isfinite(y[2])) << l->name();
  }
}

// The layer contract (layer.hpp): no dx with input gradients off, parameter
// gradients accumulate, the output has the input's shape.
TEST(BnFamilyLayers, InputGradOffAndAccumulatingGradients) {
  MeanOnlyBatchNorm1d<float> m(4);
  BatchRenorm1d<float> r(4);
  GhostBatchNorm1d<float> gh(4, 3);
  Tensor<float> x({8, 4}), g({8, 4});
  Rng rng(3);
  for (int64_t i = 0; i < x.numel(); ++i) {
    x[i] = static_cast<float>(rng.normal());
    g[i] = static_cast<float>(rng.normal());
  }
  for (Layer<float>* l : std::initializer_list<Layer<float>*>{&m, &r, &gh}) {
    SCOPED_TRACE(l->name());
    l->zero_grad();
    EXPECT_EQ(l->output_shape({8, 4}), Shape({8, 4}));
    // The running statistics as they were, for the second forward (Batch
    // Renorm's r and d depend on them).
    std::vector<Tensor<float>> buffers;
    std::vector<int64_t> counts;
    for (auto& e : l->state())
      if (e.count)
        counts.push_back(*e.count);
      else if (!e.is_param())
        buffers.push_back(*e.value);
    l->forward(x);
    EXPECT_EQ(l->backward(g).shape(), Shape({8, 4}));
    std::vector<Tensor<float>> once;
    for (auto& e : l->state())
      if (e.is_param()) once.push_back(*e.grad);
    size_t b = 0, n = 0;
    for (auto& e : l->state())
      if (e.count)
        *e.count = counts[n++];
      else if (!e.is_param())
        *e.value = buffers[b++];
    l->set_input_grad(false);
    l->forward(x);
    EXPECT_EQ(l->backward(g).numel(), 0);
    size_t k = 0;
    for (auto& e : l->state())
      if (e.is_param()) {
        for (int64_t i = 0; i < e.grad->numel(); ++i)
          EXPECT_NEAR((*e.grad)[i], 2 * once[k][i], 1e-5) << e.name;
        ++k;
      }
    l->set_input_grad(true);
  }
}

// ---------------------------------------------------------------- extreme values

// The float layers against the same layers in double on inputs near float's
// limits and with huge and tiny eps (the cases of test_numerics_edges.cpp):
// wherever the double result is a finite float, the float one is finite and
// within 1e-5 of the tensor's scale (outputs, dx, parameter gradients), in
// training and then in eval (unless the float running variance overflowed).
template <template <typename> class LayerT, typename MakeF, typename MakeD>
void expect_float_matches_double(const char* what, MakeF make_f, MakeD make_d, const Shape& s,
                                 const std::function<double(Rng&, int64_t)>& fill) {
  auto lf = make_f();
  auto ld = make_d();
  Tensor<float> xf(s), gf(s);
  Tensor<double> xd(s), gd(s);
  Rng rng(23);
  const int64_t L = s.size() == 3 ? s[2] : 1;
  for (int64_t i = 0; i < xf.numel(); ++i) {
    xd[i] = xf[i] = static_cast<float>(fill(rng, (i / L) % s[1]));
    gd[i] = gf[i] = static_cast<float>(rng.normal());
  }
  auto sf = lf.state();
  auto sd = ld.state();
  for (size_t k = 0; k < sf.size(); ++k)
    if (sf[k].is_param())
      for (int64_t i = 0; i < sf[k].value->numel(); ++i)
        (*sd[k].value)[i] = (*sf[k].value)[i] = static_cast<float>(0.5 + 0.1 * i);
  const auto compare = [&](const char* which, const Tensor<float>& f, const Tensor<double>& d) {
    double scale = 0;
    for (int64_t i = 0; i < d.numel(); ++i)
      if (std::isfinite(static_cast<float>(d[i]))) scale = std::max(scale, std::abs(d[i]));
    for (int64_t i = 0; i < d.numel(); ++i) {
      if (!std::isfinite(static_cast<float>(d[i]))) continue;
      ASSERT_TRUE(std::isfinite(f[i])) << what << " " << which << " [" << i << "] double " << d[i];
      ASSERT_LE(std::abs(f[i] - d[i]), 1e-5 * scale + 1e-30)
          << what << " " << which << " [" << i << "] float " << f[i] << " double " << d[i];
    }
  };
  for (bool train : {true, false}) {
    // A variance above float's largest leaves inf in the float running_var (as
    // in BatchNorm1d and PyTorch): eval then differs from double's, by design.
    bool finite_buffers = true;
    for (auto& e : lf.state())
      if (e.value && !e.is_param())
        for (int64_t i = 0; i < e.value->numel(); ++i)
          finite_buffers &= std::isfinite((*e.value)[i]);
    if (!train && !finite_buffers) break;
    lf.set_training(train);
    ld.set_training(train);
    lf.zero_grad();
    ld.zero_grad();
    compare(train ? "train y" : "eval y", lf.forward(xf), ld.forward(xd));
    compare(train ? "train dx" : "eval dx", lf.backward(gf), ld.backward(gd));
    sf = lf.state();
    sd = ld.state();
    for (size_t k = 0; k < sf.size(); ++k)
      if (sf[k].is_param()) compare(sf[k].name.c_str(), *sf[k].grad, *sd[k].grad);
  }
}

TEST(BnFamilyEdges, NearFloatLimitsAndExtremeEps) {
  struct Data {
    const char* name;
    std::function<double(Rng&, int64_t)> fill;
    double eps;
  };
  const Data data[] = {
      {"near overflow, zero mean", [](Rng& r, int64_t) { return 1e38 * std::tanh(r.normal()); },
       1e-5},
      {"mean 3e38, spread 1e30", [](Rng& r, int64_t) { return 3e38 + 1e30 * r.normal(); }, 1e-5},
      {"mean -2e38, spread 1e37", [](Rng& r, int64_t) { return -2e38 + 1e37 * r.normal(); }, 1e-5},
      {"tiny values", [](Rng& r, int64_t) { return 1e-30 * r.normal(); }, 1e-38},
      {"huge eps", [](Rng& r, int64_t c) { return 1e3 * r.normal() + c; }, 1e30},
      {"tiny eps, spread 1e-3", [](Rng& r, int64_t c) { return 5 + c + 1e-3 * r.normal(); }, 1e-12},
  };
  for (const Data& d : data)
    for (const Shape& s : {Shape{64, 6}, Shape{8, 3, 16}}) {
      SCOPED_TRACE(std::string(d.name) + " " + shape_str(s));
      BatchRenormOptions ro;
      ro.eps = d.eps;
      ro.rmax = 2;
      ro.dmax = 1;
      expect_float_matches_double<BatchRenorm1d>(
          "renorm", [&] { return BatchRenorm1d<float>(s[1], ro); },
          [&] { return BatchRenorm1d<double>(s[1], ro); }, s, d.fill);
      BatchNormOptions go;
      go.eps = d.eps;
      expect_float_matches_double<GhostBatchNorm1d>(
          "ghost", [&] { return GhostBatchNorm1d<float>(s[1], 5, go); },
          [&] { return GhostBatchNorm1d<double>(s[1], 5, go); }, s, d.fill);
      expect_float_matches_double<MeanOnlyBatchNorm1d>(
          "mean-only", [&] { return MeanOnlyBatchNorm1d<float>(s[1]); },
          [&] { return MeanOnlyBatchNorm1d<double>(s[1]); }, s, d.fill);
    }
}

// ---------------------------------------------------------------- model spec

TEST(BnFamilySpec, BuildsTheLayersWithTheirOptionsAndStateKeys) {
  Rng rng(1);
  auto m = build_model<float>(
      "flatten, meanonlybn(affine=false, momentum=none), brn(schedule=paper, warmup=7, dmax=2), "
      "gbn(virtual_batch_size=5, eps=1e-3, track_running_stats=false), mean_only_batchnorm, "
      "batchrenorm(rmax=1.5), ghostbatchnorm",
      Shape{2, 2, 3}, rng);
  std::vector<std::string> names, keys;
  for (size_t i = 0; i < m->size(); ++i) names.push_back((*m)[i].name());
  EXPECT_EQ(names, (std::vector<std::string>{
                       "Flatten", "MeanOnlyBatchNorm1d(6, affine=false, momentum=none)",
                       "BatchRenorm1d(6, rmax=3, dmax=2, warmup=7, rmax_ramp=35000, "
                       "dmax_ramp=20000)",
                       "GhostBatchNorm1d(6, virtual_batch_size=5, track_running_stats=false, "
                       "eps=0.001)",
                       "MeanOnlyBatchNorm1d(6)", "BatchRenorm1d(6, rmax=1.5, dmax=5)",
                       "GhostBatchNorm1d(6, virtual_batch_size=32)"}));
  for (auto& e : m->state()) keys.push_back(e.name);
  EXPECT_EQ(keys,
            (std::vector<std::string>{
                "1.running_mean", "1.num_batches_tracked", "2.weight", "2.bias", "2.running_mean",
                "2.running_var",  "2.num_batches_tracked", "3.weight", "3.bias", "4.bias",
                "4.running_mean", "4.num_batches_tracked", "5.weight", "5.bias", "5.running_mean",
                "5.running_var",  "5.num_batches_tracked", "6.weight", "6.bias", "6.running_mean",
                "6.running_var",  "6.num_batches_tracked"}));
}

}  // namespace
}  // namespace normlab
