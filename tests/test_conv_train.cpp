// The cnn preset trains on MNIST from the command line (issue 11): a fraction
// of an epoch per norm reaches accuracy far above chance, and the saved model
// evaluates the same after loading. Skipped with a message when
// ../shared/data/mnist is missing.
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

class CnnTrain : public ::testing::TestWithParam<const char*> {};

TEST_P(CnnTrain, LearnsMnistFromTheCommandLine) {
  std::string why;
  const std::string mnist = mnist_dir(&why);
  if (mnist.empty()) GTEST_SKIP() << why;
  TempDir dir;
  const CliTraining r = train_and_eval(dir, "run", mnist, GetParam(),
                                       {"--batch-size", "64", "--seed", "1"}, "6400", "1000", 120);
  ASSERT_FALSE(r.last_epoch.is_null());
  EXPECT_EQ(r.last_epoch.at("steps").get<int>(), 100);
  EXPECT_GT(r.test_accuracy(), 0.85) << GetParam();
  std::printf("%s: %.2f s, test accuracy %.4f after 100 steps\n", GetParam(), r.train.seconds,
              r.test_accuracy());
  // The saved model loads back and scores alike on all 10000 test images.
  EXPECT_GT(r.eval_accuracy, 80.0) << r.eval.out;
}

INSTANTIATE_TEST_SUITE_P(Cli, CnnTrain,
                         ::testing::Values("cnn", "cnn:norm=bn", "cnn:norm=gn", "cnn:norm=in",
                                           "cnn:norm=ln"));

}  // namespace
