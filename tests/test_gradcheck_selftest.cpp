// The gradient checker itself: it passes a correct layer and catches small errors
// in dx and in parameter gradients, gradients that overwrite instead of accumulating,
// and it restores buffers that a training forward changes.
#include <gtest/gtest.h>

#include "gradcheck.hpp"

namespace normlab {
namespace {

// y = a * x^2 (+ count, a buffer bumped by each training forward); one scalar parameter a.
// dx_error / da_error scale the analytic gradients by (1 + error) to plant a bug.
class Square : public Layer<double> {
 public:
  double dx_error = 0, da_error = 0;
  bool overwrite_grad = false;
  Tensor<double> a{{1}, 0.7}, da{{1}};
  int64_t count = 0;

  std::string name() const override { return "Square"; }
  Shape output_shape(const Shape& in) const override { return in; }
  const Tensor<double>& forward_impl(const Tensor<double>& x) override {
    x_ = &x;
    if (training_) ++count;
    y_.resize(x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) y_[i] = a[0] * x[i] * x[i] + double(count);
    return y_;
  }
  const Tensor<double>& backward(const Tensor<double>& dy) override {
    dx_.resize(x_->shape());
    double s = 0;
    for (int64_t i = 0; i < dy.numel(); ++i) {
      dx_[i] = 2 * a[0] * (*x_)[i] * dy[i] * (1 + dx_error);
      s += dy[i] * (*x_)[i] * (*x_)[i] * (1 + da_error);
    }
    da[0] = (overwrite_grad ? 0 : da[0]) + s;
    return dx_;
  }
  std::vector<StateEntry<double>> state() override {
    return {{"a", &a, &da}, {"count", nullptr, nullptr, &count}};
  }

 private:
  const Tensor<double>* x_ = nullptr;
  Tensor<double> y_, dx_;
};

const Shape kShape{3, 4};

TEST(GradCheckSelfTest, CorrectLayerPassesWithMargin) {
  Square l;
  const auto r = test::check_gradients(l, test::randn(kShape, 1), 2);
  EXPECT_TRUE(r.ok(1e-6)) << r.str();
  EXPECT_LT(r.worst(), 1e-8) << r.str();  // the noise floor sits far below the tolerance
  ASSERT_EQ(r.tensors.size(), 2u);
  EXPECT_EQ(r.tensors[0].name, "input");
  EXPECT_EQ(r.tensors[1].name, "a");
}

TEST(GradCheckSelfTest, CatchesSmallInputGradientError) {
  Square l;
  l.dx_error = 1e-5;
  const auto r = test::check_gradients(l, test::randn(kShape, 1), 2);
  EXPECT_FALSE(r.ok(1e-6)) << r.str();
  EXPECT_NEAR(r.tensors[0].max_rel_err, 1e-5, 1e-7);
  EXPECT_LT(r.tensors[1].max_rel_err, 1e-8);
}

TEST(GradCheckSelfTest, CatchesSmallParameterGradientError) {
  Square l;
  l.da_error = 1e-5;
  EXPECT_FALSE(test::gradients_ok(l, kShape, 3));
}

TEST(GradCheckSelfTest, CatchesOverwrittenParameterGradient) {
  Square l;
  l.overwrite_grad = true;
  const auto r = test::check_gradients(l, test::randn(kShape, 1), 2);
  ASSERT_EQ(r.problems.size(), 1u) << r.str();
  EXPECT_NE(r.problems[0].find("accumulate"), std::string::npos);
  EXPECT_FALSE(r.ok(1e-6));
}

// Each training forward bumps `count`, which shifts the output: without the
// restore, the perturbed forwards would see drifting outputs and the check would fail.
TEST(GradCheckSelfTest, RestoresBuffersBetweenForwards) {
  Square l;
  l.count = 5;
  EXPECT_TRUE(test::gradients_ok(l, kShape, 4));
  EXPECT_EQ(l.count, 5);
  EXPECT_TRUE(l.training());
}

}  // namespace
}  // namespace normlab
