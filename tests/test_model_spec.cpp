// The model-spec language: good specs, presets with PyTorch's state_dict keys,
// and every kind of error naming the item, its column and what was expected.
#include <gtest/gtest.h>

#include <cmath>

#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"

using namespace normlab;

namespace {

std::vector<std::string> keys(Sequential<float>& m) {
  std::vector<std::string> out;
  for (const auto& e : m.state()) out.push_back(e.name);
  return out;
}

std::vector<LayerKind> kinds(const std::vector<LayerPlan>& plan) {
  std::vector<LayerKind> out;
  for (const auto& p : plan) out.push_back(p.kind);
  return out;
}

// The Error message of planning `spec`, or "" if it plans fine.
std::string plan_error(const std::string& spec, Shape input = {2, 784}) {
  try {
    plan_model(spec, input);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(spec, ...)                                                            \
  do {                                                                                     \
    const std::string msg = plan_error(spec);                                              \
    ASSERT_FALSE(msg.empty()) << "no error for: " << (spec);                               \
    for (const char* part : {__VA_ARGS__})                                                 \
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in:\n" << msg; \
  } while (0)

}  // namespace

TEST(ModelSpec, InfersSizesFromTheInput) {
  const auto plan = plan_model(
      "flatten, wnlinear(512), relu, layernorm, wnlinear(512), relu, batchnorm, wnlinear(256), "
      "relu, layernorm, wnlinear(10)",
      {7, 28, 28});
  ASSERT_EQ(plan.size(), 11u);
  EXPECT_EQ(plan[0].out_shape, (Shape{7, 784}));
  EXPECT_EQ(plan[1].in, 784);
  EXPECT_EQ(plan[1].out, 512);
  EXPECT_EQ(plan[3].in, 512);  // layernorm over the last dim
  EXPECT_EQ(plan[6].in, 512);  // batchnorm channels
  EXPECT_EQ(plan[7].out, 256);
  EXPECT_EQ(plan[10].in_shape, (Shape{7, 256}));
  EXPECT_EQ(plan[10].out_shape, (Shape{7, 10}));
  EXPECT_EQ(plan[4].path, (std::vector<std::string>{"4"}));
  EXPECT_EQ(plan[4].column, 42u);  // "wnlinear(512)" after "layernorm, "
}

TEST(ModelSpec, ReadsOptionsAliasesAndExplicitSizes) {
  const auto plan = plan_model(
      " Linear(784, 20, bias=False) , bn(20, affine=false, momentum=none, eps=1e-3, "
      "track_running_stats=false), LN(elementwise_affine=false), ln(bias=false, eps=0.01), "
      "wnlinear(5, dim=none, bias=false), nb_wnlinear(3, bias=false), relu()",
      {4, 784});
  ASSERT_EQ(plan.size(), 7u);
  EXPECT_EQ(plan[0].kind, LayerKind::Linear);
  EXPECT_FALSE(plan[0].bias);
  EXPECT_EQ(plan[0].source, "Linear(784, 20, bias=False)");
  EXPECT_EQ(plan[1].kind, LayerKind::BatchNorm);
  EXPECT_FALSE(plan[1].bn.affine);
  EXPECT_FALSE(plan[1].bn.momentum.has_value());
  EXPECT_DOUBLE_EQ(plan[1].bn.eps, 1e-3);
  EXPECT_FALSE(plan[1].bn.track_running_stats);
  EXPECT_FALSE(plan[2].ln.elementwise_affine);
  EXPECT_TRUE(plan[3].ln.elementwise_affine);
  EXPECT_FALSE(plan[3].ln.bias);
  EXPECT_DOUBLE_EQ(plan[3].ln.eps, 0.01);
  EXPECT_EQ(plan[4].wn_dim, WeightNormDim::Whole);
  EXPECT_FALSE(plan[4].bias);
  EXPECT_EQ(plan[5].kind, LayerKind::NotebookWeightNormLinear);
  EXPECT_EQ(plan[5].in, 5);
  EXPECT_EQ(plan[6].kind, LayerKind::ReLU);
}

// PyTorch's nn.BatchNorm1d and nn.LayerNorm take these (torch 2.15); the layers
// then behave as PyTorch's (tests/test_eps_momentum.cpp).
TEST(ModelSpec, TakesTheEpsAndMomentumPyTorchTakes) {
  const auto plan =
      plan_model("bn(momentum=2, eps=0), ln(eps=0), bn(momentum=-0.5, eps=1e3)", {4, 8});
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_DOUBLE_EQ(*plan[0].bn.momentum, 2.0);
  EXPECT_EQ(plan[0].bn.eps, 0.0);
  EXPECT_EQ(plan[1].ln.eps, 0.0);
  EXPECT_DOUBLE_EQ(*plan[2].bn.momentum, -0.5);
  EXPECT_DOUBLE_EQ(plan[2].bn.eps, 1e3);
  Rng rng(1);
  EXPECT_NO_THROW(build_model<float>(plan, rng));
}

// weight_norm's dim as PyTorch reads it for a Linear weight: 0 and -2 per
// output row, 1 per input column, none and -1 the whole matrix (PyTorch 2.15's
// weight_norm gives weight_g shape () for dim=-1).
TEST(ModelSpec, WeightNormDims) {
  const auto plan = plan_model(
      "wnlinear(5), wnlinear(5, dim=0), wnlinear(5, dim=-2), wnlinear(5, dim=1), "
      "wnlinear(5, dim=None), wnlinear(5, dim=-1)",
      {2, 5});
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[0].wn_dim, WeightNormDim::Rows);
  EXPECT_EQ(plan[1].wn_dim, WeightNormDim::Rows);
  EXPECT_EQ(plan[2].wn_dim, WeightNormDim::Rows);
  EXPECT_EQ(plan[3].wn_dim, WeightNormDim::Columns);
  EXPECT_EQ(plan[4].wn_dim, WeightNormDim::Whole);
  EXPECT_EQ(plan[5].wn_dim, WeightNormDim::Whole);
  EXPECT_EQ(weight_norm_dim(1), WeightNormDim::Columns);
  EXPECT_EQ(weight_norm_dim(-1), WeightNormDim::Whole);
  EXPECT_EQ(weight_norm_dim(std::nullopt), WeightNormDim::Whole);
  EXPECT_THROW(weight_norm_dim(2), Error);
  EXPECT_THROW(weight_norm_dim(-3), Error);
}

TEST(ModelSpec, BatchNormOnThreeDimensionalInputs) {
  const auto plan = plan_model("linear(6), bn(3)", {2, 3, 5});
  EXPECT_EQ(plan[0].out_shape, (Shape{2, 3, 6}));
  EXPECT_EQ(plan[1].in, 3);  // channels are dim 1, as BatchNorm1d's
  Rng rng(1);
  auto m = build_model<float>("linear(6), bn(3)", {2, 3, 5}, rng);
  Tensor<float> x({2, 3, 5}, 0.5f);
  EXPECT_EQ(m->forward(x).shape(), (Shape{2, 3, 6}));
}

TEST(ModelSpec, GroupsAndNamedChildrenGiveTheStateNames) {
  Rng rng(3);
  auto m = build_model<float>(
      "net: [flatten, linear(8), inner: [bn, relu]], 2: linear(4, bias=false), head: ln", {2, 2, 3},
      rng);
  EXPECT_EQ(keys(*m),
            (std::vector<std::string>{"net.1.weight", "net.1.bias", "net.inner.0.weight",
                                      "net.inner.0.bias", "net.inner.0.running_mean",
                                      "net.inner.0.running_var", "net.inner.0.num_batches_tracked",
                                      "2.weight", "head.weight", "head.bias"}));
  Tensor<float> x({2, 2, 3}, 1.0f);
  x[0] = -1.0f;
  EXPECT_EQ(m->forward(x).shape(), (Shape{2, 4}));
}

TEST(ModelSpec, Seed001HasPyTorchsKeys) {
  // keys of nn.Sequential(weight_norm(nn.Linear(784, 512)), nn.ReLU(), nn.LayerNorm(512), ...)
  // as printed by PyTorch 1.13 (tests/torch/check_spec_keys.py compares the full list).
  Rng rng(0);
  auto m = build_model<float>("seed001", {2, 784}, rng);
  const std::vector<std::string> expected = {"0.bias",
                                             "0.weight_g",
                                             "0.weight_v",
                                             "2.weight",
                                             "2.bias",
                                             "3.bias",
                                             "3.weight_g",
                                             "3.weight_v",
                                             "5.weight",
                                             "5.bias",
                                             "5.running_mean",
                                             "5.running_var",
                                             "5.num_batches_tracked",
                                             "6.bias",
                                             "6.weight_g",
                                             "6.weight_v",
                                             "8.weight",
                                             "8.bias",
                                             "9.bias",
                                             "9.weight_g",
                                             "9.weight_v"};
  EXPECT_EQ(keys(*m), expected);
  auto state = m->state();
  EXPECT_EQ(state[1].value->shape(), (Shape{512, 1}));
  EXPECT_EQ(state[2].value->shape(), (Shape{512, 784}));
  EXPECT_EQ(state[20].value->shape(), (Shape{10, 256}));
  Tensor<float> x({3, 784}, 0.1f);
  x[5] = 2.0f;
  EXPECT_EQ(m->forward(x).shape(), (Shape{3, 10}));
}

TEST(ModelSpec, Seed001NotebookHasTheNotebooksKeys) {
  Rng rng(0);
  auto m = build_model<float>("seed001-notebook", {2, 784}, rng);
  EXPECT_EQ(keys(*m), (std::vector<std::string>{
                          "p1.g", "p1.weight", "p1.bias", "ln1.beta", "ln1.gamma", "p2.g",
                          "p2.weight", "p2.bias", "bn2.beta", "bn2.gamma", "p3.g", "p3.weight",
                          "p3.bias", "ln3.beta", "ln3.gamma", "p4.g", "p4.weight", "p4.bias"}));
}

TEST(ModelSpec, Seed000PresetsFollowTheNotebook) {
  using K = LayerKind;
  const std::vector<std::pair<std::string, std::vector<K>>> cases = {
      {"none", {K::Flatten, K::Linear, K::ReLU, K::Linear, K::ReLU, K::Linear}},
      {"bn-pre",
       {K::Flatten, K::BatchNorm, K::Linear, K::ReLU, K::BatchNorm, K::Linear, K::ReLU, K::Linear}},
      {"bn-post",
       {K::Flatten, K::Linear, K::BatchNorm, K::ReLU, K::Linear, K::BatchNorm, K::ReLU, K::Linear}},
      {"ln-pre",
       {K::Flatten, K::LayerNorm, K::Linear, K::ReLU, K::LayerNorm, K::Linear, K::ReLU, K::Linear}},
      {"ln-post",
       {K::Flatten, K::Linear, K::LayerNorm, K::ReLU, K::Linear, K::LayerNorm, K::ReLU, K::Linear}},
  };
  for (const auto& [name, expected] : cases) {
    const auto plan = plan_model(name + ":depth=2,width=64,out=100", {5, 28, 28});
    EXPECT_EQ(kinds(plan), expected) << name;
    EXPECT_EQ(plan.front().child_path(), "network.0") << name;
    EXPECT_EQ(plan.back().out, 100) << name;
    EXPECT_FALSE(plan.back().bias) << name;  // final Linear(..., out, bias=False)
    for (const auto& p : plan) {
      if (p.kind == K::BatchNorm) {
        EXPECT_EQ(p.bn.affine, name == "bn-post") << name;
      }
      if (p.kind == K::LayerNorm) {
        EXPECT_TRUE(p.ln.elementwise_affine);
        EXPECT_EQ(p.ln.bias, name == "ln-post") << name;
      }
      if (p.kind == K::Linear && &p != &plan.back()) {
        EXPECT_EQ(p.bias, name == "bn-pre" || name == "ln-pre") << name;
      }
    }
  }
  Rng rng(0);
  auto m = build_model<float>("bn-pre:depth=1,width=16", {2, 28, 28}, rng);
  EXPECT_EQ(keys(*m), (std::vector<std::string>{"network.1.running_mean", "network.1.running_var",
                                                "network.1.num_batches_tracked", "network.2.weight",
                                                "network.2.bias", "network.4.weight"}));
  EXPECT_EQ(plan_model("ln-post:depth=0", {2, 784}).size(), 2u);
  EXPECT_EQ(plan_model("none", {2, 784}).back().out, 10);  // defaults depth=3, width=512, out=10
}

TEST(ModelSpec, PresetHelpersAgree) {
  EXPECT_EQ(preset_names().size(), 8u);
  EXPECT_TRUE(is_preset("bn-pre:depth=3"));
  EXPECT_FALSE(is_preset("linear(10)"));
  EXPECT_EQ(resolve_spec("linear(10)"), "linear(10)");
  EXPECT_EQ(preset_spec("none:depth=1,width=7,out=3"),
            "network: [flatten, linear(7, bias=false), relu, linear(3, bias=false)]");
  EXPECT_NE(preset_help().find("seed001-notebook"), std::string::npos);
}

TEST(ModelSpec, BuildsWithPyTorchsInitialisation) {
  Rng a(42), b(42);
  auto m1 = build_model<float>("linear(300), relu, linear(5)", {2, 100}, a);
  auto m2 = build_model<float>("linear(300), relu, linear(5)", {2, 100}, b);
  auto s1 = m1->state(), s2 = m2->state();
  ASSERT_EQ(s1.size(), 4u);
  const Tensor<float>& w = *s1[0].value;
  float lo = 1, hi = -1;
  double sum = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
    sum += w[i];
    ASSERT_EQ(w[i], (*s2[0].value)[i]);  // same stream, same weights
  }
  EXPECT_GE(lo, -0.1f);  // U(+-1/sqrt(100))
  EXPECT_LE(hi, 0.1f);
  EXPECT_LT(lo, -0.099f);
  EXPECT_GT(hi, 0.099f);
  EXPECT_NEAR(sum / w.numel(), 0.0, 0.003);
}

TEST(ModelSpecErrors, SyntaxNamesTheColumnAndWhatWasExpected) {
  EXPECT_ERROR("flatten, lineer(5)", "column 10", "unknown layer 'lineer'",
               "known layers:", "wnlinear", "nb_layernorm");
  EXPECT_ERROR("", "column 1", "the spec is empty");
  EXPECT_ERROR("linear(5),", "column 11", "expected a layer after ','");
  EXPECT_ERROR("linear(5", "column 9", "',' or ')'", "the end of the spec");
  EXPECT_ERROR("linear(5) relu", "column 11", "expected ',' or the end of the spec", "'relu'");
  EXPECT_ERROR("linear(5); relu", "column 10", "unexpected character ';'");
  EXPECT_ERROR("[]", "column 2", "a layer inside '[ ]'");
  EXPECT_ERROR("[relu", "',' or ']'");
  EXPECT_ERROR("1.5: relu", "child name '1.5'");
  EXPECT_ERROR("a: relu, a: relu", "column 10", "child name 'a' is used twice", "column 1");
  EXPECT_ERROR("relu, 0: relu", "child name '0' is used twice");
  // The caret line points at the column.
  const std::string msg = plan_error("relu, bogus");
  EXPECT_NE(msg.find("\n    relu, bogus\n          ^"), std::string::npos) << msg;
}

TEST(ModelSpecErrors, OptionsAndSizes) {
  EXPECT_ERROR("linear", "linear needs its output size", "usage: linear([IN,] OUT");
  EXPECT_ERROR("wnlinear(0)", "column 10", "size must be positive, got 0");
  EXPECT_ERROR("linear(-3)", "size must be positive, got -3");
  EXPECT_ERROR("linear(2000000)", "2000000 is absurdly large", "1048576");
  EXPECT_ERROR("linear(99999999999999999999)", "absurdly large");
  EXPECT_ERROR("linear(512.5)", "size '512.5' is not a whole number");
  EXPECT_ERROR("linear(1, 2, 3)", "too many sizes for linear");
  EXPECT_ERROR("relu(3)", "relu takes no sizes");
  EXPECT_ERROR("linear(bias=false, 5)", "a size cannot follow key=value options");
  EXPECT_ERROR("linear(5, bais=false)", "unknown option 'bais' for linear",
               "expected one of: bias");
  EXPECT_ERROR("flatten(x=1)", "unknown option 'x' for flatten", "takes no options");
  EXPECT_ERROR("linear(5, bias=false, bias=true)", "option 'bias' is given twice");
  EXPECT_ERROR("linear(5, bias=maybe)", "bias must be true or false, got 'maybe'");
  EXPECT_ERROR("wnlinear(5, dim=2)", "dim must be 0 or -2", "1 (one per input column)",
               "or none or -1");
  EXPECT_ERROR("bn(momentum=abc)", "momentum must be none or a finite number, got 'abc'");
  EXPECT_ERROR("bn(momentum=1e999)", "momentum must be none or a finite number, got '1e999'");
  EXPECT_ERROR("bn(eps=-1e-5)", "eps must be a finite number >= 0, got '-1e-5'");
  EXPECT_ERROR("ln(eps=abc)", "eps must be a finite number >= 0");
  EXPECT_ERROR("linear(5, bias=)", "expected a value for bias");
}

TEST(ModelSpecErrors, ShapesThatDoNotChainNameBothLayers) {
  EXPECT_ERROR("linear(784, 512), relu, linear(256, 10)", "column 25",
               "linear(256, 10) expects 256 input features", "shape (2, 512)",
               "from linear(784, 512) at column 1");
  EXPECT_ERROR("linear(100, 10)", "expects 100 input features", "(2, 784)",
               "from the model's input");
  EXPECT_ERROR("linear(10), layernorm(12)", "layernorm(12) normalizes over 12 features",
               "from linear(10) at column 1");
  EXPECT_ERROR("linear(10), bn(11)", "bn(11) expects 11 channels", "(2, 10)");
  EXPECT_NE(plan_error("nb_layernorm", {2, 28, 28}).find("needs a 2-D (N, D) input (put flatten"),
            std::string::npos);
  EXPECT_ERROR("linear(1000), linear(300000)", "column 15", "linear(300000) after 1000 features",
               "would hold 300000000 weights", "268435456");
  // Four 2^28-weight layers reach the model's limit of 2^30; a fifth passes it.
  const std::string big = "linear(16384), linear(16384), linear(16384), linear(16384)";
  EXPECT_EQ(plan_error(big, {2, 16384}), "");
  EXPECT_NE(plan_error(big + ", linear(16384)", {2, 16384})
                .find("brings the model to 1342177280 weights, more than the limit 1073741824"),
            std::string::npos);
  // Flattening huge dimensions is refused without overflowing.
  const int64_t M = int64_t(1) << 20;
  EXPECT_NE(plan_error("flatten", {2, M, M, M, M}).find("flatten would give"), std::string::npos);
  EXPECT_NE(plan_error("bn", {2, 3, 4, 5}).find("needs a 2-D (N, C) or 3-D (N, C, L) input"),
            std::string::npos);
}

TEST(ModelSpecErrors, PresetsAndInputShapes) {
  EXPECT_ERROR("bn-pre:depth=-1",
               "preset bn-pre: depth must be a whole number in 0..1000, got '-1'");
  EXPECT_ERROR("bn-pre:depth=5000", "0..1000", "'5000'");
  EXPECT_ERROR("ln-post:width=0", "width must be a whole number in 1..1048576");
  EXPECT_ERROR("none:layers=3", "expected key=value with a key among depth=3,width=512,out=10",
               "'layers=3'");
  EXPECT_ERROR("seed001:depth=3", "preset seed001 takes no parameters");
  EXPECT_THROW(preset_spec("resnet50"), Error);
  EXPECT_NE(plan_error("seed001", {2, 28, 28}).find("expects 784 input features"),
            std::string::npos);
  EXPECT_NE(plan_error("relu", {5}).find("must have a batch dimension"), std::string::npos);
  EXPECT_NE(plan_error("relu", {5, 0}).find("dimensions in 1.."), std::string::npos);
}
