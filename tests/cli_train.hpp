// "Does this model train on MNIST from the command line?": one short
// `normlab train` run, then `normlab eval` of the model it saved. One helper
// for the layer tests that ask it (GroupNorm, InstanceNorm, the 2-D norms, the
// BN family, RMSNorm, the CNN preset) instead of a copy in each file.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_process.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "temp_dir.hpp"

namespace normlab::testing {

// MNIST's directory as the CLI finds it (../shared/data/mnist beside the clone
// in CI), or "" with `why` set when it is missing: callers GTEST_SKIP with it.
inline std::string mnist_dir(std::string* why) {
  try {
    return default_data_dir("mnist", NORMLAB_SOURCE_DIR);
  } catch (const Error& e) {
    *why = std::string("no MNIST here (CI has it at ../shared/data/mnist): ") + e.what();
    return "";
  }
}

struct CliTraining {
  ProcessResult train, eval;
  nlohmann::json last_epoch;  // the last line of metrics.jsonl (null if none)
  double eval_accuracy = -1;  // the % `normlab eval` printed (-1 if none)

  double test_accuracy() const {
    return last_epoch.is_null() ? 0.0 : last_epoch.at("test_accuracy").get<double>();
  }
};

// Trains `spec` one epoch on the first `limit_train` MNIST images (test on
// `limit_test`), writing into <dir>/<name>, then evaluates the saved
// model.safetensors on the whole test set. Extra flags (batch size, seed, ...)
// go in `extra`. Failures of either process are test failures with their output.
inline CliTraining train_and_eval(const TempDir& dir, const std::string& name,
                                  const std::string& data, const std::string& spec,
                                  const std::vector<std::string>& extra = {},
                                  const std::string& limit_train = "6400",
                                  const std::string& limit_test = "1000",
                                  double limit_seconds = 60) {
  const std::string out = dir.file(name), logs = dir.file(name + "-logs");
  std::filesystem::create_directories(logs);
  std::vector<std::string> args = {"train",     "--data",       data,       "--model",
                                   spec,        "--epochs",     "1",        "--limit-train",
                                   limit_train, "--limit-test", limit_test, "--progress",
                                   "never",     "--out",        out};
  args.insert(args.end(), extra.begin(), extra.end());
  CliTraining r;
  r.train = run_normlab(args, dir.path(), logs, limit_seconds);
  EXPECT_TRUE(r.train.exited && r.train.code == 0) << spec << ": " << r.train.status() << "\n"
                                                   << r.train.out << r.train.err;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  if (last.empty()) {
    ADD_FAILURE() << spec << ": no metrics in " << out;
    return r;
  }
  r.last_epoch = nlohmann::json::parse(last);
  // The checkpoint loads back: eval rebuilds the model from its spec and state
  // (the layers' state_dict names, running statistics in eval mode).
  r.eval = run_normlab({"eval", out + "/model.safetensors", "--data", data}, dir.path(), logs,
                       limit_seconds);
  EXPECT_TRUE(r.eval.exited && r.eval.code == 0) << spec << ": " << r.eval.status() << "\n"
                                                 << r.eval.out << r.eval.err;
  const size_t at = r.eval.out.find("accuracy ");
  if (at == std::string::npos)
    ADD_FAILURE() << spec << ": no accuracy in eval's output:\n" << r.eval.out;
  else
    r.eval_accuracy = std::stod(r.eval.out.substr(at + 9));
  return r;
}

}  // namespace normlab::testing
