// groupnorm / instancenorm1d / unflatten in the model-spec language (sizes
// inferred from (N, C), (N, C, L) and (N, C, H, W) inputs, options, errors
// naming the item and numbers), their state_dict keys, and a CLI training run
// on MNIST of a GroupNorm model and an InstanceNorm1d model (the real
// executable, a fraction of an epoch each; skipped without MNIST).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_train.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/model_spec.hpp"
#include "temp_dir.hpp"

namespace normlab {
namespace {

std::string plan_error(const std::string& spec, Shape input = {2, 784}) {
  try {
    plan_model(spec, input);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> keys(Sequential<float>& m) {
  std::vector<std::string> out;
  for (const auto& e : m.state()) out.push_back(e.name);
  return out;
}

TEST(GroupNormSpec, InfersChannelsFromDimOneOfAnyRank) {
  const auto a = plan_model("linear(64), gn(8)", {2, 784});
  EXPECT_EQ(a[1].kind, LayerKind::GroupNorm);
  EXPECT_EQ(a[1].in, 64);
  EXPECT_EQ(a[1].groups, 8);
  EXPECT_TRUE(a[1].gn.affine);
  EXPECT_EQ(a[1].gn.eps, 1e-5);
  const auto b = plan_model("groupnorm(4, 28, eps=1e-3, affine=false)", {2, 28, 28});
  EXPECT_EQ(b[0].in, 28);
  EXPECT_FALSE(b[0].gn.affine);
  EXPECT_EQ(b[0].gn.eps, 1e-3);
  const auto c = plan_model("gn(3)", {2, 6, 4, 5});  // (N, C, H, W)
  EXPECT_EQ(c[0].out_shape, (Shape{2, 6, 4, 5}));
  Rng rng(1);
  auto m = build_model<float>("flatten, linear(12), gn(3), relu, linear(10)", {2, 784}, rng);
  EXPECT_EQ(keys(*m), (std::vector<std::string>{"1.weight", "1.bias", "2.weight", "2.bias",
                                                "4.weight", "4.bias"}));
  Tensor<float> x({2, 784}, 0.25f);
  x[3] = 2;
  EXPECT_EQ(m->forward(x).shape(), (Shape{2, 10}));
}

TEST(GroupNormSpec, InstanceNormDefaultsAndOptionsArePyTorchs) {
  const auto a = plan_model("in", {2, 28, 28});
  EXPECT_EQ(a[0].kind, LayerKind::InstanceNorm1d);
  EXPECT_EQ(a[0].in, 28);
  EXPECT_FALSE(a[0].inorm.affine);
  EXPECT_FALSE(a[0].inorm.track_running_stats);
  EXPECT_EQ(a[0].inorm.momentum, 0.1);
  const auto b = plan_model(
      "instancenorm1d(28, eps=1e-3, momentum=none, affine=true, track_running_stats=true)",
      {2, 28, 28});
  EXPECT_TRUE(b[0].inorm.affine);
  EXPECT_TRUE(b[0].inorm.track_running_stats);
  EXPECT_FALSE(b[0].inorm.momentum.has_value());
  EXPECT_EQ(b[0].inorm.eps, 1e-3);
  Rng rng(2);
  auto m = build_model<float>(
      "unflatten(28, 28), in(affine=true, track_running_stats=true), flatten, linear(10)", {2, 784},
      rng);
  EXPECT_EQ(keys(*m),
            (std::vector<std::string>{"1.weight", "1.bias", "1.running_mean", "1.running_var",
                                      "1.num_batches_tracked", "3.weight", "3.bias"}));
  auto plain = build_model<float>("in, flatten, linear(10)", {2, 28, 28}, rng);
  EXPECT_EQ(keys(*plain), (std::vector<std::string>{"2.weight", "2.bias"}));
}

TEST(GroupNormSpec, ErrorsNameTheItemAndTheNumbers) {
  std::string e = plan_error("linear(10), gn(3)");
  EXPECT_NE(e.find("gn(3) needs channels divisible by its 3 groups (10 % 3 = 1)"),
            std::string::npos)
      << e;
  e = plan_error("linear(10), groupnorm(2, 12)");
  EXPECT_NE(e.find("groupnorm(2, 12) expects 12 channels"), std::string::npos) << e;
  EXPECT_NE(e.find("(2, 10)"), std::string::npos) << e;
  e = plan_error("gn");
  EXPECT_NE(e.find("groupnorm needs its number of groups"), std::string::npos) << e;
  e = plan_error("gn(2, 4, 6)");
  EXPECT_NE(e.find("too many sizes for groupnorm"), std::string::npos) << e;
  e = plan_error("gn(2, momentum=0.1)");
  EXPECT_NE(e.find("unknown option 'momentum' for groupnorm"), std::string::npos) << e;
  e = plan_error("linear(10), in");
  EXPECT_NE(e.find("in needs a 3-D (N, C, L) input"), std::string::npos) << e;
  EXPECT_NE(e.find("unflatten(C, L)"), std::string::npos) << e;
  e = plan_error("in", {2, 28, 1});
  EXPECT_NE(e.find("in needs more than 1 value per channel (L > 1)"), std::string::npos) << e;
  e = plan_error("in(27)", {2, 28, 28});
  EXPECT_NE(e.find("in(27) expects 27 channels"), std::string::npos) << e;
  e = plan_error("in(eps=-1)", {2, 28, 28});
  EXPECT_NE(e.find("eps must be a finite number >= 0"), std::string::npos) << e;
  e = plan_error("unflatten(28, 27)");
  EXPECT_NE(e.find("unflatten(28, 27) splits dim 1 into (28, 27) = 756 features"),
            std::string::npos)
      << e;
}

// The real executable trains each model on 6400 MNIST samples (50 steps) and
// reaches far above chance (10 %) on 1000 test samples.
class GroupNormTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    data_ = testing::mnist_dir(&why);
    if (data_.empty()) GTEST_SKIP() << why;
  }

  double train(const std::string& spec) {
    return testing::train_and_eval(dir_, "run" + std::to_string(runs_++), data_, spec,
                                   {"--threads", "2"})
        .test_accuracy();
  }

  std::string data_;
  testing::TempDir dir_;
  int runs_ = 0;
};

TEST_F(GroupNormTraining, GroupNormModelLearnsMnist) {
  EXPECT_GT(train("flatten, linear(128), gn(8), relu, linear(10)"), 0.75);
}

TEST_F(GroupNormTraining, InstanceNormModelLearnsMnist) {
  EXPECT_GT(train("unflatten(28, 28), in(28, affine=true, track_running_stats=true), flatten, "
                  "linear(128), relu, linear(10)"),
            0.75);
}

}  // namespace
}  // namespace normlab
