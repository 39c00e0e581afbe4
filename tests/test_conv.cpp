// Conv2d and the 2-D pools (issue 11): gradient checks in double for every
// option, the oneDNN float path against the double reference twin (forward,
// dx, accumulated parameter gradients; several strides, paddings, dilations,
// groups, batch sizes reusing the primitive cache), PyTorch's errors and
// empty batches, and the model spec / cnn preset. PyTorch's own numbers:
// tests/fixtures/layers/conv2d_*, maxpool2d_*, avgpool2d_*, adaptiveavgpool2d_*
// (test_torch_fixtures.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "gradcheck.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/rng.hpp"

namespace normlab {
namespace {

struct ConvCase {
  int64_t N, C, H, W, O;
  Pair k;
  Conv2dOptions o;
};

const ConvCase kConvCases[] = {
    {2, 2, 6, 5, 3, 3, {}},
    {2, 3, 7, 6, 4, 3, {2, 1, 1, 1, true}},
    {2, 2, 6, 7, 3, 3, {1, 2, 2, 1, false}},
    {2, 4, 5, 5, 6, 3, {1, 1, 1, 2, true}},
    {2, 3, 5, 7, 3, {2, 3}, {{1, 2}, {1, 0}, 1, 3, true}},
    {1, 2, 4, 4, 2, 1, {3, 0, 1, 1, false}},
    {3, 4, 6, 6, 4, {3, 2}, {{2, 1}, {0, 1}, {1, 2}, 2, true}},
};

TEST(Conv2dGradcheck, EveryOption) {
  int seed = 100;
  for (const auto& c : kConvCases) {
    Rng rng(seed);
    Conv2d<double> l(c.C, c.O, c.k, c.o, rng);
    SCOPED_TRACE(l.name());
    EXPECT_GRADIENTS_OK(l, Shape({c.N, c.C, c.H, c.W}), seed++);
  }
}

TEST(Pool2dGradcheck, EveryOption) {
  // Max pooling is piecewise linear: inputs from N(0,1) are distinct with
  // probability 1, and steps of 1e-5 do not cross a tie.
  {
    MaxPool2d<double> l(2);
    EXPECT_GRADIENTS_OK(l, Shape({2, 3, 6, 5}), 1);
  }
  {
    MaxPool2d<double> l(3, {2, 1, 1, true});
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 7, 6}), 2);
  }
  {
    MaxPool2d<double> l({2, 3}, {1, 0, 2, true});
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 6, 7}), 3);
  }
  {
    AvgPool2d<double> l(2);
    EXPECT_GRADIENTS_OK(l, Shape({2, 3, 6, 5}), 4);
  }
  {
    AvgPool2d<double> l(3, {2, 1, 1, true});
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 7, 6}), 5);
  }
  {
    AvgPool2d<double> l({3, 2}, {{2, 1}, {1, 1}, 1, false});
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 7, 6}), 6);
  }
  {
    AdaptiveAvgPool2d<double> l(1);
    EXPECT_GRADIENTS_OK(l, Shape({2, 3, 5, 4}), 7);
  }
  {
    AdaptiveAvgPool2d<double> l({3, 2});
    EXPECT_GRADIENTS_OK(l, Shape({2, 2, 7, 5}), 8);
  }
}

Tensor<double> randn(const Shape& s, uint64_t seed) {
  Tensor<double> t(s);
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<float>(rng.normal());
  return t;
}

double max_rel(const Tensor<float>& a, const Tensor<double>& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double diff = 0, scale = 1e-30;
  for (int64_t i = 0; i < b.numel(); ++i) {
    scale = std::max(scale, std::abs(b[i]));
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return diff / scale;
}

// The oneDNN float path equals the double reference to float rounding, for
// every case and for batch sizes that come and go (the primitive cache).
TEST(Conv2dOneDnn, MatchesReferenceTwin) {
  int seed = 7;
  for (const auto& c : kConvCases) {
    for (int64_t N : {c.N, int64_t(5), c.N, int64_t(1)}) {
      Rng r1(seed), r2(seed);
      Conv2d<float> f(c.C, c.O, c.k, c.o, r1);
      Conv2d<double> d(c.C, c.O, c.k, c.o, r2);
      SCOPED_TRACE(f.name() + " N=" + std::to_string(N));
      const Tensor<double> xd = randn({N, c.C, c.H, c.W}, seed + 1);
      const Tensor<float> xf = tensor_cast<float>(xd);
      const Tensor<float>& yf = f.forward(xf);
      const Tensor<double>& yd = d.forward(xd);
      EXPECT_LT(max_rel(yf, yd), 1e-5);
      const Tensor<double> gd = randn(yd.shape(), seed + 2);
      const Tensor<float> gf = tensor_cast<float>(gd);
      for (int rep = 0; rep < 2; ++rep) {  // parameter gradients accumulate
        const Tensor<float>& dxf = f.backward(gf);
        const Tensor<double>& dxd = d.backward(gd);
        EXPECT_LT(max_rel(dxf, dxd), 1e-5);
      }
      EXPECT_LT(max_rel(f.dweight, d.dweight), 1e-5);
      if (c.o.bias) {
        EXPECT_LT(max_rel(f.dbias, d.dbias), 1e-5);
      }
      f.set_input_grad(false);
      f.zero_grad();
      d.zero_grad();
      EXPECT_EQ(f.backward(gf).numel(), 0);
      d.backward(gd);
      EXPECT_LT(max_rel(f.dweight, d.dweight), 1e-5);
      ++seed;
    }
  }
}

TEST(Conv2dOneDnn, NanPropagates) {
  Rng rng(1);
  Conv2d<float> l(1, 2, 3, {}, rng);
  Tensor<float> x({1, 1, 5, 5}, 1.0f);
  x[12] = std::numeric_limits<float>::quiet_NaN();
  const Tensor<float>& y = l.forward(x);
  int nans = 0;
  for (int64_t i = 0; i < y.numel(); ++i) nans += std::isnan(y[i]);
  EXPECT_EQ(nans, 2 * 9);  // every output whose window holds the centre
}

// AvgPool2d and AdaptiveAvgPool2d in float run oneDNN's pooling (adaptive:
// where its windows tile the input) and equal the double loops to float
// rounding, forward and dx, with and without count_include_pad, over batch
// sizes that come and go (the primitive cache); adaptive sizes that do not
// tile the input take the loops.
template <template <typename> class L, typename... A>
void expect_pool_matches_twin(const Shape& in, uint64_t seed, A... args) {
  L<float> f(args...);
  L<double> d(args...);
  for (int64_t N : {in[0], int64_t(3), in[0]}) {
    const Shape s{N, in[1], in[2], in[3]};
    SCOPED_TRACE(f.name() + " on " + shape_str(s));
    const Tensor<double> xd = randn(s, seed);
    const Tensor<float> xf = tensor_cast<float>(xd);
    const Tensor<double>& yd = d.forward(xd);
    EXPECT_LT(max_rel(f.forward(xf), yd), 1e-6);
    const Tensor<double> gd = randn(yd.shape(), seed + 1);
    EXPECT_LT(max_rel(f.backward(tensor_cast<float>(gd)), d.backward(gd)), 1e-6);
  }
}

TEST(AvgPoolOneDnn, MatchesReferenceTwin) {
  expect_pool_matches_twin<AvgPool2d>({4, 3, 26, 26}, 1, Pair(2));
  expect_pool_matches_twin<AvgPool2d>({2, 2, 7, 6}, 2, Pair(3), Pool2dOptions{2, 1, 1, true});
  expect_pool_matches_twin<AvgPool2d>({2, 2, 7, 6}, 3, Pair{3, 2},
                                      Pool2dOptions{{2, 1}, {1, 1}, 1, false});
  expect_pool_matches_twin<AdaptiveAvgPool2d>({2, 3, 6, 4}, 4, Pair(1));
  expect_pool_matches_twin<AdaptiveAvgPool2d>({2, 3, 6, 4}, 5, Pair{3, 2});
  expect_pool_matches_twin<AdaptiveAvgPool2d>({2, 2, 7, 5}, 6, Pair{3, 2});  // loops
}

TEST(AvgPoolOneDnn, NanAndInfPropagate) {
  Tensor<float> x({1, 1, 4, 4}, 1.0f);
  x[0] = std::numeric_limits<float>::quiet_NaN();
  x[3] = std::numeric_limits<float>::infinity();
  x[15] = -std::numeric_limits<float>::infinity();
  AvgPool2d<float> l(2);
  const Tensor<float>& y = l.forward(x);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], std::numeric_limits<float>::infinity());
  EXPECT_EQ(y[2], 1.0f);
  EXPECT_EQ(y[3], -std::numeric_limits<float>::infinity());
  AdaptiveAvgPool2d<float> g(1);
  EXPECT_TRUE(std::isnan(g.forward(x)[0]));
}

TEST(Conv2d, StateInitAndName) {
  Rng rng(3);
  Conv2d<float> l(4, 6, 3, {1, 1, 1, 2, true}, rng);
  const auto s = l.state();
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].name, "weight");
  EXPECT_EQ(s[1].name, "bias");
  EXPECT_EQ(l.weight.shape(), Shape({6, 2, 3, 3}));
  const double bound = 1.0 / std::sqrt(2.0 * 9);
  for (int64_t i = 0; i < l.weight.numel(); ++i) EXPECT_LE(std::abs(l.weight[i]), bound);
  for (int64_t i = 0; i < l.bias.numel(); ++i) EXPECT_LE(std::abs(l.bias[i]), bound);
  EXPECT_EQ(l.name(), "Conv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=2)");
  Conv2d<float> nb(1, 2, 3, {1, 0, 1, 1, false});
  EXPECT_EQ(nb.state().size(), 1u);
}

TEST(Conv2d, EmptyBatch) {
  Rng rng(3);
  Conv2d<float> l(2, 3, 3, {}, rng);
  Tensor<float> x({0, 2, 5, 5});
  EXPECT_EQ(l.forward(x).shape(), Shape({0, 3, 3, 3}));
  Tensor<float> dy({0, 3, 3, 3});
  EXPECT_EQ(l.backward(dy).shape(), x.shape());
  for (int64_t i = 0; i < l.dweight.numel(); ++i) EXPECT_EQ(l.dweight[i], 0.0f);
  MaxPool2d<float> mp(2);
  EXPECT_EQ(mp.forward(x).shape(), Shape({0, 2, 2, 2}));
  AvgPool2d<float> ap(2);
  EXPECT_EQ(ap.forward(x).shape(), Shape({0, 2, 2, 2}));
  AdaptiveAvgPool2d<float> aap(1);
  EXPECT_EQ(aap.forward(x).shape(), Shape({0, 2, 1, 1}));
}

template <typename F>
void expect_error(F f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const char* p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(Conv2d, Errors) {
  expect_error(
      [] {
        Conv2d<float>(3, 4, 3, {1, 0, 1, 2, true});
      },
      {"Conv2d(3, 4)", "in_channels", "divisible by groups", "3 % 2"});
  expect_error([] { Conv2d<float>(4, 3, 3, {1, 0, 1, 2, true}); }, {"out_channels", "3 % 2"});
  expect_error([] { Conv2d<float>(1, 1, 0); }, {"kernel_size", "(0, 0)"});
  expect_error([] { Conv2d<float>(1, 1, 3, {0, 0, 1, 1, true}); }, {"stride"});
  expect_error([] { Conv2d<float>(1, 1, 3, {1, -1, 1, 1, true}); }, {"padding", "(-1, -1)"});
  Conv2d<float> l(2, 3, 5, {1, 1, 1, 1, true});
  Tensor<float> small({1, 2, 2, 2});
  expect_error([&] { l.forward(small); }, {"Conv2d(2, 3", "padded to 4x4", "kernel 5x5"});
  Tensor<float> wrong({1, 3, 8, 8});
  expect_error([&] { l.forward(wrong); }, {"expected an input (N, 2, H, W)", "(1, 3, 8, 8)"});
  expect_error([] { MaxPool2d<float>(2, {2, 2, 1, true}); }, {"MaxPool2d", "padding", "(2, 2)"});
  MaxPool2d<float> mp(3);
  expect_error([&] { mp.forward(small); }, {"MaxPool2d", "smaller than the kernel"});
  expect_error([] { AdaptiveAvgPool2d<float>(0); }, {"output_size", "(0, 0)"});
}

TEST(MaxPool2d, NanAndTiesAsPyTorch) {
  MaxPool2d<float> l(2);
  Tensor<float> x = Tensor<float>::from({1, 1, 2, 4}, {1, 1, 0, NAN, 1, 1, 5, 2});
  const Tensor<float>& y = l.forward(x);
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_TRUE(std::isnan(y[1]));
  Tensor<float> dy = Tensor<float>::from({1, 1, 1, 2}, {1, 1});
  const Tensor<float>& dx = l.backward(dy);
  EXPECT_EQ(dx[0], 1.0f);  // the first of the tied maxima
  EXPECT_EQ(dx[1] + dx[4] + dx[5], 0.0f);
  EXPECT_EQ(dx[3], 1.0f);  // the NaN
}

TEST(ModelSpecConv, PlansShapesAndKeys) {
  const auto plan = plan_model(
      "unflatten(1, 28, 28), conv2d(8, 3, padding=1), relu, maxpool2d(2), "
      "conv2d(16, 3x5, stride=2, dilation=1, groups=2, bias=false), avgpool2d(2, stride=1), "
      "adaptiveavgpool2d(1), flatten, linear(10)",
      {4, 784});
  ASSERT_EQ(plan.size(), 9u);
  EXPECT_EQ(plan[1].out_shape, Shape({4, 8, 28, 28}));
  EXPECT_EQ(plan[3].out_shape, Shape({4, 8, 14, 14}));
  EXPECT_EQ(plan[4].out_shape, Shape({4, 16, 6, 5}));
  EXPECT_EQ(plan[5].out_shape, Shape({4, 16, 5, 4}));
  EXPECT_EQ(plan[6].out_shape, Shape({4, 16, 1, 1}));
  EXPECT_EQ(plan[8].out_shape, Shape({4, 10}));
  Rng rng(0);
  auto m = build_model<float>(plan, rng);
  std::vector<std::string> keys;
  for (const auto& e : m->state()) keys.push_back(e.name);
  EXPECT_EQ(keys,
            (std::vector<std::string>{"1.weight", "1.bias", "4.weight", "8.weight", "8.bias"}));
}

TEST(ModelSpecConv, Errors) {
  expect_error(
      [] {
        plan_model("unflatten(1, 28, 28), conv2d(6, 3, groups=4)", {2, 784});
      },
      {"conv2d(6, 3, groups=4)", "divisible by groups=4", "1 and 6"});
  expect_error(
      [] {
        plan_model("unflatten(1, 4, 4), conv2d(6, 5)", {2, 16});
      },
      {"kernel 5x5", "padded input 4x4"});
  expect_error([] { plan_model("conv2d(6, 3)", {2, 784}); }, {"needs a 4-D"});
  expect_error(
      [] {
        plan_model("unflatten(1, 4, 4), maxpool2d(2, padding=2)", {2, 16});
      },
      {"more than half the kernel"});
  expect_error(
      [] {
        plan_model("unflatten(1, 4, 4), conv2d(6)", {2, 16});
      },
      {"output channels and kernel size"});
  expect_error(
      [] {
        plan_model("unflatten(1, 4, 4), conv2d(6, 3, stride=0)", {2, 16});
      },
      {"stride must be a whole number >= 1", "'0'"});
  expect_error(
      [] {
        plan_model("unflatten(1, 4, 4), avgpool2d(2, dilation=2)", {2, 16});
      },
      {"unknown option 'dilation'"});
}

TEST(ModelSpecConv, CnnPreset) {
  for (const char* norm : {"none", "gn", "ln"}) {
    const std::string preset = std::string("cnn:norm=") + norm;
    SCOPED_TRACE(preset);
    const auto plan = plan_model(preset, {8, 784});
    EXPECT_EQ(plan.back().out_shape, Shape({8, 10}));
    Rng rng(0);
    auto m = build_model<float>(plan, rng);
    Tensor<float> x({8, 784}, 0.5f);
    EXPECT_EQ(m->forward(x).shape(), Shape({8, 10}));
  }
  EXPECT_EQ(preset_spec("cnn"),
            "unflatten(1, 28, 28), conv2d(32, 3), relu, maxpool2d(2), conv2d(64, 3), relu, "
            "maxpool2d(2), flatten, linear(128), relu, linear(10)");
  EXPECT_NE(preset_spec("cnn:norm=bn").find("batchnorm2d(32)"), std::string::npos);
  EXPECT_NE(preset_spec("cnn:norm=in").find("instancenorm2d(64)"), std::string::npos);
  expect_error([] { preset_spec("cnn:norm=xx"); }, {"cnn", "norm", "none|bn|gn|in|ln", "'xx'"});
}

}  // namespace
}  // namespace normlab
