// The Layer contract of layer.hpp, for every layer type:
//   * forward keeps a pointer to its input, so a temporary must not compile
//     (checked at compile time, through the derived types and Layer<T>&);
//   * with set_input_grad(false) backward returns an empty tensor and the
//     parameter gradients are those of a pass with input gradients on;
//   * the constructors without an Rng give zero parameters of the same shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "normlab/layers.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

// ------------------------------------------------ no temporaries, at compile time

template <typename L, typename T>
concept TakesLvalue = requires(L& layer, const Tensor<T>& x) {
  layer.forward(x);
};
template <typename L, typename T>
concept TakesTemporary = requires(L& layer) {
  layer.forward(Tensor<T>{});
};
template <typename L, typename T>
concept TakesConstTemporary = requires(L& layer, const Tensor<T>&& x) {
  layer.forward(std::move(x));
};

template <typename T, typename... Ls>
constexpr bool forward_refuses_temporaries() {
  return ((TakesLvalue<Ls, T> && !TakesTemporary<Ls, T> && !TakesConstTemporary<Ls, T>)&&...);
}

template <typename T>
constexpr bool every_layer_refuses_temporaries() {
  return forward_refuses_temporaries<T, Layer<T>, Linear<T>, BatchNorm1d<T>, LayerNorm<T>,
                                     WeightNormLinear<T>, ReLU<T>, Flatten<T>, Sequential<T>,
                                     NotebookWeightNormLinear<T>, NotebookScalarNorm<T>>();
}

static_assert(every_layer_refuses_temporaries<float>());
static_assert(every_layer_refuses_temporaries<double>());
// The implementation hook is not a way around it.
template <typename L, typename T>
concept ImplIsPublic = requires(L& layer, const Tensor<T>& x) {
  layer.forward_impl(x);
};
static_assert(!ImplIsPublic<Linear<float>, float> && !ImplIsPublic<Sequential<float>, float> &&
              !ImplIsPublic<Layer<float>, float>);

// ------------------------------------------------ set_input_grad(false)

// Parameter gradients of one forward/backward, and the size of the returned dx.
template <typename T>
std::pair<std::vector<T>, int64_t> pass(Layer<T>& layer, const Tensor<T>& x, bool input_grad) {
  layer.set_input_grad(input_grad);
  layer.zero_grad();
  const Tensor<T>& y = layer.forward(x);
  Tensor<T> dy(y.shape());
  for (int64_t i = 0; i < dy.numel(); ++i) dy[i] = T(0.1) * static_cast<T>(i % 7) - T(0.3);
  const int64_t dx_numel = layer.backward(dy).numel();
  std::vector<T> grads;
  for (auto& e : layer.state())
    if (e.grad) grads.insert(grads.end(), e.grad->data(), e.grad->data() + e.grad->numel());
  return {grads, dx_numel};
}

template <typename T>
void expect_input_grad_honoured(Layer<T>& layer, const Shape& in) {
  SCOPED_TRACE(layer.name());
  Tensor<T> x(in);
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = T(0.37) * static_cast<T>(i % 11) - T(1.5);
  const auto on = pass(layer, x, true);
  const auto off = pass(layer, x, false);
  EXPECT_EQ(on.second, x.numel());
  EXPECT_EQ(off.second, 0) << "backward returned a dx with input gradients off";
  ASSERT_EQ(on.first.size(), off.first.size());
  for (size_t i = 0; i < on.first.size(); ++i)
    EXPECT_NEAR(on.first[i], off.first[i], 1e-6 * std::max(T(1), std::abs(on.first[i]))) << i;
  layer.set_input_grad(true);
}

template <typename T>
void every_layer_honours_input_grad_off() {
  Rng rng(4);
  Linear<T> lin(4, 3, true, rng);
  expect_input_grad_honoured<T>(lin, {5, 4});
  for (bool training : {true, false}) {
    BatchNorm1d<T> bn(4);
    bn.set_training(training);
    expect_input_grad_honoured<T>(bn, {5, 4});
    expect_input_grad_honoured<T>(bn, {5, 4, 3});
  }
  LayerNorm<T> ln({4});
  expect_input_grad_honoured<T>(ln, {5, 4});
  for (auto dim : {WeightNormDim::Rows, WeightNormDim::Whole}) {
    WeightNormLinear<T> wn(4, 3, true, dim, rng);
    expect_input_grad_honoured<T>(wn, {5, 4});
    if (wn.fuse_relu(true)) expect_input_grad_honoured<T>(wn, {5, 4});
  }
  ReLU<T> relu;
  expect_input_grad_honoured<T>(relu, {5, 4});
  relu.set_fused(true);
  expect_input_grad_honoured<T>(relu, {5, 4});
  Flatten<T> flat;
  expect_input_grad_honoured<T>(flat, {5, 2, 2});
  NotebookWeightNormLinear<T> nbwn(4, 3, true, rng);
  expect_input_grad_honoured<T>(nbwn, {5, 4});
  using Over = typename NotebookScalarNorm<T>::Over;
  for (Over over : {Over::Tensor, Over::Rows}) {
    NotebookScalarNorm<T> nb(over, rng);
    expect_input_grad_honoured<T>(nb, {5, 4});
  }
  // A Sequential switches off its leading layers up to the first with parameters.
  for (bool relu_first : {true, false}) {
    Sequential<T> net;
    if (relu_first) net.add(std::make_unique<ReLU<T>>());
    net.add(std::make_unique<Flatten<T>>());
    net.add(std::make_unique<Linear<T>>(4, 3, true, rng));
    net.add(std::make_unique<ReLU<T>>());
    net.add(std::make_unique<Linear<T>>(3, 2, true, rng));
    expect_input_grad_honoured<T>(net, {5, 2, 2});
  }
  Sequential<T> only_relus;
  only_relus.add(std::make_unique<ReLU<T>>());
  only_relus.add(std::make_unique<Flatten<T>>());
  expect_input_grad_honoured<T>(only_relus, {5, 4});
}

TEST(LayerApi, EveryLayerHonoursInputGradOffFloat) {
  every_layer_honours_input_grad_off<float>();
}
TEST(LayerApi, EveryLayerHonoursInputGradOffDouble) {
  every_layer_honours_input_grad_off<double>();
}

// ------------------------------------------------ constructors without an Rng

template <typename T>
void expect_zero_twin(Layer<T>& zero, Layer<T>& random) {
  SCOPED_TRACE(random.name());
  EXPECT_EQ(zero.name(), random.name());
  auto a = zero.state(), b = random.state();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].name, b[k].name);
    EXPECT_EQ(a[k].is_param(), b[k].is_param());
    ASSERT_TRUE(a[k].value);
    EXPECT_EQ(a[k].value->shape(), b[k].value->shape()) << a[k].name;
    for (int64_t i = 0; i < a[k].value->numel(); ++i)
      ASSERT_EQ((*a[k].value)[i], T(0)) << a[k].name;
    EXPECT_EQ(a[k].grad->shape(), b[k].grad->shape());
  }
}

TEST(LayerApi, ConstructorsWithoutRngGiveZeroParameters) {
  Rng rng(5);
  for (bool bias : {true, false}) {
    Linear<float> zero(6, 4, bias), random(6, 4, bias, rng);
    expect_zero_twin<float>(zero, random);
    NotebookWeightNormLinear<float> nb_zero(6, 4, bias), nb_random(6, 4, bias, rng);
    expect_zero_twin<float>(nb_zero, nb_random);
  }
  Linear<double> defaults(3, 2);  // bias on by default, as nn.Linear
  EXPECT_EQ(defaults.bias.numel(), 2);
  using Over = NotebookScalarNorm<float>::Over;
  for (Over over : {Over::Tensor, Over::Rows}) {
    NotebookScalarNorm<float> zero(over), random(over, rng);
    expect_zero_twin<float>(zero, random);
  }
  // The zero Linear computes y = 0, and takes set weights at once.
  Linear<float> lin(2, 1);
  const Tensor<float> x({3, 2}, 1.5f);
  for (float v : lin.forward(x).span()) EXPECT_EQ(v, 0.0f);
  lin.weight.fill(2.0f);
  lin.bias.fill(-1.0f);
  for (float v : lin.forward(x).span()) EXPECT_EQ(v, 5.0f);
  // The Rng constructors draw exactly what they drew before (weight, then bias).
  Rng r1(9), r2(9);
  Linear<float> drawn(3, 2, true, r1);
  std::vector<float> w(6), b(2);
  const double bound = 1.0 / std::sqrt(3.0);
  r2.fill_uniform(w.data(), 6, -bound, bound);
  r2.fill_uniform(b.data(), 2, -bound, bound);
  EXPECT_EQ(std::vector<float>(drawn.weight.span().begin(), drawn.weight.span().end()), w);
  EXPECT_EQ(std::vector<float>(drawn.bias.span().begin(), drawn.bias.span().end()), b);
}

}  // namespace
}  // namespace normlab
