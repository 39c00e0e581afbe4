// `normlab train --wn-init data` on the real MNIST (skipped with a message when
// ../shared/data/mnist is missing): seed001 trains well above chance, the run
// says and records that the init happened, and --resume does not redo it (a
// resumed run ends with exactly the weights of an uninterrupted one).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli_process.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/safetensors.hpp"
#include "normlab/training_run.hpp"
#include "temp_dir.hpp"

namespace normlab {
namespace {

using nlohmann::json;
using testing::TempDir;

class WnInitTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      data_ = default_data_dir("mnist", NORMLAB_SOURCE_DIR);
    } catch (const Error& e) {
      GTEST_SKIP() << "MNIST not found (CI has it beside the clone): " << e.what();
    }
  }
  std::string data_;
};

class Notes : public TrainingObserver {
 public:
  std::vector<std::string> notes;
  void on_note(const std::string& text) override { notes.push_back(text); }
};

std::map<std::string, std::string> model_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& t : read_safetensors(dir + "/model.safetensors").tensors) out[t.name] = t.data;
  return out;
}

TEST_F(WnInitTraining, Seed001TrainsOnMnistThroughTheCli) {
  TempDir tmp;
  const std::string log = tmp.file("log");
  std::filesystem::create_directories(log);
  const testing::ProcessResult r =
      testing::run_normlab({"train", "--model", "seed001", "--wn-init", "data", "--data", data_,
                            "--epochs", "1", "--limit-train", "6400", "--limit-test", "2000",
                            "--threads", "2", "--progress", "never", "--out", tmp.file("run")},
                           tmp.path(), log, 60);
  ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
  EXPECT_NE(r.out.find("weight-norm data-dependent init (Salimans & Kingma 2016, sec. 3) on the "
                       "first training batch (128 samples): 4 layers (0, 3, 6, 9)"),
            std::string::npos)
      << r.out;
  // Accuracy far above chance (10 %) after 50 steps.
  std::ifstream metrics(tmp.file("run/metrics.jsonl"));
  std::string line;
  ASSERT_TRUE(std::getline(metrics, line));
  EXPECT_GT(json::parse(line).at("test_accuracy").get<double>(), 0.8) << line;
  // The record in both files' metadata.
  for (const char* f : {"model.safetensors", "checkpoint.safetensors"}) {
    const SafetensorsFile file = read_safetensors(tmp.file("run/") + f);
    EXPECT_EQ(json::parse(file.metadata.at("train_config")).at("wn_init"), "data") << f;
    const json rec = json::parse(file.metadata.at("wn_init"));
    EXPECT_EQ(rec.at("method"), "data");
    EXPECT_EQ(rec.at("source"), "Salimans & Kingma 2016, section 3");
    EXPECT_EQ(rec.at("samples"), 128);
    ASSERT_EQ(rec.at("layers").size(), 4u);
    EXPECT_EQ(rec.at("layers")[3].at("path"), "9");
  }
}

TEST_F(WnInitTraining, ResumeDoesNotRedoTheInit) {
  TempDir tmp;
  TrainConfig c;
  c.model = "flatten, wnlinear(64), relu, layernorm, wnlinear(10)";
  c.data_dir = data_;
  c.batch_size = 64;
  c.limit_train = 640;  // 10 steps per epoch
  c.limit_test = 200;
  c.seed = 4;
  c.wn_init = "data";
  TrainConfig full = c, half = c;
  full.epochs = 2;
  full.out_dir = tmp.file("full");
  half.epochs = 1;
  half.out_dir = tmp.file("half");
  Notes n_full, n_half, n_resumed;
  run_training(full, n_full);
  run_training(half, n_half);
  ASSERT_EQ(n_half.notes.size(), 1u);
  EXPECT_NE(n_half.notes[0].find("2 layers (1, 4)"), std::string::npos) << n_half.notes[0];

  TrainConfig resumed = half;
  resumed.epochs = 2;
  resumed.resume = half.out_dir + "/checkpoint.safetensors";
  EXPECT_EQ(config_from_checkpoint(resumed.resume).wn_init, "data");
  run_training(resumed, n_resumed);
  ASSERT_EQ(n_resumed.notes.size(), 1u);
  EXPECT_NE(n_resumed.notes[0].find("done when the run started, not redone"), std::string::npos)
      << n_resumed.notes[0];
  // A redone init would redraw v and reset g and b: the weights would differ.
  EXPECT_EQ(model_bytes(half.out_dir), model_bytes(full.out_dir));
  // The record travels with the resumed run's files.
  const SafetensorsFile f = read_safetensors(half.out_dir + "/checkpoint.safetensors");
  EXPECT_EQ(json::parse(f.metadata.at("wn_init")).at("layers").size(), 2u);

  // The default init leaves no record and gives other weights.
  TrainConfig plain = full;
  plain.wn_init = "pytorch";
  plain.out_dir = tmp.file("plain");
  Notes n_plain;
  run_training(plain, n_plain);
  EXPECT_TRUE(n_plain.notes.empty());
  EXPECT_EQ(read_safetensors(plain.out_dir + "/model.safetensors").metadata.count("wn_init"), 0u);
  EXPECT_NE(model_bytes(plain.out_dir), model_bytes(full.out_dir));
}

}  // namespace
}  // namespace normlab
