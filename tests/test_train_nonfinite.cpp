// Training that cannot silently go wrong, through the real executable: a step
// that meets a NaN stops the run with a message naming the step and leaves the
// last good checkpoint as it was (resuming from it ends exactly where a run
// without the fault ends); with --on-nonfinite skip the step is skipped and the
// run goes on. The fault is injected with NORMLAB_FAULT_BATCHES (src/train/run.cpp):
// batch k of the run gets a NaN input, as a diverging run gets NaN somewhere.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_process.hpp"
#include "data_test_util.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/safetensors.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;
using testing::idx_file;
using testing::noise;
using testing::ProcessResult;
using testing::TempDir;

// 200 samples of 4x4 in batches of 16: 13 batches (steps) per epoch.
constexpr int kBatchesPerEpoch = 13;
constexpr const char* kSpec = "flatten, linear(12), relu, batchnorm, linear(10)";

class NonFinite : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string labels(200, 0), test_labels(50, 0);
    for (int i = 0; i < 200; ++i) labels[i] = char(i % 10);
    for (int i = 0; i < 50; ++i) test_labels[i] = char((i * 3) % 10);
    dir_.write("data/train-images-idx3-ubyte", idx_file({200, 4, 4}, noise(3200, 11)));
    dir_.write("data/train-labels-idx1-ubyte", idx_file({200}, labels));
    dir_.write("data/t10k-images-idx3-ubyte", idx_file({50, 4, 4}, noise(800, 12)));
    dir_.write("data/t10k-labels-idx1-ubyte", idx_file({50}, test_labels));
  }

  // normlab train into <dir>/<out>, with NORMLAB_FAULT_BATCHES=faults if not empty.
  ProcessResult train(const std::string& out, const std::string& faults,
                      std::vector<std::string> extra = {}) {
    if (faults.empty())
      unsetenv("NORMLAB_FAULT_BATCHES");
    else
      setenv("NORMLAB_FAULT_BATCHES", faults.c_str(), 1);
    std::vector<std::string> args = {
        "train", "--data", dir_.file("data"), "--threads",          "1", "--progress",
        "never", "--out",  dir_.file(out),    "--checkpoint-every", "4", "--batch-size",
        "16"};
    auto given = [&](const char* flag) {
      return std::find(extra.begin(), extra.end(), flag) != extra.end();
    };
    // Settings come from the checkpoint when resuming.
    if (!given("--resume") && !given("--model")) args.insert(args.end(), {"--model", kSpec});
    if (!given("--resume") && !given("--epochs")) args.insert(args.end(), {"--epochs", "2"});
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string log = dir_.file("log-" + std::to_string(runs_++));
    fs::create_directories(log);
    ProcessResult r = testing::run_normlab(args, dir_.path(), log, 60);
    unsetenv("NORMLAB_FAULT_BATCHES");
    return r;
  }

  static nlohmann::json meta_json(const SafetensorsFile& f, const std::string& key) {
    return nlohmann::json::parse(f.metadata.at(key));
  }

  TempDir dir_;
  int runs_ = 0;
};

void expect_same_tensors(const std::string& a, const std::string& b) {
  const SafetensorsFile fa = read_safetensors(a), fb = read_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (size_t i = 0; i < fa.tensors.size(); ++i) {
    EXPECT_EQ(fa.tensors[i].name, fb.tensors[i].name);
    EXPECT_EQ(fa.tensors[i].shape, fb.tensors[i].shape) << fa.tensors[i].name;
    EXPECT_TRUE(fa.tensors[i].data == fb.tensors[i].data)
        << "tensor " << fa.tensors[i].name << " differs between " << a << " and " << b;
  }
}

// A fault in epoch 2, batch 5 (step 18): the run stops naming that step; the
// checkpoint of step 16 (the last multiple of --checkpoint-every) stays, and
// resuming from it ends with exactly the weights of a run that never failed.
TEST_F(NonFinite, StopNamesTheStepAndKeepsTheLastGoodCheckpoint) {
  const int fault = kBatchesPerEpoch + 5;
  const ProcessResult r = train("failed", std::to_string(fault));
  ASSERT_TRUE(r.exited) << r.status();
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("training stopped at step 18 (epoch 2, batch 5)"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("nan"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the last checkpoint in " + dir_.file("failed") + " is kept"),
            std::string::npos)
      << r.err;

  const SafetensorsFile kept = read_safetensors(dir_.file("failed/checkpoint.safetensors"));
  EXPECT_EQ(kept.metadata.at(kStepKey), "16");
  EXPECT_EQ(meta_json(kept, "position").at("batch"), 3);  // epoch 2 after 3 batches
  // model.safetensors was written with it: the same weights.
  const SafetensorsFile model = read_safetensors(dir_.file("failed/model.safetensors"));
  ASSERT_FALSE(model.tensors.empty());
  for (const SafeTensor& t : model.tensors) {
    const SafeTensor* c = kept.find(t.name);
    ASSERT_NE(c, nullptr) << t.name;
    EXPECT_TRUE(c->data == t.data) << t.name;
  }

  // The same run with the fault one step later keeps the very same checkpoint.
  const ProcessResult later = train("later", std::to_string(fault + 1));
  EXPECT_NE(later.err.find("training stopped at step 19"), std::string::npos) << later.err;
  expect_same_tensors(dir_.file("failed/checkpoint.safetensors"),
                      dir_.file("later/checkpoint.safetensors"));

  // Resumed without the fault, it ends where a run that never failed ends.
  const ProcessResult clean = train("clean", "");
  ASSERT_EQ(clean.code, 0) << clean.err;
  const ProcessResult resumed =
      train("failed", "", {"--resume", dir_.file("failed/checkpoint.safetensors")});
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resuming at epoch 2"), std::string::npos) << resumed.out;
  expect_same_tensors(dir_.file("clean/model.safetensors"), dir_.file("failed/model.safetensors"));
  expect_same_tensors(dir_.file("clean/checkpoint.safetensors"),
                      dir_.file("failed/checkpoint.safetensors"));
}

// A fault in the very first step: nothing was saved, so nothing is said to be
// kept, and the run directory it would have made is not left behind.
TEST_F(NonFinite, StopAtTheFirstStepLeavesNoDirectory) {
  const ProcessResult r = train("first/run", "1");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("training stopped at step 1 (epoch 1, batch 1)"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("is kept"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_.file("first"))) << "an empty run directory was left";
}

// With skip, the two bad steps are skipped with a warning naming each, the run
// finishes, the epochs' metrics count them, and the step count leaves them out.
TEST_F(NonFinite, SkipSkipsTheBadStepsAndContinues) {
  const ProcessResult r =
      train("skip", "3," + std::to_string(kBatchesPerEpoch + 5), {"--on-nonfinite", "skip"});
  ASSERT_EQ(r.code, 0) << r.status() << "\n" << r.err;
  EXPECT_NE(r.err.find("warning: skipped step 3:"), std::string::npos) << r.err;
  // The second fault hits batch 18, which is step 17 once step 3 was skipped.
  EXPECT_NE(r.err.find("warning: skipped step 17:"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("skipped 1 steps"), std::string::npos) << r.out;

  std::ifstream metrics(dir_.file("skip/metrics.jsonl"));
  std::string line;
  int epochs = 0;
  while (std::getline(metrics, line)) {
    const auto m = nlohmann::json::parse(line);
    EXPECT_EQ(m.at("skipped_steps"), 1) << line;
    EXPECT_TRUE(m.at("train_loss").is_number()) << line;
    ++epochs;
  }
  EXPECT_EQ(epochs, 2);
  const SafetensorsFile ckpt = read_safetensors(dir_.file("skip/checkpoint.safetensors"));
  EXPECT_EQ(ckpt.metadata.at(kStepKey), std::to_string(2 * kBatchesPerEpoch - 2));
}

// An epoch whose every step is skipped has no train loss (NaN, written as null
// in JSON); its checkpoint still resumes.
TEST_F(NonFinite, AnEpochOfSkippedStepsStillResumes) {
  std::string all;
  for (int b = 1; b <= kBatchesPerEpoch; ++b) {
    if (b > 1) all += ',';
    all += std::to_string(b);
  }
  const ProcessResult r =
      train("allskip", all, {"--on-nonfinite", "skip", "--model", kSpec, "--epochs", "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("skipped 13 steps"), std::string::npos) << r.out;
  const ProcessResult resumed = train(
      "allskip", "", {"--resume", dir_.file("allskip/checkpoint.safetensors"), "--epochs", "2"});
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("epoch 2 "), std::string::npos) << resumed.out;
}

}  // namespace
}  // namespace normlab
