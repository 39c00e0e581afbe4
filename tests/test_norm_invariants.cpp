// Properties every normalization must have, whatever the kernel behind it:
// normalized groups (LayerNorm rows, BatchNorm channels) have mean 0 and variance
// var / (var + eps) ~ 1 before the affine; inputs with a large mean (randn * 0.01 + 1e4)
// normalize as accurately in float as the data allow; constant groups give finite zeros;
// BatchNorm refuses to train on one value per channel, naming itself and the shape.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/notebook_layers.hpp"

namespace normlab {
namespace {

template <typename T>
Tensor<T> randn(const Shape& shape, uint64_t seed, double mean = 0, double stddev = 1) {
  Tensor<T> t(shape);
  Rng(seed).fill_normal(t.data(), t.numel(), mean, stddev);
  return t;
}

// Mean and biased variance of the values x[idx(k)], k < count, in double.
template <typename T, typename Index>
std::pair<double, double> moments(const Tensor<T>& x, int64_t count, Index idx) {
  double m = 0, v = 0;
  for (int64_t k = 0; k < count; ++k) m += x[idx(k)];
  m /= static_cast<double>(count);
  for (int64_t k = 0; k < count; ++k) v += (x[idx(k)] - m) * (x[idx(k)] - m);
  return {m, v / static_cast<double>(count)};
}

void jitter(Tensor<float>& t, uint64_t seed) {
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] += static_cast<float>(0.5 * rng.normal());
}

// ---- Mean 0, variance 1 before the affine ----
// The exact target for the variance is var_in / (var_in + eps), computed from the input.

TEST(NormInvariants, LayerNormRowsHaveMeanZeroVarianceOne) {
  const int64_t N = 6, D = 50;
  for (bool affine : {false, true}) {
    LayerNormOptions opt;
    opt.elementwise_affine = affine;
    LayerNorm<float> ln({D}, opt);
    if (affine) {
      jitter(ln.weight, 1);
      jitter(ln.bias, 2);
    }
    const Tensor<float> x = randn<float>({N, D}, 3, 0.5, 3.0);
    Tensor<float> z = ln.forward(x);
    if (affine)  // undo the affine: z = (y - beta) / gamma
      for (int64_t i = 0; i < z.numel(); ++i) z[i] = (z[i] - ln.bias[i % D]) / ln.weight[i % D];
    for (int64_t n = 0; n < N; ++n) {
      auto row = [&](int64_t k) { return n * D + k; };
      const auto [m_in, v_in] = moments(x, D, row);
      const auto [m, v] = moments(z, D, row);
      EXPECT_NEAR(m, 0.0, affine ? 1e-5 : 1e-6) << "row " << n;
      EXPECT_NEAR(v, v_in / (v_in + 1e-5), affine ? 1e-5 : 1e-6) << "row " << n;
    }
  }
}

TEST(NormInvariants, BatchNormChannelsHaveMeanZeroVarianceOne) {
  for (const Shape& shape : {Shape{16, 5}, Shape{4, 3, 7}}) {
    const int64_t N = shape[0], C = shape[1], L = shape.size() == 3 ? shape[2] : 1;
    for (bool affine : {false, true}) {
      BatchNormOptions opt;
      opt.affine = affine;
      BatchNorm1d<float> bn(C, opt);
      if (affine) {
        jitter(bn.weight, 4);
        jitter(bn.bias, 5);
      }
      const Tensor<float> x = randn<float>(shape, 6, -2.0, 0.5);
      const Tensor<float>& y = bn.forward(x);
      for (int64_t c = 0; c < C; ++c) {
        auto at = [&](int64_t k) { return ((k / L) * C + c) * L + k % L; };
        const auto [m_in, v_in] = moments(x, N * L, at);
        Tensor<float> z(shape);
        for (int64_t k = 0; k < N * L; ++k)
          z[at(k)] = affine ? (y[at(k)] - bn.bias[c]) / bn.weight[c] : y[at(k)];
        const auto [m, v] = moments(z, N * L, at);
        EXPECT_NEAR(m, 0.0, 1e-5) << shape_str(shape) << " channel " << c;
        EXPECT_NEAR(v, v_in / (v_in + 1e-5), 1e-5) << shape_str(shape) << " channel " << c;
      }
    }
  }
}

// ---- randn * 0.01 + 1e4 in float ----
// E[x^2] - E[x]^2 would return 0 or a negative number here (1e8 - 1e8 in float). The float
// inputs themselves are quantized to ulp(1e4) ~ 1e-3, a tenth of their spread, so the
// reference is the exact normalization of those same float values, computed in double.
// Tolerance 1e-3 on unit-scale outputs: the float rounding of (x - mean) and of the output.
void expect_normalizes_exactly(const Tensor<float>& x, const Tensor<float>& y, int64_t groups,
                               int64_t count, const std::function<int64_t(int64_t, int64_t)>& at,
                               const char* what) {
  for (int64_t gidx = 0; gidx < groups; ++gidx) {
    auto idx = [&](int64_t k) { return at(gidx, k); };
    const auto [m_in, v_in] = moments(x, count, idx);
    ASSERT_GT(v_in, 1e-5) << "test data: the spread must survive float quantization";
    double worst = 0;
    for (int64_t k = 0; k < count; ++k) {
      const double want = (x[idx(k)] - m_in) / std::sqrt(v_in + 1e-5);
      ASSERT_TRUE(std::isfinite(y[idx(k)])) << what << " group " << gidx;
      worst = std::max(worst, std::abs(y[idx(k)] - want));
    }
    EXPECT_LT(worst, 1e-3) << what << " group " << gidx;
    const auto [m, v] = moments(y, count, idx);
    EXPECT_NEAR(m, 0.0, 1e-4) << what << " group " << gidx;
    EXPECT_NEAR(v, v_in / (v_in + 1e-5), 1e-3) << what << " group " << gidx;
  }
}

TEST(NormInvariants, LargeMeanInputNormalizesInFloat) {
  const int64_t N = 8, D = 256;
  const Tensor<float> x = randn<float>({N, D}, 7, 1e4, 0.01);
  LayerNorm<float> ln({D}, {.eps = 1e-5, .elementwise_affine = false});
  expect_normalizes_exactly(
      x, ln.forward(x), N, D, [&](int64_t n, int64_t k) { return n * D + k; }, "LayerNorm row");

  const int64_t C = 4, L = 3;
  const Tensor<float> xb = randn<float>({N * 8, C, L}, 8, 1e4, 0.01);
  BatchNorm1d<float> bn(C, {.affine = false});
  expect_normalizes_exactly(
      xb, bn.forward(xb), C, N * 8 * L,
      [&](int64_t c, int64_t k) { return ((k / L) * C + c) * L + k % L; }, "BatchNorm channel");
  // The running variance (unbiased) is the input's, not 0 or garbage.
  for (int64_t c = 0; c < C; ++c) {
    auto at = [&](int64_t k) { return ((k / L) * C + c) * L + k % L; };
    const auto [m_in, v_in] = moments(xb, N * 8 * L, at);
    const double M = static_cast<double>(N * 8 * L);
    EXPECT_NEAR(bn.running_var[c], 0.9 + 0.1 * v_in * M / (M - 1), 1e-6);
    EXPECT_NEAR(bn.running_mean[c], 0.1 * m_in, 1e-2);
  }
}

// The backward pass with the same inputs: the float layer against the double layer on
// identical (float-representable) values and parameters. Backward must not use the
// float-rounded saved mean as is (see exact_mean() in norm_ref.cpp): that alone gives
// 0.7 % / 2 % errors here; done right the errors are ~1e-7.
double rel_diff(const Tensor<float>& a, const Tensor<double>& b) {
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < b.numel(); ++i) scale = std::max(scale, std::abs(b[i]));
  for (int64_t i = 0; i < b.numel(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst / scale;
}

Tensor<double> to_double(const Tensor<float>& t) {
  Tensor<double> d(t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = t[i];
  return d;
}

template <template <typename> class Norm, typename Make>
void expect_float_backward_matches_double(const Shape& shape, Make make) {
  const Tensor<float> xf = randn<float>(shape, 9, 1e4, 0.01), gf = randn<float>(shape, 10);
  const Tensor<double> xd = to_double(xf), gd = to_double(gf);
  Norm<float> lf = make.template operator()<float>();
  Norm<double> ld = make.template operator()<double>();
  jitter(lf.weight, 11);
  ld.weight = to_double(lf.weight);
  lf.forward(xf);
  ld.forward(xd);
  EXPECT_LT(rel_diff(lf.backward(gf), ld.backward(gd)), 1e-5) << lf.name() << " dx";
  EXPECT_LT(rel_diff(lf.dweight, ld.dweight), 1e-5) << lf.name() << " dweight";
  EXPECT_LT(rel_diff(lf.dbias, ld.dbias), 1e-5) << lf.name() << " dbias";
}

TEST(NormInvariants, LargeMeanInputBackwardInFloat) {
  expect_float_backward_matches_double<LayerNorm>({4, 64},
                                                  []<typename T>() { return LayerNorm<T>({64}); });
  expect_float_backward_matches_double<BatchNorm1d>({16, 3, 4},
                                                    []<typename T>() { return BatchNorm1d<T>(3); });
}

// ---- Constant groups: variance 0, output exactly beta, gradients finite ----
TEST(NormInvariants, ConstantRowsGiveZerosNotNaN) {
  const int64_t N = 3, D = 8;
  Tensor<float> x({N, D}, 1e4f);
  for (int64_t d = 0; d < D; ++d) x[D + d] = -2.5f;  // row 1 another constant
  LayerNorm<float> ln({D});
  jitter(ln.bias, 12);
  const Tensor<float>& y = ln.forward(x);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], ln.bias[i % D]) << i;
  const Tensor<float> g = randn<float>({N, D}, 13);
  const Tensor<float>& dx = ln.backward(g);
  for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_TRUE(std::isfinite(dx[i])) << i;

  LayerNorm<float> plain({D}, {.elementwise_affine = false});
  const Tensor<float>& z = plain.forward(x);
  for (int64_t i = 0; i < z.numel(); ++i) EXPECT_EQ(z[i], 0.0f) << i;
}

TEST(NormInvariants, ConstantChannelsGiveZerosNotNaN) {
  Tensor<float> x({4, 2, 3});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = ((i / 3) % 2) ? 7.0f : -1e4f;  // per channel
  BatchNorm1d<float> bn(2, {.affine = false});
  const Tensor<float>& y = bn.forward(x);
  for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], 0.0f) << i;
  const Tensor<float>& dx = bn.backward(randn<float>({4, 2, 3}, 14));
  for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_TRUE(std::isfinite(dx[i])) << i;
  EXPECT_FLOAT_EQ(bn.running_var[0], 0.9f);  // unbiased variance 0
  EXPECT_FLOAT_EQ(bn.running_mean[1], 0.7f);
}

TEST(NormInvariants, NotebookNormsOnConstantInputGiveBeta) {
  Rng rng(15);
  using Over = NotebookScalarNorm<float>::Over;
  for (Over over : {Over::Tensor, Over::Rows}) {
    NotebookScalarNorm<float> n(over, rng);
    const Tensor<float> x({3, 5}, 42.0f);
    const Tensor<float>& y = n.forward(x);
    for (int64_t i = 0; i < y.numel(); ++i) EXPECT_EQ(y[i], n.beta[0]) << n.name();
    const Tensor<float>& dx = n.backward(Tensor<float>({3, 5}, 1.0f));
    for (int64_t i = 0; i < dx.numel(); ++i) EXPECT_TRUE(std::isfinite(dx[i])) << n.name();
  }
}

// ---- One value per channel ----
void expect_one_value_error(BatchNorm1d<float>& bn, const Shape& shape) {
  try {
    const Tensor<float> x(shape, 1.0f);
    bn.forward(x);
    ADD_FAILURE() << "no error for " << shape_str(shape);
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("BatchNorm1d(3"), std::string::npos) << msg;
    EXPECT_NE(msg.find(shape_str(shape)), std::string::npos) << msg;
    EXPECT_NE(msg.find("more than 1 value per channel"), std::string::npos) << msg;
  }
}

TEST(NormInvariants, BatchNormTrainingOnOneValuePerChannelThrows) {
  BatchNorm1d<float> bn(3);
  expect_one_value_error(bn, {1, 3});
  expect_one_value_error(bn, {1, 3, 1});
  EXPECT_EQ(bn.num_batches_tracked, 0);  // nothing was updated
  EXPECT_EQ(bn.running_var[0], 1.0f);
  // Eval mode uses the running statistics: one sample is fine, as in PyTorch.
  bn.set_training(false);
  const Tensor<float> one({1, 3}, 1.0f), two({1, 3, 2}, 1.0f);
  EXPECT_NO_THROW(bn.forward(one));
  // (1, C, L>1) has L values per channel: fine in training.
  bn.set_training(true);
  EXPECT_NO_THROW(bn.forward(two));
}

// Without running statistics eval mode normalizes with batch statistics too, so
// PyTorch raises the same error there ("Expected more than 1 value per channel when
// training, got input size torch.Size([1, 3])" from BatchNorm1d(3,
// track_running_stats=False).eval()).
TEST(NormInvariants, BatchNormWithoutRunningStatsNeedsTwoValuesInEvalToo) {
  BatchNorm1d<float> bn(3, {.track_running_stats = false});
  bn.set_training(false);
  expect_one_value_error(bn, {1, 3});
}

}  // namespace
}  // namespace normlab
