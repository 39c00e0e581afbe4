// Tensor::from (a tensor from values) and tensor_cast (float <-> double).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "normlab/error.hpp"
#include "normlab/tensor.hpp"

namespace normlab {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

TEST(TensorFrom, InitializerListFillsRowMajor) {
  const Tensor<float> t = Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.numel(), 6);
  EXPECT_FALSE(t.bound());
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(t[i], float(i + 1));
}

TEST(TensorFrom, ScalarAndEmptyShapes) {
  const Tensor<double> s = Tensor<double>::from({}, {7.5});
  EXPECT_EQ(s.shape(), Shape{});
  EXPECT_EQ(s.numel(), 1);
  EXPECT_EQ(s[0], 7.5);
  const Tensor<double> e = Tensor<double>::from({0, 4}, {});
  EXPECT_EQ(e.shape(), (Shape{0, 4}));
  EXPECT_EQ(e.numel(), 0);
}

TEST(TensorFrom, VectorAndSpan) {
  const std::vector<double> v = {0.25, -1, 3};
  const Tensor<double> a = Tensor<double>::from({3, 1}, v);
  EXPECT_EQ(a.shape(), (Shape{3, 1}));
  EXPECT_EQ(a[0], 0.25);
  EXPECT_EQ(a[1], -1.0);
  EXPECT_EQ(a[2], 3.0);
  const Tensor<double> b = Tensor<double>::from({1, 3}, std::span<const double>(v));
  EXPECT_EQ(b.shape(), (Shape{1, 3}));
  EXPECT_EQ(b[2], 3.0);
}

TEST(TensorFrom, CountMismatchIsAnErrorWithTheNumbers) {
  EXPECT_EQ(error_of([] {
              Tensor<float>::from({2, 3}, {1, 2, 3, 4, 5});
            }),
            "Tensor::from: shape (2, 3) needs 6 values, got 5");
  EXPECT_EQ(error_of([] {
              Tensor<float>::from({}, {1, 2});
            }),
            "Tensor::from: shape () needs 1 value, got 2");
  const std::vector<double> seven(7, 0.0);
  EXPECT_EQ(error_of([&] {
              Tensor<double>::from({2, 2}, seven);
            }),
            "Tensor::from: shape (2, 2) needs 4 values, got 7");
  EXPECT_NE(error_of([] { Tensor<float>::from({-1}, {}); }).find("negative dimension"),
            std::string::npos);
}

TEST(TensorCast, FloatToDoubleIsExactAndKeepsTheShape) {
  const Tensor<float> f = Tensor<float>::from({2, 2}, {0.1f, -2.5f, 1e-30f, 3.4e38f});
  const Tensor<double> d = tensor_cast<double>(f);
  EXPECT_EQ(d.shape(), (Shape{2, 2}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(d[i], static_cast<double>(f[i]));
  EXPECT_EQ(d[0], 0.100000001490116119384765625);  // the float nearest 0.1, exactly
}

TEST(TensorCast, DoubleToFloatRoundsToNearestAndOverflowsToInfinity) {
  const Tensor<double> d = Tensor<double>::from({4}, {0.1, 1.0 + 1e-12, 1e300, -1e300});
  const Tensor<float> f = tensor_cast<float>(d);
  EXPECT_EQ(f.shape(), Shape{4});
  EXPECT_EQ(f[0], 0.1f);
  EXPECT_EQ(f[1], 1.0f);
  EXPECT_EQ(f[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(f[3], -std::numeric_limits<float>::infinity());
}

TEST(TensorCast, BoundAndEmptyTensorsGiveOwningCopies) {
  std::shared_ptr<float[]> block(new float[4]{1, 2, 3, 4});
  const Tensor<float> view({2}, block, block.get() + 2);
  const Tensor<double> d = tensor_cast<double>(view);
  EXPECT_FALSE(d.bound());
  EXPECT_EQ(d.shape(), Shape{2});
  EXPECT_EQ(d[0], 3.0);
  EXPECT_EQ(d[1], 4.0);
  const Tensor<double> e = tensor_cast<double>(Tensor<float>());
  EXPECT_EQ(e.numel(), 0);
  const Tensor<float> same = tensor_cast<float>(view);  // a plain copy
  EXPECT_EQ(same[1], 4.0f);
}

}  // namespace
}  // namespace normlab
