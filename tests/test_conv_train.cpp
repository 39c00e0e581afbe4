// The cnn preset trains on MNIST from the command line (issue 11): a fraction
// of an epoch per norm reaches accuracy far above chance, and the saved model
// evaluates the same after loading. Skipped with a message when
// ../shared/data/mnist is missing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli_process.hpp"
#include "temp_dir.hpp"

namespace {

using normlab::testing::ProcessResult;
using normlab::testing::run_normlab;
using normlab::testing::TempDir;

const std::string kMnist = std::string(NORMLAB_SOURCE_DIR) + "/../shared/data/mnist";

class CnnTrain : public ::testing::TestWithParam<const char*> {};

TEST_P(CnnTrain, LearnsMnistFromTheCommandLine) {
  if (!std::filesystem::exists(kMnist + "/train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(kMnist + "/train-images-idx3-ubyte"))
    GTEST_SKIP() << "MNIST not found at " << kMnist << " (CI has it beside the clone)";
  TempDir dir;
  const ProcessResult r =
      run_normlab({"train", "--data", kMnist, "--model", GetParam(), "--epochs", "1",
                   "--batch-size", "64", "--limit-train", "6400", "--limit-test", "1000", "--seed",
                   "1", "--out", dir.file("run"), "--progress", "never"},
                  dir.path(), dir.path(), 120);
  ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
  std::ifstream in(dir.file("run/metrics.jsonl"));
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  ASSERT_FALSE(last.empty()) << "no metrics";
  const auto j = nlohmann::json::parse(last);
  EXPECT_EQ(j.at("steps").get<int>(), 100);
  const double acc = j.at("test_accuracy").get<double>();
  EXPECT_GT(acc, 0.85) << GetParam();
  std::printf("%s: %.2f s, test accuracy %.4f after 100 steps\n", GetParam(), r.seconds, acc);
  // The saved model loads back and scores alike on all 10000 test images.
  const ProcessResult e = run_normlab({"eval", dir.file("run/model.safetensors"), "--data", kMnist},
                                      dir.path(), dir.path(), 60);
  ASSERT_TRUE(e.exited && e.code == 0) << e.status() << "\n" << e.err;
  const size_t at = e.out.find("accuracy ");
  ASSERT_NE(at, std::string::npos) << e.out;
  EXPECT_GT(std::stod(e.out.substr(at + 9)), 80.0) << e.out;
}

INSTANTIATE_TEST_SUITE_P(Cli, CnnTrain,
                         ::testing::Values("cnn", "cnn:norm=bn", "cnn:norm=gn", "cnn:norm=in",
                                           "cnn:norm=ln"));

}  // namespace
