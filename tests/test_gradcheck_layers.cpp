// Every layer and configuration passes the gradient check (tests/gradcheck.hpp) in
// training and eval mode. Parameters are moved off their initial values first
// (gamma = 1, beta = 0 would hide a backward that confuses them).
#include <gtest/gtest.h>

#include <memory>

#include "gradcheck.hpp"
#include "normlab/layers.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

using test::randn;

// Adds scale * N(0,1) to every parameter.
void jitter_params(Layer<double>& layer, uint64_t seed, double scale = 0.5) {
  Rng rng(seed);
  for (auto& e : layer.state())
    if (e.is_param())
      for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += scale * rng.normal();
}

// A few training forwards with shifted, scaled inputs, so eval mode sees running
// statistics far from their initial (0, 1).
void warm_up(Layer<double>& layer, const Shape& shape, uint64_t seed) {
  layer.set_training(true);
  for (uint64_t s = 0; s < 3; ++s) {
    const Tensor<double> x = randn(shape, seed + 100 + s, 0.7, 2.0);
    layer.forward(x);
  }
}

// ---- Linear ----
TEST(GradCheckLinear, WithBias) {
  Rng rng(1);
  Linear<double> l(5, 4, true, rng);
  EXPECT_GRADIENTS_OK(l, Shape({3, 5}), 11);
}
TEST(GradCheckLinear, WithoutBias) {
  Rng rng(2);
  Linear<double> l(5, 4, false, rng);
  EXPECT_GRADIENTS_OK(l, Shape({3, 5}), 12);
}
TEST(GradCheckLinear, ThreeDimInputIsRows) {
  Rng rng(3);
  Linear<double> l(4, 3, true, rng);
  EXPECT_GRADIENTS_OK(l, Shape({2, 3, 4}), 13);
}

// ---- BatchNorm1d ----
struct BnCase {
  const char* label;
  Shape shape;
  BatchNormOptions opt;
};

void PrintTo(const BnCase& c, std::ostream* os) {
  *os << c.label;
}

class GradCheckBatchNorm : public ::testing::TestWithParam<BnCase> {};

TEST_P(GradCheckBatchNorm, TrainAndEval) {
  const BnCase& c = GetParam();
  BatchNorm1d<double> bn(c.shape[1], c.opt);
  jitter_params(bn, 21);
  warm_up(bn, c.shape, 22);
  EXPECT_GRADIENTS_OK(bn, c.shape, 23);
}

BatchNormOptions bn_opt(bool affine, bool track, std::optional<double> momentum = 0.1) {
  BatchNormOptions o;
  o.affine = affine;
  o.track_running_stats = track;
  o.momentum = momentum;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Configs, GradCheckBatchNorm,
    ::testing::Values(BnCase{"NC_affine", {4, 3}, bn_opt(true, true)},
                      BnCase{"NC_no_affine", {4, 3}, bn_opt(false, true)},
                      BnCase{"NCL_affine", {3, 2, 4}, bn_opt(true, true)},
                      BnCase{"NCL_no_affine", {3, 2, 4}, bn_opt(false, true)},
                      BnCase{"NCL_batch_of_one", {1, 2, 5}, bn_opt(true, true)},
                      BnCase{"NC_momentum_none", {4, 3}, bn_opt(true, true, std::nullopt)},
                      BnCase{"NC_no_tracking", {4, 3}, bn_opt(true, false)},
                      BnCase{"NCL_no_tracking_no_affine", {3, 2, 4}, bn_opt(false, false)}),
    [](const auto& info) { return std::string(info.param.label); });

// The checker restores buffers after each of its forwards: the running statistics
// the test set up are those the layer still has afterwards.
TEST(GradCheckBatchNormState, CheckLeavesRunningStatsUntouched) {
  BatchNorm1d<double> bn(3, bn_opt(true, true, std::nullopt));
  warm_up(bn, {4, 3}, 5);
  const Tensor<double> mean = bn.running_mean, var = bn.running_var;
  const int64_t count = bn.num_batches_tracked;
  ASSERT_EQ(count, 3);
  EXPECT_GRADIENTS_OK(bn, Shape({4, 3}), 6);
  EXPECT_EQ(bn.num_batches_tracked, count);
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(bn.running_mean[c], mean[c]);
    EXPECT_EQ(bn.running_var[c], var[c]);
  }
}

// ---- LayerNorm ----
struct LnCase {
  const char* label;
  Shape normalized, input;
  LayerNormOptions opt;
};

void PrintTo(const LnCase& c, std::ostream* os) {
  *os << c.label;
}

class GradCheckLayerNorm : public ::testing::TestWithParam<LnCase> {};

TEST_P(GradCheckLayerNorm, TrainAndEval) {
  const LnCase& c = GetParam();
  LayerNorm<double> ln(c.normalized, c.opt);
  jitter_params(ln, 31);
  EXPECT_GRADIENTS_OK(ln, c.input, 32);
}

LayerNormOptions ln_opt(bool affine, bool bias) {
  LayerNormOptions o;
  o.elementwise_affine = affine;
  o.bias = bias;
  return o;
}

INSTANTIATE_TEST_SUITE_P(
    Configs, GradCheckLayerNorm,
    ::testing::Values(LnCase{"one_dim", {5}, {3, 5}, ln_opt(true, true)},
                      LnCase{"one_dim_3d_input", {5}, {2, 3, 5}, ln_opt(true, true)},
                      LnCase{"two_dims", {3, 4}, {2, 3, 4}, ln_opt(true, true)},
                      LnCase{"two_dims_4d_input", {2, 3}, {2, 2, 2, 3}, ln_opt(true, true)},
                      LnCase{"no_affine", {5}, {3, 5}, ln_opt(false, true)},
                      LnCase{"two_dims_no_affine", {3, 4}, {2, 3, 4}, ln_opt(false, true)},
                      LnCase{"no_bias", {5}, {3, 5}, ln_opt(true, false)},
                      LnCase{"two_dims_no_bias", {3, 4}, {2, 3, 4}, ln_opt(true, false)}),
    [](const auto& info) { return std::string(info.param.label); });

// ---- WeightNormLinear ----
struct WnCase {
  const char* label;
  bool bias;
  WeightNormDim dim;
};

void PrintTo(const WnCase& c, std::ostream* os) {
  *os << c.label;
}

class GradCheckWeightNorm : public ::testing::TestWithParam<WnCase> {};

TEST_P(GradCheckWeightNorm, TrainAndEval) {
  const WnCase& c = GetParam();
  Rng rng(41);
  WeightNormLinear<double> l(5, 4, c.bias, c.dim, rng);
  jitter_params(l, 42, 0.2);
  EXPECT_GRADIENTS_OK(l, Shape({3, 5}), 43);
}

INSTANTIATE_TEST_SUITE_P(
    Configs, GradCheckWeightNorm,
    ::testing::Values(WnCase{"dim0_bias", true, WeightNormDim::Rows},
                      WnCase{"dim0_no_bias", false, WeightNormDim::Rows},
                      WnCase{"dim_none_bias", true, WeightNormDim::Whole},
                      WnCase{"dim_none_no_bias", false, WeightNormDim::Whole},
                      WnCase{"dim1_bias", true, WeightNormDim::Columns},
                      WnCase{"dim1_no_bias", false, WeightNormDim::Columns},
                      // PyTorch's negative dims, read as weight_norm reads them
                      WnCase{"dim_minus2_bias", true, weight_norm_dim(-2)},
                      WnCase{"dim_minus1_bias", true, weight_norm_dim(-1)}),
    [](const auto& info) { return std::string(info.param.label); });

// ---- ReLU, Flatten ----
TEST(GradCheckReLU, AwayFromKink) {
  // ReLU is not differentiable at 0: keep every input at least 0.1 away from it.
  Tensor<double> x = randn({4, 5}, 51);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] += x[i] >= 0 ? 0.1 : -0.1;
  ReLU<double> relu;
  EXPECT_GRADIENTS_OK(relu, x, 52);
}
TEST(GradCheckFlatten, ThreeAndFourDims) {
  Flatten<double> f;
  EXPECT_GRADIENTS_OK(f, Shape({3, 2, 4}), 53);
  EXPECT_GRADIENTS_OK(f, Shape({2, 2, 1, 3}), 54);
}

// ---- The seed-001 notebook's layers ----
TEST(GradCheckNotebook, WeightNormLinearWithBias) {
  Rng rng(61);
  NotebookWeightNormLinear<double> l(5, 4, true, rng);
  EXPECT_GRADIENTS_OK(l, Shape({3, 5}), 62);
}
TEST(GradCheckNotebook, WeightNormLinearWithoutBias) {
  Rng rng(63);
  NotebookWeightNormLinear<double> l(5, 4, false, rng);
  EXPECT_GRADIENTS_OK(l, Shape({3, 5}), 64);
}
TEST(GradCheckNotebook, ScalarNormOverTensor) {
  Rng rng(65);
  NotebookScalarNorm<double> n(NotebookScalarNorm<double>::Over::Tensor, rng);
  EXPECT_GRADIENTS_OK(n, Shape({4, 5}), 66);
}
TEST(GradCheckNotebook, ScalarNormOverRows) {
  Rng rng(67);
  NotebookScalarNorm<double> n(NotebookScalarNorm<double>::Over::Rows, rng);
  EXPECT_GRADIENTS_OK(n, Shape({4, 5}), 68);
}

// ---- A Sequential mixing them ----
Sequential<double> mixed_network(uint64_t seed) {
  Rng rng(seed);
  using Over = NotebookScalarNorm<double>::Over;
  Sequential<double> s;
  s.add(std::make_unique<Flatten<double>>());
  s.add(std::make_unique<Linear<double>>(6, 5, true, rng));
  s.add(std::make_unique<BatchNorm1d<double>>(5));
  s.add(std::make_unique<ReLU<double>>());
  s.add(std::make_unique<WeightNormLinear<double>>(5, 4, true, WeightNormDim::Rows, rng));
  s.add(std::make_unique<LayerNorm<double>>(Shape{4}));
  s.add(std::make_unique<NotebookWeightNormLinear<double>>(4, 4, true, rng));
  s.add(std::make_unique<NotebookScalarNorm<double>>(Over::Rows, rng));
  s.add(std::make_unique<WeightNormLinear<double>>(4, 3, false, WeightNormDim::Whole, rng));
  s.add(std::make_unique<NotebookScalarNorm<double>>(Over::Tensor, rng));
  s.add(std::make_unique<LayerNorm<double>>(Shape{3}, ln_opt(true, false)));
  s.add(std::make_unique<BatchNorm1d<double>>(3, bn_opt(false, true, std::nullopt)));
  return s;
}

TEST(GradCheckSequential, MixedLayers) {
  Sequential<double> s = mixed_network(71);
  jitter_params(s, 72, 0.2);
  warm_up(s, {5, 2, 3}, 73);
  EXPECT_GRADIENTS_OK(s, Shape({5, 2, 3}), 74);
}

// Without an input gradient, backward stops at the first layer with parameters;
// every parameter gradient must still be right.
TEST(GradCheckSequential, ParamGradsWithoutInputGrad) {
  Sequential<double> s = mixed_network(75);
  jitter_params(s, 76, 0.2);
  s.set_input_grad(false);
  const test::GradCheckReport r = test::check_gradients(s, randn({5, 2, 3}, 77), 78);
  EXPECT_TRUE(r.ok(1e-6)) << r.str();
  EXPECT_EQ(r.tensors.front().name, "1.weight");  // no "input" entry
}

}  // namespace
}  // namespace normlab
