// Empty batches (N = 0, or another zero dim) through every layer, as PyTorch
// 2.15.0 (CPU) handles them, checked with e.g.
//   bn = nn.BatchNorm1d(3); bn.running_mean.fill_(5); bn.running_var.fill_(7)
//   bn.num_batches_tracked.fill_(4); x = torch.randn(0, 3, requires_grad=True)
//   y = bn(x); y.sum().backward()
//   -> y (0, 3), x.grad (0, 3), running_mean [5, 5, 5], running_var [7, 7, 7],
//      num_batches_tracked 5, weight.grad = bias.grad = [0, 0, 0]
// and the same for (0, C, L), (N, C, 0), (0, C, 0), eval mode (num_batches_tracked
// stays), track_running_stats=False, momentum=None; nn.LayerNorm on (0, 5),
// (2, 0, 5), (0, 2, 5); nn.Linear and weight_norm(nn.Linear) (dim 0 and None) on
// (0, 4); relu; nn.Flatten on (0, 3, 4) -> (0, 12) and (2, 0, 3) -> (2, 0). Every
// parameter gradient is 0 (no contribution), no error, no NaN anywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "normlab/layers.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

constexpr float kMark = 0.25f;  // parameter gradients before the empty batch

// Forward and backward of an empty input: the output shape, dx of x's shape
// (or empty with input gradients off), parameter gradients untouched and
// parameters and buffers unchanged.
template <typename T>
void expect_empty_pass(Layer<T>& layer, const Shape& in, const Shape& out) {
  SCOPED_TRACE(layer.name() + " on " + shape_str(in));
  for (bool input_grad : {true, false}) {
    layer.set_input_grad(input_grad);
    std::vector<std::vector<T>> before;
    for (auto& e : layer.state()) {
      if (e.grad) e.grad->fill(T(kMark));
      if (e.value) before.emplace_back(e.value->data(), e.value->data() + e.value->numel());
    }
    const Tensor<T> x(in);
    const Tensor<T>& y = layer.forward(x);
    EXPECT_EQ(y.shape(), out);
    EXPECT_EQ(layer.output_shape(in), out);
    const Tensor<T> dy(out);
    const Tensor<T>& dx = layer.backward(dy);
    if (input_grad)
      EXPECT_EQ(dx.shape(), in);
    else
      EXPECT_EQ(dx.numel(), 0);
    size_t k = 0;
    for (auto& e : layer.state()) {
      if (e.grad) {
        for (int64_t i = 0; i < e.grad->numel(); ++i)
          ASSERT_EQ((*e.grad)[i], T(kMark)) << e.name << " gradient changed";
      }
      if (e.value) {
        EXPECT_EQ(std::vector<T>(e.value->data(), e.value->data() + e.value->numel()), before[k])
            << e.name << " changed";
        ++k;
      }
    }
  }
  layer.set_input_grad(true);
}

template <typename T>
void every_layer_takes_an_empty_batch() {
  Rng rng(1);
  Linear<T> lin(4, 3, true, rng);
  expect_empty_pass<T>(lin, {0, 4}, {0, 3});
  expect_empty_pass<T>(lin, {2, 0, 4}, {2, 0, 3});
  for (bool track : {true, false})
    for (bool training : {true, false}) {
      BatchNormOptions o;
      o.track_running_stats = track;
      BatchNorm1d<T> bn(3, o);
      bn.set_training(training);
      for (const Shape& s : {Shape{0, 3}, Shape{0, 3, 4}, Shape{2, 3, 0}, Shape{0, 3, 0}})
        expect_empty_pass<T>(bn, s, s);
    }
  LayerNorm<T> ln({5});
  for (const Shape& s : {Shape{0, 5}, Shape{2, 0, 5}, Shape{0, 2, 5}})
    expect_empty_pass<T>(ln, s, s);
  LayerNorm<T> ln2({2, 5});
  expect_empty_pass<T>(ln2, {0, 2, 5}, {0, 2, 5});
  for (auto dim : {WeightNormDim::Rows, WeightNormDim::Whole}) {
    WeightNormLinear<T> wn(4, 3, true, dim, rng);
    expect_empty_pass<T>(wn, {0, 4}, {0, 3});
    if (wn.fuse_relu(true)) expect_empty_pass<T>(wn, {0, 4}, {0, 3});
  }
  ReLU<T> relu;
  expect_empty_pass<T>(relu, {0, 3}, {0, 3});
  Flatten<T> flat;
  expect_empty_pass<T>(flat, {0, 3, 4}, {0, 12});
  expect_empty_pass<T>(flat, {2, 0, 3}, {2, 0});
  NotebookWeightNormLinear<T> nbwn(4, 3, true, rng);
  expect_empty_pass<T>(nbwn, {0, 4}, {0, 3});
  using Over = typename NotebookScalarNorm<T>::Over;
  for (Over over : {Over::Tensor, Over::Rows}) {
    NotebookScalarNorm<T> nb(over, rng);
    expect_empty_pass<T>(nb, {0, 3}, {0, 3});
    expect_empty_pass<T>(nb, {2, 0}, {2, 0});
  }
}

TEST(EmptyBatch, EveryLayerFloat) {
  every_layer_takes_an_empty_batch<float>();
}
TEST(EmptyBatch, EveryLayerDouble) {
  every_layer_takes_an_empty_batch<double>();
}

TEST(EmptyBatch, SequentialWithEveryLayerAndFusedRelus) {
  Rng rng(2);
  Sequential<float> net;
  net.add(std::make_unique<Flatten<float>>());
  net.add(std::make_unique<Linear<float>>(6, 5, true, rng));
  net.add(std::make_unique<BatchNorm1d<float>>(5));
  net.add(std::make_unique<ReLU<float>>());
  net.add(std::make_unique<WeightNormLinear<float>>(5, 4, true, WeightNormDim::Rows, rng));
  net.add(std::make_unique<ReLU<float>>());
  net.add(std::make_unique<LayerNorm<float>>(Shape{4}));
  net.add(std::make_unique<NotebookWeightNormLinear<float>>(4, 4, true, rng));
  net.add(
      std::make_unique<NotebookScalarNorm<float>>(NotebookScalarNorm<float>::Over::Tensor, rng));
  net.add(std::make_unique<NotebookScalarNorm<float>>(NotebookScalarNorm<float>::Over::Rows, rng));
  net.add(std::make_unique<Linear<float>>(4, 2, true, rng));
  expect_empty_pass<float>(net, {0, 2, 3}, {0, 2});
  EXPECT_EQ(net.fuse_relus(), 2);  // BatchNorm1d and the per-row WeightNormLinear
  expect_empty_pass<float>(net, {0, 2, 3}, {0, 2});
  // And a real batch still works after empty ones.
  const Tensor<float> x({3, 2, 3}, 0.5f);
  EXPECT_EQ(net.forward(x).shape(), Shape({3, 2}));
}

// The running statistics stay, the batch is counted (training only).
TEST(EmptyBatch, BatchNormRunningStatisticsAsInTorch) {
  for (const Shape& s : {Shape{0, 3}, Shape{0, 3, 4}, Shape{2, 3, 0}}) {
    BatchNorm1d<float> bn(3);
    bn.running_mean.fill(5.0f);
    bn.running_var.fill(7.0f);
    bn.num_batches_tracked = 4;
    const Tensor<float> x(s);
    bn.forward(x);
    EXPECT_EQ(bn.num_batches_tracked, 5) << shape_str(s);
    for (int64_t c = 0; c < 3; ++c) {
      EXPECT_EQ(bn.running_mean[c], 5.0f);
      EXPECT_EQ(bn.running_var[c], 7.0f);
    }
    bn.set_training(false);
    bn.forward(x);
    EXPECT_EQ(bn.num_batches_tracked, 5) << "eval counts nothing";
  }
}

// momentum=None: the factor is 1/num_batches_tracked, and PyTorch counts the empty
// batch, so the next real batch gets 1/6, not 1/5:
//   bn = nn.BatchNorm1d(3, momentum=None); running_mean 5, num_batches_tracked 4
//   bn(torch.randn(0, 3)); bn(xb)  ->  running_mean = 5 * 5/6 + xb.mean(0) / 6
TEST(EmptyBatch, CumulativeAverageCountsTheEmptyBatch) {
  BatchNormOptions o;
  o.momentum = std::nullopt;
  BatchNorm1d<double> bn(3, o);
  bn.running_mean.fill(5.0);
  bn.num_batches_tracked = 4;
  const Tensor<double> empty({0, 3});
  bn.forward(empty);
  Tensor<double> xb({4, 3});
  for (int64_t i = 0; i < xb.numel(); ++i) xb[i] = 0.5 * static_cast<double>(i % 5) - 1.0;
  bn.forward(xb);
  for (int64_t c = 0; c < 3; ++c) {
    double mean = 0;
    for (int64_t n = 0; n < 4; ++n) mean += xb[n * 3 + c] / 4;
    EXPECT_NEAR(bn.running_mean[c], 5.0 * 5.0 / 6.0 + mean / 6.0, 1e-12) << c;
  }
  EXPECT_EQ(bn.num_batches_tracked, 6);
}

}  // namespace
}  // namespace normlab
