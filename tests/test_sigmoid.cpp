// Sigmoid (nn.Sigmoid): gradient check, values, edge semantics (NaN, +-inf,
// large |x|), empty batch, input grads off, and the spec name "sigmoid".
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "gradcheck.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"

namespace normlab {
namespace {

TEST(GradCheckSigmoid, SmallAndLargeInputs) {
  Sigmoid<double> s;
  EXPECT_GRADIENTS_OK(s, Shape({4, 5}), 71);
  Tensor<double> x = test::randn({3, 2, 4}, 72);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] *= 4.0;  // into the flat tails
  EXPECT_GRADIENTS_OK(s, x, 73);
}

TEST(Sigmoid, ValuesAndEdgesAsTorch) {
  // torch.sigmoid(torch.tensor([0., 2., -2., 100., -100., inf, -inf, nan]))
  Sigmoid<float> s;
  const float inf = std::numeric_limits<float>::infinity();
  Tensor<float> x({1, 8});
  const float in[] = {0.f, 2.f, -2.f, 100.f, -100.f, inf, -inf, std::nanf("")};
  for (int i = 0; i < 8; ++i) x[i] = in[i];
  const Tensor<float>& y = s.forward(x);
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_FLOAT_EQ(y[1], 0.880797077977882f);
  EXPECT_FLOAT_EQ(y[2], 0.119202922022118f);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_GE(y[4], 0.0f);  // torch 2.15 (float32 CPU): 0; exactly 3.7e-44, a subnormal
  EXPECT_LT(y[4], 1e-40f);
  EXPECT_EQ(y[5], 1.0f);
  EXPECT_EQ(y[6], 0.0f);
  EXPECT_TRUE(std::isnan(y[7]));
  Tensor<float> dy({1, 8});
  for (int i = 0; i < 8; ++i) dy[i] = 1.f;
  const Tensor<float>& dx = s.backward(dy);
  EXPECT_FLOAT_EQ(dx[0], 0.25f);
  EXPECT_NEAR(dx[1], 0.104993585403507f, 1e-6);
  EXPECT_EQ(dx[5], 0.0f);
  EXPECT_EQ(dx[6], 0.0f);
  EXPECT_TRUE(std::isnan(dx[7]));
}

TEST(Sigmoid, EmptyBatchAndInputGradOff) {
  Sigmoid<float> s;
  Tensor<float> x({0, 3});
  EXPECT_EQ(s.forward(x).numel(), 0);
  Tensor<float> dy({0, 3});
  EXPECT_EQ(s.backward(dy).numel(), 0);
  s.set_input_grad(false);
  Tensor<float> x2({2, 3});
  s.forward(x2);
  Tensor<float> dy2({2, 3});
  EXPECT_EQ(s.backward(dy2).numel(), 0);
  Tensor<float> bad({3, 2});
  EXPECT_THROW(s.backward(bad), Error);
}

TEST(Sigmoid, SpecName) {
  Rng rng(1);
  auto m = build_model<float>("flatten, linear(8), sigmoid, linear(3)", Shape{2, 4, 4}, rng);
  EXPECT_EQ((*m)[2].name(), "Sigmoid");
  EXPECT_EQ(m->state().size(), 4u);
}

}  // namespace
}  // namespace normlab
