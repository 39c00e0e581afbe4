// eps and momentum as PyTorch 2.15.0 takes them (docs/numerics.md): nn.BatchNorm1d
// and nn.LayerNorm accept any value at construction; F.batch_norm refuses eps <= 0
// when it normalizes with batch statistics (training, or no running statistics)
// and eps < 0 always; momentum may be any number. normlab refuses at construction
// only what can do nothing but make NaN: eps < 0 or NaN, a non-finite momentum.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "normlab/layers.hpp"
#include "normlab/optim.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"
#include "normlab/train.hpp"

namespace normlab {
namespace {

// Read at run time, not constexpr: GCC 12.2 (-O3 -march=native) built the
// constant list {NaN, NaN, 0, 0} of one of these tests as four NaNs (a
// broadcast store), so an expected value was wrong; a NaN the compiler cannot
// see cannot be folded that way.
const double kNaN = std::strtod("nan", nullptr);
constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename T>
Tensor<T> tensor(Shape shape, const std::vector<double>& v) {
  Tensor<T> t(std::move(shape));
  for (size_t i = 0; i < v.size(); ++i) t[static_cast<int64_t>(i)] = static_cast<T>(v[i]);
  return t;
}

void expect_values(const Tensor<float>& got, const std::vector<double>& want, const char* what) {
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size())) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = got[static_cast<int64_t>(i)], w = want[i];
    if (std::isnan(w))
      EXPECT_TRUE(std::isnan(g)) << what << "[" << i << "] = " << g;
    else if (std::isinf(w))
      EXPECT_EQ(g, w) << what << "[" << i << "]";
    else
      EXPECT_NEAR(g, w, 1e-5 * std::max(1.0, std::abs(w))) << what << "[" << i << "]";
  }
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// bn = nn.BatchNorm1d(2, momentum=m); x = [[1, 3], [1, 5], [1, 4]]
// y = bn(x); y.backward([[1, 2], [3, 4], [5, 7]])
//   y = [[0, -1.2247356], [0, 1.2247356], [0, 0]] (channel 0 is constant)
//   dx = [[-632.4555, -1.6329994], [0, -1.6329626], [632.4555, 3.2659614]]
//   weight.grad = [0, 2.4494712], bias.grad = [9, 13]
//   m = 2:    running_mean = [2, 8],     running_var = [-1, 1]
//   m = -0.5: running_mean = [-0.5, -2], running_var = [1.5, 1]
TEST(EpsMomentum, MomentumOutsideZeroOneIsPyTorchsFormula) {
  for (auto [m, rm, rv] :
       {std::tuple{2.0, std::vector<double>{2, 8}, std::vector<double>{-1, 1}},
        std::tuple{-0.5, std::vector<double>{-0.5, -2}, std::vector<double>{1.5, 1}}}) {
    SCOPED_TRACE(m);
    BatchNormOptions o;
    o.momentum = m;
    BatchNorm1d<float> bn(2, o);
    const Tensor<float> x = tensor<float>({3, 2}, {1, 3, 1, 5, 1, 4});
    expect_values(bn.forward(x), {0, -1.2247356176376343, 0, 1.2247356176376343, 0, 0}, "y");
    expect_values(bn.running_mean, rm, "running_mean");
    expect_values(bn.running_var, rv, "running_var");
    const Tensor<float> dy = tensor<float>({3, 2}, {1, 2, 3, 4, 5, 7});
    expect_values(bn.backward(dy),
                  {-632.4555053710938, -1.6329994201660156, 0, -1.6329625844955444,
                   632.4555053710938, 3.2659614086151123},
                  "dx");
    expect_values(bn.dweight, {0, 2.4494712352752686}, "dweight");
    expect_values(bn.dbias, {9, 13}, "dbias");
  }
}

// nn.BatchNorm1d(2, eps=0) constructs; its training forward raises "batch_norm eps
// must be positive during training, but got 0.0" (also on (0, 2); on (1, 2) the
// one-value check comes first), and so does eval without running statistics.
// In eval with running_mean [1, 1], running_var [0, 4] on x = [[1, 3], [2, 5]],
// backward(ones): y[:, 1] = [1, 2], x.grad = [[inf, 0.5], [inf, 0.5]],
// weight.grad = [inf, 3], bias.grad = [2, 2]; y[:, 0] is NaN in PyTorch (it folds
// the mean into the shift: 2 * inf - inf); normlab computes (x - mean) * inf:
// NaN where x = mean, inf elsewhere, non-finite either way.
TEST(EpsMomentum, BatchNormEpsZeroWorksInEvalAndIsRefusedInTrainingAsInPyTorch) {
  BatchNormOptions o;
  o.eps = 0;
  BatchNorm1d<float> bn(2, o);
  EXPECT_EQ(bn.name(), "BatchNorm1d(2, eps=0)");
  for (const Shape& s : {Shape{4, 2}, Shape{0, 2}}) {
    const Tensor<float> x(s, 1.0f);
    const std::string msg = error_of([&] { bn.forward(x); });
    EXPECT_NE(msg.find("BatchNorm1d(2, eps=0): eps must be positive"), std::string::npos) << msg;
    EXPECT_NE(msg.find("got 0"), std::string::npos) << msg;
  }
  const Tensor<float> one({1, 2}, 1.0f);
  EXPECT_NE(error_of([&] { bn.forward(one); }).find("more than 1 value per channel"),
            std::string::npos);
  EXPECT_EQ(bn.num_batches_tracked, 0);

  bn.set_training(false);
  bn.running_mean = tensor<float>({2}, {1, 1});
  bn.running_var = tensor<float>({2}, {0, 4});
  const Tensor<float> x = tensor<float>({2, 2}, {1, 3, 2, 5});
  const Tensor<float>& y = bn.forward(x);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_FALSE(std::isfinite(y[2]));
  EXPECT_EQ(y[1], 1.0f);
  EXPECT_EQ(y[3], 2.0f);
  const Tensor<float> ones({2, 2}, 1.0f);
  expect_values(bn.backward(ones), {kInf, 0.5, kInf, 0.5}, "dx");
  expect_values(bn.dweight, {kInf, 3}, "dweight");
  expect_values(bn.dbias, {2, 2}, "dbias");

  o.track_running_stats = false;
  BatchNorm1d<float> no_stats(2, o);
  no_stats.set_training(false);
  EXPECT_NE(error_of([&] { no_stats.forward(x); }).find("eps must be positive"), std::string::npos);
}

// ln = nn.LayerNorm(3, eps=0); x = [[2, 2, 2], [1, 2, 4]]
// y = ln(x); y.backward([[1, 2, 3], [1, -1, 0.5]]): the constant row is NaN
//   y[1] = [-1.0690448, -0.2672612, 1.3363062], dx[1] = [0.6299729, -0.9449593, 0.3149865]
//   weight.grad = [nan, nan, nan], bias.grad = [2, 1, 3.5]
TEST(EpsMomentum, LayerNormEpsZeroAsInPyTorch) {
  LayerNormOptions o;
  o.eps = 0;
  LayerNorm<float> ln({3}, o);
  const Tensor<float> x = tensor<float>({2, 3}, {2, 2, 2, 1, 2, 4});
  expect_values(ln.forward(x),
                {kNaN, kNaN, kNaN, -1.069044828414917, -0.26726117730140686, 1.3363062143325806},
                "y");
  const Tensor<float> dy = tensor<float>({2, 3}, {1, 2, 3, 1, -1, 0.5});
  expect_values(ln.backward(dy),
                {kNaN, kNaN, kNaN, 0.6299729347229004, -0.9449593424797058, 0.3149864673614502},
                "dx");
  expect_values(ln.dweight, {kNaN, kNaN, kNaN}, "dweight");
  expect_values(ln.dbias, {2, 1, 3.5}, "dbias");
}

TEST(EpsMomentum, ValuesThatCanOnlyMakeNaNAreRefusedNamingTheLayer) {
  auto bn_error = [](double eps, std::optional<double> momentum) {
    BatchNormOptions o;
    o.eps = eps;
    o.momentum = momentum;
    return error_of([&] { BatchNorm1d<float> bn(7, o); });
  };
  EXPECT_NE(bn_error(-1e-5, 0.1).find("BatchNorm1d(7): eps must be >= 0"), std::string::npos);
  EXPECT_NE(bn_error(kNaN, 0.1).find("got nan"), std::string::npos);
  EXPECT_NE(bn_error(1e-5, kNaN).find("BatchNorm1d(7): momentum must be a finite number"),
            std::string::npos);
  EXPECT_NE(bn_error(1e-5, kInf).find("got inf"), std::string::npos);
  EXPECT_EQ(bn_error(0, 1.5), "");
  EXPECT_EQ(bn_error(1e3, std::nullopt), "");
  auto ln_error = [](double eps) {
    LayerNormOptions o;
    o.eps = eps;
    return error_of([&] { LayerNorm<float> ln({4}, o); });
  };
  EXPECT_NE(ln_error(-1).find("LayerNorm(4): eps must be >= 0, got -1"), std::string::npos);
  EXPECT_NE(ln_error(kNaN).find("got nan"), std::string::npos);
  EXPECT_EQ(ln_error(0), "");
}

// With eps = 0 a constant row makes the loss NaN, as in PyTorch; the trainer's
// non-finite check says which layer's output it came from.
TEST(EpsMomentum, TrainerNamesTheLayerWhoseOutputWentNaN) {
  Rng rng(3);
  Sequential<float> model;
  model.add(std::make_unique<Linear<float>>(4, 4, true, rng));
  model.add(std::make_unique<ReLU<float>>());
  LayerNormOptions o;
  o.eps = 0;
  auto inner = std::make_unique<Sequential<float>>();
  inner->add(std::make_unique<LayerNorm<float>>(Shape{4}, o), "ln");
  inner->add(std::make_unique<Linear<float>>(4, 3, true, rng), "out");
  model.add(std::move(inner), "head");
  // A constant row after the ReLU: every input of the first Linear's weights
  // is zero in row 1, so that row of its output is the bias, and the bias is set equal.
  auto* first = dynamic_cast<Linear<float>*>(&model[0]);
  first->bias.fill(0.5f);
  auto opt = make_optimizer("sgd", {.lr = 0.1}, model.state());
  Trainer trainer(model, *opt);
  const std::vector<float> x = {0.1f, 0.2f, 0.3f, 0.4f, 0, 0, 0, 0};
  const std::vector<int32_t> labels = {0, 1};
  try {
    trainer.train_step(x.data(), labels.data(), 2, 4);
    FAIL() << "a NaN loss was accepted";
  } catch (const NonFiniteError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("the loss is "), std::string::npos) << msg;
    EXPECT_NE(msg.find("; the output of layer head.ln (LayerNorm(4, eps=0)) holds "),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("nan at (1, 0)"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace normlab
