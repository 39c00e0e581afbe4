// The norms on (N, C, H, W) (issue 11, include/normlab/norm2d.hpp):
// BatchNorm2d and InstanceNorm2d pass the gradient check in double for every
// option (train and eval), equal their 1d layers on the (N, C, H*W) view,
// refuse PyTorch's wrong ranks with an Error naming the layer and shape, take
// empty batches, and are in the model-spec language (batchnorm2d,
// instancenorm2d; the BatchNorm variants take 4-D input) with PyTorch's
// state_dict keys. A CLI run trains an unflatten -> batchnorm2d model on MNIST.
// PyTorch fixtures: test_torch_fixtures.cpp (tests/fixtures/layers/).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_train.hpp"
#include "gradcheck.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "temp_dir.hpp"

namespace normlab {
namespace {

using test::randn;

void jitter_params(Layer<double>& layer, uint64_t seed, double scale = 0.5) {
  Rng rng(seed);
  for (auto& e : layer.state())
    if (e.is_param())
      for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += scale * rng.normal();
}

void warm_up(Layer<double>& layer, const Shape& shape, uint64_t seed) {
  layer.set_training(true);
  for (uint64_t s = 0; s < 3; ++s) {
    const Tensor<double> x = randn(shape, seed + 100 + s, 0.7, 2.0);
    layer.forward(x);
  }
}

Tensor<float> randf(const Shape& shape, uint64_t seed, double mean = 0, double stddev = 1) {
  const Tensor<double> d = randn(shape, seed, mean, stddev);
  Tensor<float> f(shape);
  for (int64_t i = 0; i < d.numel(); ++i) f[i] = static_cast<float>(d[i]);
  return f;
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

class GradCheckBatchNorm2d : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheckBatchNorm2d, TrainAndEval) {
  const Case& c = GetParam();
  BatchNorm2d<double> bn(c.shape[1], {1e-5, c.momentum, c.affine, c.track});
  jitter_params(bn, 21);
  warm_up(bn, c.shape, 22);
  EXPECT_GRADIENTS_OK(bn, c.shape, 23);
}
INSTANTIATE_TEST_SUITE_P(
    Norm2d, GradCheckBatchNorm2d,
    ::testing::Values(Case{"affine", {3, 2, 2, 3}, true, true, 0.1},
                      Case{"no_affine", {3, 2, 3, 2}, false, true, 0.1},
                      Case{"momentum_none", {2, 3, 2, 2}, true, true, std::nullopt},
                      Case{"no_tracking", {3, 2, 2, 2}, true, false, 0.1},
                      Case{"no_tracking_no_affine", {2, 2, 3, 2}, false, false, 0.1},
                      Case{"batch_of_one", {1, 2, 2, 3}, true, true, 0.1},
                      Case{"one_pixel", {4, 3, 1, 1}, true, true, 0.1}),
    [](const auto& info) { return std::string(info.param.label); });

class GradCheckInstanceNorm2d : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheckInstanceNorm2d, TrainAndEval) {
  const Case& c = GetParam();
  const int64_t C = c.shape[c.shape.size() - 3];
  InstanceNorm2d<double> in(C, {1e-5, c.momentum, c.affine, c.track});
  jitter_params(in, 31);
  warm_up(in, c.shape, 32);
  EXPECT_GRADIENTS_OK(in, c.shape, 33);
}
INSTANTIATE_TEST_SUITE_P(
    Norm2d, GradCheckInstanceNorm2d,
    ::testing::Values(Case{"plain", {2, 3, 2, 3}, false, false, 0.1},
                      Case{"affine", {2, 3, 3, 2}, true, false, 0.1},
                      Case{"tracking", {3, 2, 2, 2}, false, true, 0.1},
                      Case{"affine_tracking", {2, 2, 2, 3}, true, true, 0.1},
                      Case{"tracking_momentum_none", {2, 2, 2, 2}, true, true, std::nullopt},
                      Case{"unbatched", {3, 2, 3}, false, false, 0.1},
                      Case{"unbatched_affine_tracking", {2, 3, 2}, true, true, 0.1}),
    [](const auto& info) { return std::string(info.param.label); });

// ---------------------------------------------------------------- = the 1d layers on (N, C, H*W)

template <typename L2, typename L1>
void expect_same_as_1d(L2& two, L1& one, const Shape& shape4, const Shape& shape3, bool training) {
  two.set_training(training);
  one.set_training(training);
  const Tensor<float> x4 = randf(shape4, 7, 1.5, 0.3);
  Tensor<float> x3(shape3);
  std::copy(x4.data(), x4.data() + x4.numel(), x3.data());
  const Tensor<float> g4 = randf(shape4, 8);
  Tensor<float> g3(shape3);
  std::copy(g4.data(), g4.data() + g4.numel(), g3.data());
  const Tensor<float>& y4 = two.forward(x4);
  const Tensor<float>& y3 = one.forward(x3);
  ASSERT_EQ(y4.shape(), shape4);
  for (int64_t i = 0; i < y4.numel(); ++i) ASSERT_EQ(y4[i], y3[i]) << i;
  const Tensor<float>& d4 = two.backward(g4);
  const Tensor<float>& d3 = one.backward(g3);
  for (int64_t i = 0; i < d4.numel(); ++i) ASSERT_EQ(d4[i], d3[i]) << i;
  auto s2 = two.state(), s1 = one.state();
  ASSERT_EQ(s2.size(), s1.size());
  for (size_t k = 0; k < s2.size(); ++k) {
    EXPECT_EQ(s2[k].name, s1[k].name);
    if (s2[k].count) {
      EXPECT_EQ(*s2[k].count, *s1[k].count);
    }
    if (s2[k].value) {
      for (int64_t i = 0; i < s2[k].value->numel(); ++i) {
        EXPECT_EQ((*s2[k].value)[i], (*s1[k].value)[i]) << s2[k].name;
      }
    }
    if (s2[k].grad) {
      for (int64_t i = 0; i < s2[k].grad->numel(); ++i) {
        EXPECT_EQ((*s2[k].grad)[i], (*s1[k].grad)[i]) << s2[k].name;
      }
    }
  }
}

TEST(BatchNorm2d, IsBatchNorm1dOnTheFlattenedSpatialDims) {
  for (bool training : {true, false}) {
    BatchNorm2d<float> two(5);
    BatchNorm1d<float> one(5);
    expect_same_as_1d(two, one, {4, 5, 6, 7}, {4, 5, 42}, true);
    expect_same_as_1d(two, one, {4, 5, 6, 7}, {4, 5, 42}, training);
  }
}

TEST(InstanceNorm2d, IsInstanceNorm1dOnTheFlattenedSpatialDims) {
  InstanceNormOptions o;
  o.affine = o.track_running_stats = true;
  for (bool training : {true, false}) {
    InstanceNorm2d<float> two(3, o);
    InstanceNorm1d<float> one(3, o);
    expect_same_as_1d(two, one, {2, 3, 5, 4}, {2, 3, 20}, true);
    expect_same_as_1d(two, one, {2, 3, 5, 4}, {2, 3, 20}, training);
    InstanceNorm2d<float> two_u(3, o);
    InstanceNorm1d<float> one_u(3, o);
    expect_same_as_1d(two_u, one_u, {3, 5, 4}, {3, 20}, training);
  }
}

// ---------------------------------------------------------------- names, errors, edges

TEST(BatchNorm2d, NamesAndStateKeysArePyTorchs) {
  BatchNorm2d<float> bn(4);
  EXPECT_EQ(bn.name(), "BatchNorm2d(4)");
  std::vector<std::string> keys;
  for (auto& e : bn.state()) keys.push_back(e.name);
  EXPECT_EQ(keys, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var",
                                            "num_batches_tracked"}));
  EXPECT_EQ(BatchNorm2d<float>(4, {1e-3, std::nullopt, false, true}).name(),
            "BatchNorm2d(4, affine=false, momentum=none, eps=0.001)");
  InstanceNormOptions o;
  o.affine = true;
  EXPECT_EQ(InstanceNorm2d<float>(3, o).name(), "InstanceNorm2d(3, affine=true)");
  EXPECT_TRUE(InstanceNorm2d<float>(3).state().empty());
}

TEST(BatchNorm2d, RefusesOtherRanksAsPyTorchDoes) {
  BatchNorm2d<float> bn(3);
  for (const Shape& s : {Shape{4, 3}, Shape{4, 3, 5}, Shape{2, 3, 4, 5, 6}}) {
    const std::string e = error_of([&] { bn.output_shape(s); });
    EXPECT_NE(e.find("BatchNorm2d(3): expected a 4D (N,C,H,W) input, got " +
                     std::to_string(s.size()) + "D input of shape " + shape_str(s)),
              std::string::npos)
        << e;
  }
  const Tensor<float> x = randf({2, 4, 3, 3}, 1);
  EXPECT_NE(error_of([&] { bn.forward(x); }).find("expected 3 channels"), std::string::npos);
  const Tensor<float> one = randf({1, 3, 1, 1}, 2);
  EXPECT_NE(error_of([&] { bn.forward(one); }).find("more than 1 value per channel"),
            std::string::npos);
  EXPECT_NE(error_of([] { BatchNorm2d<float>(0); }).find("BatchNorm2d"), std::string::npos);
  EXPECT_NE(error_of([] { BatchNorm2d<float>(2, {-1.0}); }).find("BatchNorm2d(2): eps"),
            std::string::npos);
}

TEST(InstanceNorm2d, RefusesOtherRanksAndSinglePixels) {
  InstanceNorm2d<float> in(3);
  for (const Shape& s : {Shape{4, 3}, Shape{2, 3, 4, 5, 6}}) {
    const std::string e = error_of([&] { in.output_shape(s); });
    EXPECT_NE(e.find("InstanceNorm2d(3): expected a 3D (C, H, W) or 4D (N, C, H, W) input, got " +
                     std::to_string(s.size()) + "D"),
              std::string::npos)
        << e;
  }
  const Tensor<float> x = randf({2, 3, 1, 1}, 1);
  EXPECT_NE(error_of([&] { in.forward(x); }).find("more than 1 spatial element"),
            std::string::npos);
  InstanceNormOptions o;
  o.affine = true;
  InstanceNorm2d<float> aff(3, o);
  const Tensor<float> four = randf({2, 4, 2, 2}, 3);
  EXPECT_NE(error_of([&] { aff.forward(four); }).find("expected 3 channels (dim 1), got 4"),
            std::string::npos);
}

TEST(BatchNorm2d, EmptyBatchGivesEmptyOutputAndCountsTheBatch) {
  BatchNorm2d<float> bn(3);
  const Tensor<float> x({0, 3, 4, 4});
  EXPECT_EQ(bn.forward(x).shape(), Shape({0, 3, 4, 4}));
  EXPECT_EQ(bn.num_batches_tracked, 1);
  EXPECT_EQ(bn.running_mean[0], 0.0f);
  const Tensor<float> g({0, 3, 4, 4});
  EXPECT_EQ(bn.backward(g).shape(), Shape({0, 3, 4, 4}));
  InstanceNorm2d<float> in(3);
  EXPECT_EQ(in.forward(x).shape(), Shape({0, 3, 4, 4}));
  EXPECT_EQ(in.backward(g).shape(), Shape({0, 3, 4, 4}));
}

TEST(BatchNorm2d, NanInOneChannelStaysInThatChannel) {
  BatchNorm2d<float> bn(2);
  Tensor<float> x = randf({2, 2, 3, 3}, 4);
  x[0] = std::numeric_limits<float>::quiet_NaN();  // channel 0
  const Tensor<float>& y = bn.forward(x);
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t i = 0; i < 9; ++i) {
      EXPECT_TRUE(std::isnan(y[(n * 2 + 0) * 9 + i]));
      EXPECT_FALSE(std::isnan(y[(n * 2 + 1) * 9 + i]));
    }
}

// ---------------------------------------------------------------- the model spec

std::string plan_error(const std::string& spec, Shape input) {
  try {
    plan_model(spec, input);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> keys(Sequential<float>& m) {
  std::vector<std::string> out;
  for (const auto& e : m.state()) out.push_back(e.name);
  return out;
}

TEST(Norm2dSpec, PlansBuildsAndNamesThe2dLayers) {
  const auto p = plan_model(
      "unflatten(4, 14, 14), batchnorm2d(4, momentum=none), instancenorm2d(4, affine=true), "
      "bn2d(eps=0.001, affine=false), in2d(track_running_stats=true), flatten, linear(10)",
      {2, 784});
  ASSERT_EQ(p.size(), 7u);
  EXPECT_EQ(p[1].kind, LayerKind::BatchNorm2d);
  EXPECT_EQ(p[1].in, 4);
  EXPECT_FALSE(p[1].bn.momentum.has_value());
  EXPECT_EQ(p[2].kind, LayerKind::InstanceNorm2d);
  EXPECT_TRUE(p[2].inorm.affine);
  EXPECT_FALSE(p[2].inorm.track_running_stats);
  EXPECT_EQ(p[3].kind, LayerKind::BatchNorm2d);
  EXPECT_FALSE(p[3].bn.affine);
  EXPECT_EQ(p[4].kind, LayerKind::InstanceNorm2d);
  EXPECT_FALSE(p[4].inorm.affine);
  EXPECT_TRUE(p[4].inorm.track_running_stats);
  Rng rng(1);
  auto m = build_model<float>(p, rng);
  EXPECT_EQ(keys(*m),
            (std::vector<std::string>{
                "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
                "2.weight", "2.bias", "3.running_mean", "3.running_var", "3.num_batches_tracked",
                "4.running_mean", "4.running_var", "4.num_batches_tracked", "6.weight", "6.bias"}));
  const Tensor<float> x = randf({2, 784}, 3);
  EXPECT_EQ(m->forward(x).shape(), Shape({2, 10}));
}

TEST(Norm2dSpec, BatchNormVariantsAndGroupAndLayerNormTake4d) {
  const auto p = plan_model(
      "unflatten(4, 7, 28), meanonlybn, batchrenorm(4), ghostbatchnorm(virtual_batch_size=2), "
      "gn(2), layernorm(dims=3), layernorm(shape=4x7x28), flatten",
      {4, 784});
  EXPECT_EQ(p[1].kind, LayerKind::MeanOnlyBatchNorm);
  EXPECT_EQ(p[5].norm_shape, Shape({4, 7, 28}));
  EXPECT_EQ(p[6].norm_shape, Shape({4, 7, 28}));
  Rng rng(2);
  auto m = build_model<float>(p, rng);
  const Tensor<float> x = randf({4, 784}, 3);
  EXPECT_EQ(m->forward(x).shape(), Shape({4, 784}));
}

TEST(Norm2dSpec, WrongRanksNameTheItemAndShape) {
  std::string e = plan_error("batchnorm2d", {2, 784});
  EXPECT_NE(e.find("batchnorm2d needs a 4-D (N, C, H, W) input"), std::string::npos) << e;
  EXPECT_NE(e.find("(2, 784)"), std::string::npos) << e;
  e = plan_error("unflatten(4, 196), instancenorm2d", {2, 784});
  EXPECT_NE(e.find("instancenorm2d needs a 4-D"), std::string::npos) << e;
  e = plan_error("unflatten(784, 1, 1), instancenorm2d", {2, 784});
  EXPECT_NE(e.find("H*W > 1"), std::string::npos) << e;
  e = plan_error("unflatten(4, 14, 14), batchnorm2d(3)", {2, 784});
  EXPECT_NE(e.find("expects 3 channels"), std::string::npos) << e;
  e = plan_error("unflatten(4, 14, 14), batchnorm", {2, 784});
  EXPECT_NE(e.find("batchnorm2d takes (N, C, H, W)"), std::string::npos) << e;
  e = plan_error("unflatten(4, 14, 14), bn2d(foo=1)", {2, 784});
  EXPECT_NE(e.find("unknown option 'foo' for batchnorm2d"), std::string::npos) << e;
}

// ---------------------------------------------------------------- MNIST through the CLI

class Norm2dTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    data_ = testing::mnist_dir(&why);
    if (data_.empty()) GTEST_SKIP() << why;
  }

  double train(const std::string& spec) {
    return testing::train_and_eval(dir_, "run" + std::to_string(runs_++), data_, spec,
                                   {"--threads", "2"})
        .test_accuracy();
  }

  std::string data_;
  testing::TempDir dir_;
  int runs_ = 0;
};

TEST_F(Norm2dTraining, BatchNorm2dModelLearnsMnist) {
  EXPECT_GT(train("unflatten(1, 28, 28), batchnorm2d(1), flatten, linear(128), relu, "
                  "unflatten(8, 4, 4), batchnorm2d(8), flatten, linear(10)"),
            0.75);
}

TEST_F(Norm2dTraining, InstanceNorm2dModelLearnsMnist) {
  EXPECT_GT(train("unflatten(4, 14, 14), instancenorm2d(4, affine=true, track_running_stats=true), "
                  "flatten, linear(128), relu, linear(10)"),
            0.75);
}

}  // namespace
}  // namespace normlab
