// The optimizers' flat blocks (optim.hpp): every parameter and gradient is
// bound into one 64-byte-aligned block each, and step() is one pass over it.
// The pass must compute what the per-tensor passes computed (the reference
// here: one optimizer per parameter), never touch the padding, and leave no
// dangling memory whichever of model and optimizer goes first.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>

#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/optim.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"
#include "normlab/train.hpp"

using namespace normlab;

namespace {

// Parameters with gradients, standing in for a model's state().
struct Params {
  std::map<std::string, Tensor<float>> value, grad;
  std::vector<std::string> order;

  void add(const std::string& name, const Shape& shape, Rng& rng) {
    order.push_back(name);
    Tensor<float> v(shape);
    rng.fill_uniform(v.data(), v.numel(), -1, 1);
    value[name] = std::move(v);
    grad[name] = Tensor<float>(shape);
  }
  std::vector<StateEntry<float>> state() {
    std::vector<StateEntry<float>> s;
    for (const auto& n : order) s.push_back({n, &value[n], &grad[n]});
    return s;
  }
  std::vector<StateEntry<float>> state_of(const std::string& n) {
    return {{n, &value[n], &grad[n]}};
  }
};

// Many small parameters of awkward sizes (none a multiple of 16 but one), a
// scalar, an empty one, and one big enough for the parallel pass.
Params awkward_params(uint64_t seed) {
  Params m;
  Rng rng(seed);
  const Shape shapes[] = {{3}, {17},    {5, 7},  {},  {0},    {16},
                          {1}, {33, 3}, {50000}, {2}, {9, 9}, {31}};
  const char* names[] = {"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11"};
  for (int k = 0; k < 12; ++k) m.add(names[k], shapes[k], rng);
  return m;
}

void random_grads(Params& m, Rng& rng) {
  for (const auto& n : m.order) rng.fill_normal(m.grad[n].data(), m.grad[n].numel());
}

const std::vector<std::pair<std::string, OptimizerOptions>>& configs() {
  static const std::vector<std::pair<std::string, OptimizerOptions>> c{
      {"adam", {}},
      {"adam", {.lr = 1e-2, .weight_decay = 0.1, .amsgrad = true}},
      {"adam", {.eps = 0.0}},
      {"adamw", {.lr = 1e-2, .amsgrad = true}},
      {"sgd", {.lr = 0.1}},
      {"sgd", {.lr = 0.1, .weight_decay = 1e-3, .momentum = 0.9, .dampening = 0.1}},
      {"sgd", {.lr = 0.1, .weight_decay = 1e-2, .momentum = 0.9, .nesterov = true}},
  };
  return c;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, sizeof a) == 0;  // NaN == NaN here (eps = 0 makes some)
}

}  // namespace

TEST(OptimizerFlat, ParametersAreBoundOnAlignedLinesInOrder) {
  Params m = awkward_params(1);
  const Params before = m;
  auto opt = make_optimizer("adam", {}, m.state());
  const auto& params = opt->params();
  ASSERT_EQ(params.size(), m.order.size());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(opt->values().data()) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(opt->grads().data()) % 64, 0u);
  int64_t end = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    SCOPED_TRACE(p.name);
    EXPECT_EQ(p.name, m.order[i]);
    EXPECT_EQ(p.offset % Optimizer::kFlatAlign, 0);
    EXPECT_GE(p.offset, end);
    EXPECT_LT(p.offset, end + Optimizer::kFlatAlign);
    end = p.offset + p.numel;
    EXPECT_TRUE(m.value[p.name].bound());
    EXPECT_TRUE(m.grad[p.name].bound());
    EXPECT_EQ(m.value[p.name].data(), opt->values().data() + p.offset);
    EXPECT_EQ(m.grad[p.name].data(), opt->grads().data() + p.offset);
    EXPECT_EQ(m.value[p.name].shape(), before.value.at(p.name).shape());
    for (int64_t j = 0; j < p.numel; ++j)  // the values moved along
      ASSERT_EQ(m.value[p.name][j], before.value.at(p.name)[j]);
    if (p.numel > 0) {
      EXPECT_EQ(opt->locate(p.offset + p.numel - 1), std::make_pair(i, p.numel - 1));
    }
  }
  EXPECT_EQ(static_cast<int64_t>(opt->values().size()),
            (end + Optimizer::kFlatAlign - 1) / Optimizer::kFlatAlign * Optimizer::kFlatAlign);
  // Padding after p0 (3 elements): attributed to p0, past its end.
  EXPECT_EQ(opt->locate(5), std::make_pair(size_t{0}, int64_t{5}));
}

// One pass over all parameters computes what a pass per parameter computes:
// every parameter under its own optimizer (its own blocks, the old per-tensor
// loop in effect) must end bit for bit where the shared optimizer leaves it,
// state included.
TEST(OptimizerFlat, OnePassEqualsAPassPerParameter) {
  for (const auto& config : configs()) {
    SCOPED_TRACE(config.first);
    Params all = awkward_params(2), each = awkward_params(2);
    auto opt = make_optimizer(config.first, config.second, all.state());
    std::vector<std::unique_ptr<Optimizer>> singles;
    for (const auto& n : each.order)
      singles.push_back(make_optimizer(config.first, config.second, each.state_of(n)));
    Rng g(3);
    for (int step = 0; step < 3; ++step) {
      random_grads(all, g);
      for (const auto& n : all.order) each.grad[n] = all.grad[n];
      if (step == 1) all.grad["p2"].fill(0.f), each.grad["p2"].fill(0.f);  // eps = 0: 0/0
      opt->step();
      for (auto& s : singles) s->step();
    }
    for (const auto& n : all.order)
      for (int64_t j = 0; j < all.value[n].numel(); ++j)
        ASSERT_TRUE(same_bits(all.value[n][j], each.value[n][j]))
            << n << "[" << j << "]: " << all.value[n][j] << " vs " << each.value[n][j];
    // The state: "step", then each buffer of each parameter in parameter order.
    const auto state = opt->state();
    size_t k = 1;
    for (auto& s : singles) {
      const auto single = s->state();
      for (size_t b = 1; b < single.size(); ++b, ++k) {
        ASSERT_LT(k, state.size());
        EXPECT_EQ(state[k].name, single[b].name);
        for (int64_t j = 0; j < single[b].value->numel(); ++j)
          ASSERT_TRUE(same_bits((*state[k].value)[j], (*single[b].value)[j])) << state[k].name;
      }
    }
    EXPECT_EQ(k, state.size());
  }
}

// The padding between parameters is never read or written (with eps = 0
// Adam would make 0/0 of zeros): step() and zero_grad() leave it alone.
TEST(OptimizerFlat, StepNeverTouchesThePadding) {
  for (const auto& config : configs()) {
    SCOPED_TRACE(config.first);
    Params m = awkward_params(4);
    auto opt = make_optimizer(config.first, config.second, m.state());
    std::vector<bool> padding(opt->values().size(), true);
    for (const auto& p : opt->params())
      for (int64_t j = 0; j < p.numel; ++j) padding[p.offset + j] = false;
    for (size_t i = 0; i < padding.size(); ++i)
      if (padding[i]) opt->values()[i] = 123.f, opt->grads()[i] = -7.f;
    Rng g(5);
    for (int step = 0; step < 2; ++step) {
      random_grads(m, g);
      opt->step();
    }
    opt->zero_grad();
    for (size_t i = 0; i < padding.size(); ++i) {
      ASSERT_EQ(opt->values()[i] == 123.f, padding[i]) << "flat position " << i;
      ASSERT_EQ(opt->grads()[i], padding[i] ? -7.f : 0.f) << "flat position " << i;
    }
  }
}

TEST(OptimizerFlat, ModelOutlivesOptimizer) {
  Params m = awkward_params(6);
  {
    auto opt = make_optimizer("adam", {.amsgrad = true}, m.state());
    Rng g(1);
    random_grads(m, g);
    opt->step();
  }
  // The blocks live on in the model's tensors: read, write, resize in place.
  const Tensor<float> snapshot = m.value["p8"];
  m.value["p8"][49999] += 1.f;
  EXPECT_EQ(m.value["p8"][49999], snapshot[49999] + 1.f);
  m.grad["p7"].resize({3, 33});
  m.grad["p7"].fill(2.f);
  m.grad["p7"].resize({33, 3});
  // A new optimizer takes the model over and trains it.
  auto again = make_optimizer("sgd", {.lr = 0.5}, m.state());
  EXPECT_EQ(m.value["p8"].data(), again->values().data() + again->params()[8].offset);
  m.grad["p8"].fill(1.f);
  again->step();
  EXPECT_EQ(m.value["p8"][0], snapshot[0] - 0.5f);
}

TEST(OptimizerFlat, OptimizerOutlivesModel) {
  auto m = std::make_unique<Params>(awkward_params(7));
  auto opt = make_optimizer("adamw", {}, m->state());
  Rng g(1);
  random_grads(*m, g);
  opt->step();
  const auto state = opt->state();
  const float moment = (*state[1].value)[0];
  m.reset();
  // Its own blocks and state stay valid; step() refuses instead of training nothing.
  opt->zero_grad();
  EXPECT_EQ((*state[1].value)[0], moment);
  EXPECT_EQ(opt->grads()[0], 0.f);
  try {
    opt->step();
    ADD_FAILURE() << "stepped an optimizer whose model is gone";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no longer use this optimizer's buffers"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(opt->steps(), 1);
}

TEST(OptimizerFlat, ASecondOptimizerTakesTheModelOver) {
  Params m = awkward_params(8);
  auto first = make_optimizer("adam", {}, m.state());
  auto second = make_optimizer("adam", {}, m.state());
  Rng g(1);
  random_grads(m, g);
  const float before = m.value["p0"][0];
  second->step();
  EXPECT_NE(m.value["p0"][0], before);
  EXPECT_THROW(first->step(), Error);
}

TEST(OptimizerFlat, TiedParametersAreRefused) {
  Params m = awkward_params(9);
  auto entries = m.state();
  entries.push_back({"tied", &m.value["p1"], &m.grad["p1"]});
  try {
    make_optimizer("sgd", {.lr = 0.1}, entries);
    ADD_FAILURE() << "tied parameters accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tied"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(m.value["p1"].bound());  // refused before anything was bound
}

TEST(OptimizerFlat, BoundParametersRefuseToChangeSize) {
  Params m = awkward_params(10);
  auto opt = make_optimizer("adam", {}, m.state());
  EXPECT_THROW(m.value["p1"].resize({18}), Error);
  EXPECT_THROW(m.grad["p1"] = Tensor<float>({4}), Error);
  EXPECT_THROW(*opt->state()[1].value = Tensor<float>({4}), Error);  // exp_avg.p0 is (3)
  *opt->state()[1].value = Tensor<float>({3}, 0.25f);                // same count: copied in
  EXPECT_EQ((*opt->state()[1].value)[2], 0.25f);
}

namespace {
// Passes x through; its backward puts a NaN into its second parameter's
// gradient at `bad` (and an infinity later on, which must not be the one named).
class BadGradient : public Layer<float> {
 public:
  explicit BadGradient(int64_t bad) : bad_(bad) {}
  std::string name() const override { return "BadGradient"; }
  Shape output_shape(const Shape& in) const override { return in; }
  const Tensor<float>& forward_impl(const Tensor<float>& x) override { return x; }
  const Tensor<float>& backward(const Tensor<float>& dy) override {
    dbias[bad_] = std::numeric_limits<float>::quiet_NaN();
    dscale[0] = std::numeric_limits<float>::infinity();
    return dy;
  }
  std::vector<StateEntry<float>> state() override {
    return {{"weight", &weight, &dweight}, {"bias", &bias, &dbias}, {"scale", &scale, &dscale}};
  }
  Tensor<float> weight{{40000}}, dweight{{40000}}, bias{{37}}, dbias{{37}}, scale{{1}}, dscale{{1}};

 private:
  int64_t bad_;
};
}  // namespace

// The finiteness check scans the flat gradient block in one parallel pass;
// the report must still name the parameter and the index within it.
TEST(OptimizerFlat, TrainerNamesTheParameterAndIndexOfABadGradient) {
  for (int64_t bad : {0, 20, 36}) {
    Rng rng(1);
    Sequential<float> model;
    model.add(std::make_unique<Linear<float>>(5, 3, true, rng));
    model.add(std::make_unique<BadGradient>(bad));
    auto opt = make_optimizer("adam", {}, model.state());
    Trainer trainer(model, *opt);
    const std::vector<float> x(4 * 5, 0.5f);
    const std::vector<int32_t> y = {0, 1, 2, 0};
    try {
      trainer.train_step(x.data(), y.data(), 4, 5);
      ADD_FAILURE() << "NaN gradient accepted";
    } catch (const NonFiniteError& e) {
      EXPECT_EQ(std::string(e.what()),
                "training step 1: the gradient of 1.bias holds nan at flat index " +
                    std::to_string(bad) + "; the weights were not updated");
    }
  }
}
