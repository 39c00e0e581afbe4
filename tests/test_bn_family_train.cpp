// `normlab train` on MNIST with each BatchNorm variant in the model (one epoch
// of 100 steps on 6400 samples): the run ends normally and the test accuracy
// is far above chance (measured 0.86-0.88; chance is 0.1). Skipped with a
// message when ../shared/data/mnist is missing. The saved model.safetensors
// then evaluates (`normlab eval`) on the 10000 test images above 80 %.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_train.hpp"
#include "temp_dir.hpp"

namespace {

using normlab::testing::CliTraining;
using normlab::testing::mnist_dir;
using normlab::testing::TempDir;
using normlab::testing::train_and_eval;

class BnFamilyTrain : public ::testing::TestWithParam<const char*> {};

TEST_P(BnFamilyTrain, LearnsMnistFromTheCommandLine) {
  std::string why;
  const std::string mnist = mnist_dir(&why);
  if (mnist.empty()) GTEST_SKIP() << why;
  TempDir dir;
  const CliTraining r = train_and_eval(dir, "run", mnist, GetParam(),
                                       {"--batch-size", "64", "--seed", "1"}, "6400", "2000");
  ASSERT_FALSE(r.last_epoch.is_null());
  EXPECT_EQ(r.last_epoch.at("steps").get<int>(), 100);
  EXPECT_GT(r.test_accuracy(), 0.8) << GetParam();
  // The saved model evaluates in eval mode with the running statistics.
  EXPECT_GT(r.eval_accuracy, 80.0) << r.eval.out;
}

INSTANTIATE_TEST_SUITE_P(
    Cli, BnFamilyTrain,
    ::testing::Values("flatten, linear(128), meanonlybn, relu, linear(10)",
                      "flatten, linear(128), batchrenorm(rmax=2, dmax=2, warmup=20, rmax_ramp=30, "
                      "dmax_ramp=30), relu, linear(10)",
                      "flatten, linear(128), ghostbatchnorm(virtual_batch_size=16), relu, "
                      "linear(10)"),
    [](const ::testing::TestParamInfo<const char*>& info) {
      return std::string(info.index == 0 ? "MeanOnly" : info.index == 1 ? "Renorm" : "Ghost");
    });

}  // namespace
