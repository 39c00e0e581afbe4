#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "alloc_counter.hpp"
#include "fixture_json.hpp"
#include "normlab/error.hpp"
#include "normlab/loss.hpp"
#include "normlab/rng.hpp"

using namespace normlab;
using normlab::testing::read_fixture;
using normlab::testing::tensor_from_json;

// PyTorch's float cross-entropy against ours: the loss within 1e-6 relative,
// each gradient element within 1e-6 relative to the row's largest gradient
// (softmax entries near 0 carry only absolute float error).
TEST(CrossEntropy, MatchesPyTorchFixtures) {
  const auto fixture = read_fixture("optim/cross_entropy.json");
  ASSERT_GE(fixture.at("cases").size(), 5u);
  for (const auto& c : fixture.at("cases")) {
    SCOPED_TRACE(c.at("name").get<std::string>());
    const Tensor<float> logits = tensor_from_json<float>(c.at("logits"));
    const Tensor<float> want = tensor_from_json<float>(c.at("dlogits"));
    const auto labels = c.at("labels").get<std::vector<int32_t>>();
    Tensor<float> dlogits;
    const double loss = cross_entropy(logits, labels, &dlogits);
    const double want_loss = c.at("loss").get<double>();
    EXPECT_NEAR(loss, want_loss, 1e-6 * std::max(1.0, std::abs(want_loss)));
    ASSERT_EQ(dlogits.shape(), want.shape());
    const int64_t N = logits.dim(0), K = logits.dim(1);
    for (int64_t n = 0; n < N; ++n) {
      float row_max = 0;
      for (int64_t k = 0; k < K; ++k) row_max = std::max(row_max, std::abs(want[n * K + k]));
      for (int64_t k = 0; k < K; ++k)
        EXPECT_NEAR(dlogits[n * K + k], want[n * K + k], 1e-6 * row_max)
            << "row " << n << " k " << k;
    }
  }
}

TEST(CrossEntropy, GradientMatchesCentralDifferencesInDouble) {
  const int64_t N = 5, K = 7;
  Rng rng(11);
  std::vector<double> x(N * K), dx(N * K), unused(N * K);
  rng.fill_normal(x.data(), N * K, 0.0, 2.0);
  const std::vector<int32_t> y{0, 6, 3, 3, 1};
  cross_entropy_forward_backward(x.data(), y.data(), N, K, dx.data());
  const double h = 1e-6;
  double worst = 0;
  for (int64_t i = 0; i < N * K; ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = cross_entropy_forward_backward(x.data(), y.data(), N, K, unused.data());
    x[i] = keep - h;
    const double down = cross_entropy_forward_backward(x.data(), y.data(), N, K, unused.data());
    x[i] = keep;
    const double numeric = (up - down) / (2 * h);
    worst = std::max(worst, std::abs(numeric - dx[i]) / std::max(1e-3, std::abs(numeric)));
  }
  EXPECT_LT(worst, 1e-6);
}

TEST(CrossEntropy, LossWithoutGradientIsTheSame) {
  const std::vector<float> x{0.5f, -1.f, 2.f, 3.f, 0.f, -2.f};
  const std::vector<int32_t> y{2, 0};
  std::vector<float> dx(6);
  EXPECT_EQ(cross_entropy_forward_backward(x.data(), y.data(), 2, 3, dx.data()),
            cross_entropy_forward_backward(x.data(), y.data(), 2, 3, static_cast<float*>(nullptr)));
}

// Without subtracting the row max, exp(1e4) overflows in float and double.
TEST(CrossEntropy, HugeLogitsStayFiniteAndExact) {
  const std::vector<double> x{1e4, 0.0, -1e4, 1e4 + 1.0};
  const std::vector<int32_t> y{1, 0};
  std::vector<double> dx(4);
  const double loss = cross_entropy_forward_backward(x.data(), y.data(), 2, 2, dx.data());
  // Row 0: loss = 1e4 (softmax of the label is e^-1e4). Row 1: log(1 + e^1) - (-1e4 - (1e4+1))... =
  // lse(-1e4, 1e4+1) - (-1e4) = 1e4 + 1 + 1e4 = 2e4 + 1.
  EXPECT_DOUBLE_EQ(loss, (1e4 + (2e4 + 1.0)) / 2);
  EXPECT_DOUBLE_EQ(dx[0], 0.5);
  EXPECT_DOUBLE_EQ(dx[1], -0.5);
  EXPECT_DOUBLE_EQ(dx[2], -0.5);
  EXPECT_DOUBLE_EQ(dx[3], 0.5);
}

TEST(CrossEntropy, LabelOutOfRangeNamesRowAndLabel) {
  const std::vector<float> x(3 * 4, 0.f);
  for (const int32_t bad : {4, -1}) {
    const std::vector<int32_t> y{0, 3, bad};
    try {
      cross_entropy_forward_backward(x.data(), y.data(), 3, 4, static_cast<float*>(nullptr));
      FAIL() << "label " << bad << " accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("label " + std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("row 2"), std::string::npos) << msg;
      EXPECT_NE(msg.find("[0, 4)"), std::string::npos) << msg;
    }
  }
}

TEST(CrossEntropy, TensorFormChecksShapes) {
  Tensor<float> logits({2, 3}, 0.f);
  const std::vector<int32_t> three{0, 1, 2};
  EXPECT_THROW(cross_entropy(logits, three), Error);
  Tensor<float> cube({2, 3, 1}, 0.f);
  const std::vector<int32_t> two{0, 1};
  EXPECT_THROW(cross_entropy(cube, two), Error);
  Tensor<float> d;
  EXPECT_NEAR(cross_entropy(logits, two, &d), std::log(3.0), 1e-7);
  EXPECT_EQ(d.shape(), (Shape{2, 3}));
}

TEST(CrossEntropy, AllocatesNothingOnceBuffersHaveTheirSize) {
  Tensor<float> logits({64, 10}, 0.25f), d({64, 10});
  const std::vector<int32_t> y(64, 3);
  const int64_t n = normlab::testing::allocations_during([&] { cross_entropy(logits, y, &d); });
  EXPECT_EQ(n, 0);
}

TEST(Accuracy, ArgmaxTakesTheFirstMaximumLikeTorchMax) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x{1,  3,   3,  0,      //
                             5,  5,   5,  5,      //
                             -1, -2,  -3, -0.5f,  //
                             1,  nan, 9,  nan};
  std::vector<int32_t> idx(4);
  argmax_rows(x.data(), 4, 4, idx.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 0, 3, 1}));
  const std::vector<int32_t> labels{1, 1, 3, 2};
  EXPECT_EQ(count_correct(x.data(), labels.data(), 4, 4), 2);
}
