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

#include "cli_process.hpp"
#include "temp_dir.hpp"

namespace {

using normlab::testing::ProcessResult;
using normlab::testing::run_normlab;
using normlab::testing::TempDir;

const std::string kMnist = std::string(NORMLAB_SOURCE_DIR) + "/../shared/data/mnist";

class BnFamilyTrain : public ::testing::TestWithParam<const char*> {};

TEST_P(BnFamilyTrain, LearnsMnistFromTheCommandLine) {
  if (!std::filesystem::exists(kMnist + "/train-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(kMnist + "/train-images-idx3-ubyte"))
    GTEST_SKIP() << "MNIST not found at " << kMnist << " (CI has it beside the clone)";
  TempDir dir;
  const ProcessResult r =
      run_normlab({"train", "--data", kMnist, "--model", GetParam(), "--epochs", "1",
                   "--batch-size", "64", "--limit-train", "6400", "--limit-test", "2000", "--seed",
                   "1", "--out", dir.file("run"), "--progress", "never"},
                  dir.path(), dir.path(), 60);
  ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
  std::ifstream in(dir.file("run/metrics.jsonl"));
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  ASSERT_FALSE(last.empty()) << "no metrics";
  const auto j = nlohmann::json::parse(last);
  EXPECT_EQ(j.at("steps").get<int>(), 100);
  EXPECT_GT(j.at("test_accuracy").get<double>(), 0.8) << GetParam();
  // The saved model loads back (its state under the layer's state_dict names)
  // and evaluates in eval mode with the running statistics.
  const ProcessResult e = run_normlab({"eval", dir.file("run/model.safetensors"), "--data", kMnist},
                                      dir.path(), dir.path(), 60);
  ASSERT_TRUE(e.exited && e.code == 0) << e.status() << "\n" << e.err;
  const size_t at = e.out.find("accuracy ");
  ASSERT_NE(at, std::string::npos) << e.out;
  EXPECT_GT(std::stod(e.out.substr(at + 9)), 80.0) << e.out;
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
