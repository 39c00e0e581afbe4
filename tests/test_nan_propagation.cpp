// NaN and infinity propagate through every layer and fused path as in PyTorch
// (docs/numerics.md). Expected values are PyTorch 2.15.0's (CPU, float32),
// printed by the snippets quoted in each test; a NaN that a layer hid would
// slip past the trainer's non-finite check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "normlab/layers.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

// Read at run time, not constexpr: GCC 12.2 (-O3 -march=native) built the
// constant list {NaN, NaN, 0, 0} of one of these tests as four NaNs (a
// broadcast store), so an expected value was wrong; a NaN the compiler cannot
// see cannot be folded that way.
const double kNaN = std::strtod("nan", nullptr);
constexpr double kInf = std::numeric_limits<double>::infinity();

// NaN where PyTorch has NaN, the same infinity, else within tol (relative).
template <typename T>
void expect_like_torch(const Tensor<T>& got, const std::vector<double>& want, const char* what,
                       double tol = 1e-5) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = static_cast<double>(got[static_cast<int64_t>(i)]), w = want[i];
    if (std::isnan(w))
      EXPECT_TRUE(std::isnan(g)) << what << "[" << i << "] = " << g << ", PyTorch: nan";
    else if (std::isinf(w))
      EXPECT_EQ(g, w) << what << "[" << i << "]";
    else
      EXPECT_NEAR(g, w, tol * std::max(1.0, std::abs(w))) << what << "[" << i << "]";
  }
}

template <typename T>
Tensor<T> tensor(Shape shape, const std::vector<double>& v) {
  Tensor<T> t(std::move(shape));
  for (size_t i = 0; i < v.size(); ++i) t[static_cast<int64_t>(i)] = static_cast<T>(v[i]);
  return t;
}

// x = [nan, inf, -inf, 0, -0, 1, -1]; y = torch.relu(x); y.backward(dy = [1..7])
//   y  = [nan, inf, 0, 0, -0, 1, 0]    dx = [1, 2, 0, 0, 0, 6, 0]
// and x = [-1, 1, nan], dy = [nan, inf, nan]: dx = [0, inf, nan] (threshold_backward
// masks on the output: dx = y <= 0 ? 0 : dy).
template <typename T>
void relu_like_torch() {
  ReLU<T> relu;
  const Tensor<T> x = tensor<T>({7}, {kNaN, kInf, -kInf, 0.0, -0.0, 1.0, -1.0});
  const Tensor<T>& y = relu.forward(x);
  expect_like_torch(y, {kNaN, kInf, 0, 0, 0, 1, 0}, "y");
  EXPECT_TRUE(std::signbit(y[4])) << "relu(-0.0) is -0.0 in PyTorch";
  EXPECT_FALSE(std::signbit(y[2]));
  const Tensor<T> dy = tensor<T>({7}, {1, 2, 3, 4, 5, 6, 7});
  expect_like_torch(relu.backward(dy), {1, 2, 0, 0, 0, 6, 0}, "dx");

  const Tensor<T> x2 = tensor<T>({3}, {-1.0, 1.0, kNaN});
  relu.forward(x2);
  const Tensor<T> dy2 = tensor<T>({3}, {kNaN, kInf, kNaN});
  expect_like_torch(relu.backward(dy2), {0, kInf, kNaN}, "dx2");
}

TEST(NanPropagation, ReluFloat) {
  relu_like_torch<float>();
}
TEST(NanPropagation, ReluDouble) {
  relu_like_torch<double>();
}

// The vector loops and the threaded path (n >= 2^15): NaN at every lane position.
TEST(NanPropagation, ReluLongVectorsKeepEveryNaN) {
  for (int64_t n : {int64_t{37}, int64_t{1} << 16}) {
    Tensor<float> x({n}, -1.0f), dy({n}, 3.0f);
    for (int64_t i = 0; i < n; i += 5) x[i] = NAN;
    ReLU<float> relu;
    const Tensor<float>& y = relu.forward(x);
    const Tensor<float>& dx = relu.backward(dy);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(std::isnan(y[i]), i % 5 == 0) << "n=" << n << " i=" << i;
      ASSERT_EQ(dx[i], i % 5 == 0 ? 3.0f : 0.0f) << "n=" << n << " i=" << i;
    }
  }
}

// Linear then ReLU, with weights set:
//   lin = nn.Linear(2, 2); lin.weight = [[1, 2], [3, 4]]; lin.bias = [0.5, -0.5]
//   x = [[nan, 1], [1, -1]]; y = relu(lin(x)); y.backward([[1, 1], [1, 1]])
//   y = [[nan, nan], [0, 0]]   (row 2: -0.5, -1.5)
//   x.grad = [[4, 6], [0, 0]]  (the NaN row's gradient passes the ReLU)
//   weight.grad = [[nan, 1], [nan, 1]]   bias.grad = [1, 1]
TEST(NanPropagation, LinearThenReluInASequential) {
  Sequential<float> net;
  auto lin = std::make_unique<Linear<float>>(2, 2);
  lin->weight = tensor<float>({2, 2}, {1, 2, 3, 4});
  lin->bias = tensor<float>({2}, {0.5, -0.5});
  Linear<float>& l = *lin;
  net.add(std::move(lin));
  net.add(std::make_unique<ReLU<float>>());
  EXPECT_EQ(net.fuse_relus(), 0);  // Linear applies no ReLU itself
  const Tensor<float> x = tensor<float>({2, 2}, {kNaN, 1, 1, -1});
  expect_like_torch(net.forward(x), {kNaN, kNaN, 0, 0}, "y");
  const Tensor<float> dy({2, 2}, 1.0f);
  expect_like_torch(net.backward(dy), {4, 6, 0, 0}, "dx");
  expect_like_torch(l.dweight, {kNaN, 1, kNaN, 1}, "dweight");
  expect_like_torch(l.dbias, {1, 1}, "dbias");
}

// The ReLU fused into WeightNormLinear (Sequential::fuse_relus) treats NaN as the
// plain ReLU does: the same outputs, dx and parameter gradients, NaN for NaN.
template <typename T>
void fused_relu_keeps_nan() {
  auto make = [](bool fuse) {
    Rng rng(3);
    auto net = std::make_unique<Sequential<T>>();
    net->add(std::make_unique<WeightNormLinear<T>>(4, 3, true, WeightNormDim::Rows, rng));
    net->add(std::make_unique<ReLU<T>>());
    net->add(std::make_unique<Linear<T>>(3, 2, true, rng));
    if (fuse) {
      EXPECT_EQ(net->fuse_relus(), 1);
    }
    return net;
  };
  auto plain = make(false), fused = make(true);
  // Row 0 holds a NaN (its whole output row is NaN, which must pass the ReLU with
  // its gradient); row 1 an infinity; row 2 is finite.
  const Tensor<T> x = tensor<T>({3, 4}, {kNaN, 1, 2, 3, 1e30, -2, 0.5, 1, 0.1, -0.2, 0.3, -0.4});
  const Tensor<T>& yp = plain->forward(x);
  const Tensor<T>& yf = fused->forward(x);
  ASSERT_EQ(yp.shape(), yf.shape());
  for (int64_t i = 0; i < yp.numel(); ++i) {
    EXPECT_EQ(std::isnan(yp[i]), std::isnan(yf[i])) << i;
    if (!std::isnan(yp[i])) {
      EXPECT_EQ(yp[i], yf[i]) << i;
    }
  }
  for (int64_t i = 0; i < 2; ++i) EXPECT_TRUE(std::isnan(yf[i])) << "row 0 must stay NaN";
  const Tensor<T> dy({3, 2}, T(1));
  const Tensor<T>& dxp = plain->backward(dy);
  const Tensor<T>& dxf = fused->backward(dy);
  for (int64_t i = 0; i < dxp.numel(); ++i) {
    EXPECT_EQ(std::isnan(dxp[i]), std::isnan(dxf[i])) << i;
    if (!std::isnan(dxp[i])) {
      EXPECT_NEAR(dxp[i], dxf[i], 1e-5 * std::max(T(1), std::abs(dxp[i])));
    }
  }
  auto a = plain->state(), b = fused->state();
  for (size_t k = 0; k < a.size(); ++k) {
    if (!a[k].grad) continue;
    for (int64_t i = 0; i < a[k].grad->numel(); ++i) {
      const T p = (*a[k].grad)[i], f = (*b[k].grad)[i];
      EXPECT_EQ(std::isnan(p), std::isnan(f)) << a[k].name << "[" << i << "]";
      if (!std::isnan(p)) {
        EXPECT_NEAR(p, f, 1e-5 * std::max(T(1), std::abs(p))) << a[k].name;
      }
    }
  }
  // The NaN row reached the parameters, as in PyTorch (weight_v.grad holds NaN).
  ASSERT_EQ(b[2].name, "0.weight_v");
  bool any_nan = false;
  for (int64_t i = 0; i < b[2].grad->numel(); ++i) any_nan |= std::isnan((*b[2].grad)[i]);
  EXPECT_TRUE(any_nan);
}

TEST(NanPropagation, FusedReluInWeightNormLinearFloat) {
  fused_relu_keeps_nan<float>();
}
TEST(NanPropagation, FusedReluInWeightNormLinearDouble) {
  fused_relu_keeps_nan<double>();
}

// bn = nn.BatchNorm1d(2); x = [[1, 3], [nan, 5], [2, 4], [0.5, -1]]
// y = bn(x); y.backward([[1, 2], [3, 4], [5, 6], [7, 8]])
TEST(NanPropagation, BatchNormTrainingLikeTorch) {
  BatchNorm1d<float> bn(2);
  const Tensor<float> x = tensor<float>({4, 2}, {1, 3, kNaN, 5, 2, 4, 0.5, -1});
  expect_like_torch(bn.forward(x),
                    {kNaN, 0.10976412892341614, kNaN, 0.987877368927002, kNaN, 0.5488207340240479,
                     kNaN, -1.646462321281433},
                    "y");
  expect_like_torch(bn.running_mean, {kNaN, 0.2750000059604645}, "running_mean");
  expect_like_torch(bn.running_var, {kNaN, 1.591666579246521}, "running_var");
  const Tensor<float> dy = tensor<float>({4, 2}, {1, 2, 3, 4, 5, 6, 7, 8});
  expect_like_torch(bn.backward(dy),
                    {kNaN, -1.2484019994735718, kNaN, 0.17985329031944275, kNaN, 0.7828954458236694,
                     kNaN, 0.28565335273742676},
                    "dx");
  expect_like_torch(bn.dweight, {kNaN, -5.707736015319824}, "dweight");
  expect_like_torch(bn.dbias, {16, 20}, "dbias");

  // Then eval on x2 = [[1, inf], [nan, 5]] with those running statistics, backward(ones):
  // y = [[nan, inf], [nan, 3.745194673538208]], dx = [[nan, 0.79263377], [nan, 0.79263377]],
  // weight.grad += [nan, inf], bias.grad += [2, 2].
  bn.set_training(false);
  bn.zero_grad();
  const Tensor<float> x2 = tensor<float>({2, 2}, {1, kInf, kNaN, 5});
  expect_like_torch(bn.forward(x2), {kNaN, kInf, kNaN, 3.745194673538208}, "eval y");
  const Tensor<float> ones({2, 2}, 1.0f);
  expect_like_torch(bn.backward(ones), {kNaN, 0.7926337718963623, kNaN, 0.7926337718963623},
                    "eval dx");
  expect_like_torch(bn.dweight, {kNaN, kInf}, "eval dweight");
  expect_like_torch(bn.dbias, {2, 2}, "eval dbias");
}

// x = [[1, 3], [inf, 5], [2, 4]]; bn = nn.BatchNorm1d(2); bn(x).backward(ones):
// y[:, 0] nan, y[:, 1] = [-1.2247356, 1.2247356, 0]; running_mean = [inf, 0.4],
// running_var = [nan, 1]; dx[:, 0] nan, dx[:, 1] 0; weight.grad [nan, 0]; bias.grad [3, 3].
TEST(NanPropagation, BatchNormInfinityLikeTorch) {
  BatchNorm1d<float> bn(2);
  const Tensor<float> x = tensor<float>({3, 2}, {1, 3, kInf, 5, 2, 4});
  expect_like_torch(bn.forward(x), {kNaN, -1.2247356176376343, kNaN, 1.2247356176376343, kNaN, 0},
                    "y");
  expect_like_torch(bn.running_mean, {kInf, 0.4000000059604645}, "running_mean");
  expect_like_torch(bn.running_var, {kNaN, 1.0}, "running_var");
  const Tensor<float> ones({3, 2}, 1.0f);
  expect_like_torch(bn.backward(ones), {kNaN, 0, kNaN, 0, kNaN, 0}, "dx");
  expect_like_torch(bn.dweight, {kNaN, 0}, "dweight");
  expect_like_torch(bn.dbias, {3, 3}, "dbias");
}

// ln = nn.LayerNorm(3); x = [[1, inf, 2], [1, 2, 4], [nan, 0, 1]]
// y = ln(x); y.backward([[1, 2, 3], [1, -1, 0.5], [2, 2, 2]])
TEST(NanPropagation, LayerNormLikeTorch) {
  LayerNorm<float> ln({3});
  const Tensor<float> x = tensor<float>({3, 3}, {1, kInf, 2, 1, 2, 4, kNaN, 0, 1});
  expect_like_torch(ln.forward(x),
                    {kNaN, kNaN, kNaN, -1.06904137134552, -0.26726028323173523, 1.3363018035888672,
                     kNaN, kNaN, kNaN},
                    "y");
  const Tensor<float> dy = tensor<float>({3, 3}, {1, 2, 3, 1, -1, 0.5, 2, 2, 2});
  expect_like_torch(ln.backward(dy),
                    {kNaN, kNaN, kNaN, 0.6299710869789124, -0.9449561834335327, 0.3149850368499756,
                     kNaN, kNaN, kNaN},
                    "dx");
  expect_like_torch(ln.dweight, {kNaN, kNaN, kNaN}, "dweight");
  expect_like_torch(ln.dbias, {4, 3, 5.5}, "dbias");
}

}  // namespace
}  // namespace normlab
