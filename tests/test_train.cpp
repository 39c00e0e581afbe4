#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "normlab/layers.hpp"
#include "normlab/loss.hpp"
#include "normlab/optim.hpp"
#include "normlab/sequential.hpp"
#include "normlab/train.hpp"

using namespace normlab;

namespace {

constexpr int64_t kD = 20, kClasses = 3;

// Three Gaussian blobs in 20 dimensions: class centres ~N(0, 1) per
// coordinate, points = centre + N(0, 1) noise; linearly separable but for a few points.
struct Blobs {
  std::vector<float> x;  // (N, 20)
  std::vector<int32_t> y;
  int64_t n = 0;
};

Blobs make_blobs(int64_t n, uint64_t seed) {
  Rng centres_rng(7);  // the same centres for train and test
  std::vector<float> centres(kClasses * kD);
  centres_rng.fill_normal(centres.data(), kClasses * kD);
  Rng rng(seed);
  Blobs b;
  b.n = n;
  b.x.resize(n * kD);
  b.y.resize(n);
  rng.fill_normal(b.x.data(), n * kD);
  for (int64_t i = 0; i < n; ++i) {
    b.y[i] = static_cast<int32_t>(rng.below(kClasses));
    for (int64_t d = 0; d < kD; ++d) b.x[i * kD + d] += centres[b.y[i] * kD + d];
  }
  return b;
}

std::unique_ptr<Sequential<float>> make_mlp(uint64_t seed) {
  Rng rng(seed);
  auto m = std::make_unique<Sequential<float>>();
  m->add(std::make_unique<Linear<float>>(kD, 32, true, rng));
  m->add(std::make_unique<ReLU<float>>());
  m->add(std::make_unique<BatchNorm1d<float>>(32));
  m->add(std::make_unique<Linear<float>>(32, kClasses, true, rng));
  return m;
}

std::vector<std::vector<float>> snapshot(Layer<float>& model) {
  std::vector<std::vector<float>> s;
  for (auto& e : model.state())
    if (e.is_param()) s.emplace_back(e.value->data(), e.value->data() + e.value->numel());
  return s;
}

}  // namespace

TEST(Trainer, SmallMlpLearnsSeparableBlobs) {
  const Blobs train = make_blobs(640, 1), test = make_blobs(300, 2);
  auto model = make_mlp(3);
  auto opt = make_optimizer("adam", {}, model->state());
  Trainer trainer(*model, *opt);
  EXPECT_FALSE((*model)[0].input_grad());

  const EvalResult before = trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, 128);
  const int64_t B = 32, steps = 300;
  std::vector<double> losses;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t start = (s * B) % train.n;
    const StepResult r = trainer.train_step(&train.x[start * kD], &train.y[start], B, kD);
    EXPECT_EQ(r.step, s + 1);
    EXPECT_GE(r.correct, 0);
    EXPECT_LE(r.correct, B);
    losses.push_back(r.loss);
  }
  EXPECT_EQ(opt->steps(), steps);
  double first = 0, last = 0;
  for (int i = 0; i < 20; ++i) first += losses[i] / 20, last += losses[steps - 1 - i] / 20;
  EXPECT_LT(last, 0.3 * first) << "first 20 steps " << first << ", last 20 " << last;

  const EvalResult after = trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, 128);
  EXPECT_EQ(after.count, test.n);
  EXPECT_GT(after.accuracy(), 0.9) << "before training " << before.accuracy();
  EXPECT_LT(after.loss, 0.5 * before.loss);
  EXPECT_TRUE(model->training()) << "evaluate must restore the training mode";
}

// Evaluation in eval mode, independent of the batch size (BatchNorm uses its
// running statistics), and leaving those statistics alone.
TEST(Trainer, EvaluateIsBatchSizeIndependent) {
  const Blobs train = make_blobs(256, 1), test = make_blobs(203, 2);
  auto model = make_mlp(4);
  auto opt = make_optimizer("sgd", {.lr = 0.1, .momentum = 0.9}, model->state());
  Trainer trainer(*model, *opt);
  for (int64_t s = 0; s < 8; ++s)
    trainer.train_step(&train.x[s * 32 * kD], &train.y[s * 32], 32, kD);
  auto& bn = static_cast<BatchNorm1d<float>&>((*model)[2]);
  const std::vector<float> running(bn.running_mean.data(), bn.running_mean.data() + 32);
  const EvalResult whole = trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, test.n);
  const EvalResult pieces = trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, 64);
  const EvalResult ones = trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, 1);
  EXPECT_EQ(whole.correct, pieces.correct);
  EXPECT_EQ(whole.correct, ones.correct);
  EXPECT_NEAR(whole.loss, pieces.loss, 1e-6 * whole.loss);
  EXPECT_NEAR(whole.loss, ones.loss, 1e-6 * whole.loss);
  EXPECT_EQ(std::vector<float>(bn.running_mean.data(), bn.running_mean.data() + 32), running);
  EXPECT_EQ(bn.num_batches_tracked, 8);
  EXPECT_THROW(trainer.evaluate(test.x.data(), test.y.data(), test.n, kD, 0), Error);
}

TEST(Trainer, NanInputIsCaughtWithTheStepBeforeAnyUpdate) {
  Blobs data = make_blobs(64, 1);
  auto model = make_mlp(5);
  auto opt = make_optimizer("adam", {}, model->state());
  Trainer trainer(*model, *opt);
  for (int s = 0; s < 3; ++s) trainer.train_step(data.x.data(), data.y.data(), 64, kD);
  const auto weights = snapshot(*model);
  data.x[2 * kD + 5] = std::numeric_limits<float>::quiet_NaN();
  try {
    trainer.train_step(data.x.data(), data.y.data(), 64, kD);
    FAIL() << "NaN input accepted";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(e.step, 4);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("training step 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 2, column 5"), std::string::npos) << msg;
  }
  EXPECT_EQ(snapshot(*model), weights);
  EXPECT_EQ(opt->steps(), 3);
  data.x[2 * kD + 5] = 0.f;  // training goes on from where it was
  trainer.train_step(data.x.data(), data.y.data(), 64, kD);
  EXPECT_EQ(opt->steps(), 4);
  EXPECT_NE(snapshot(*model), weights);
}

// Finite inputs so large that the first Linear overflows: the loss is NaN.
TEST(Trainer, NonFiniteLossIsCaughtBeforeAnyUpdate) {
  Blobs data = make_blobs(16, 1);
  auto model = make_mlp(6);
  auto opt = make_optimizer("sgd", {.lr = 0.1}, model->state());
  Trainer trainer(*model, *opt);
  const auto weights = snapshot(*model);
  for (auto& v : data.x) v = v > 0 ? 3e38f : -3e38f;
  try {
    trainer.train_step(data.x.data(), data.y.data(), 16, kD);
    FAIL() << "overflowing step accepted";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(e.step, 1);
    EXPECT_NE(std::string(e.what()).find("loss"), std::string::npos) << e.what();
  }
  EXPECT_EQ(snapshot(*model), weights);
  EXPECT_EQ(opt->steps(), 0);
}

namespace {
// Passes x through and reports an infinite gradient for its one parameter.
class InfiniteGradient : public Layer<float> {
 public:
  InfiniteGradient() : weight({1}, 1.f), dweight({1}, 0.f) {}
  std::string name() const override { return "InfiniteGradient"; }
  Shape output_shape(const Shape& in) const override { return in; }
  const Tensor<float>& forward_impl(const Tensor<float>& x) override { return x; }
  const Tensor<float>& backward(const Tensor<float>& dy) override {
    dweight[0] = std::numeric_limits<float>::infinity();
    return dy;
  }
  std::vector<StateEntry<float>> state() override { return {{"weight", &weight, &dweight}}; }
  Tensor<float> weight, dweight;
};
}  // namespace

TEST(Trainer, NonFiniteGradientIsCaughtNamingTheParameter) {
  Blobs data = make_blobs(16, 1);
  Rng rng(1);
  Sequential<float> model;
  model.add(std::make_unique<Linear<float>>(kD, kClasses, true, rng));
  model.add(std::make_unique<InfiniteGradient>());
  auto opt = make_optimizer("adam", {}, model.state());
  Trainer trainer(model, *opt);
  const auto weights = snapshot(model);
  try {
    trainer.train_step(data.x.data(), data.y.data(), 16, kD);
    FAIL() << "infinite gradient accepted";
  } catch (const NonFiniteError& e) {
    EXPECT_EQ(e.step, 1);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("1.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("inf"), std::string::npos) << msg;
  }
  EXPECT_EQ(snapshot(model), weights);
}

TEST(Trainer, BadLabelsAndShapesAreErrors) {
  Blobs data = make_blobs(8, 1);
  auto model = make_mlp(7);
  auto opt = make_optimizer("adam", {}, model->state());
  Trainer trainer(*model, *opt);
  const auto weights = snapshot(*model);
  data.y[3] = 3;
  EXPECT_THROW(trainer.train_step(data.x.data(), data.y.data(), 8, kD), Error);
  EXPECT_EQ(snapshot(*model), weights);
  data.y[3] = 0;
  EXPECT_THROW(trainer.train_step(data.x.data(), data.y.data(), 4, 5), Error);  // 5 features
  EXPECT_THROW(trainer.train_step(data.x.data(), data.y.data(), 0, kD), Error);
}

TEST(Trainer, FirstNonFinite) {
  std::vector<float> v(10000, 1.f);
  EXPECT_EQ(first_non_finite(v.data(), 10000), -1);
  v[9000] = -std::numeric_limits<float>::infinity();
  v[9500] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(first_non_finite(v.data(), 10000), 9000);
  EXPECT_EQ(first_non_finite(v.data(), 9000), -1);
  v[1] = std::numeric_limits<float>::max();  // finite
  EXPECT_EQ(first_non_finite(v.data(), 9000), -1);
}
