// End-to-end training runs on a subset of the real MNIST (skipped with a
// message when ../shared/data/mnist is missing): loss falls, accuracy is far
// above chance, the run directory is complete, and resuming from epoch-end and
// mid-epoch checkpoints ends with exactly the weights of an uninterrupted run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/safetensors.hpp"
#include "normlab/training_run.hpp"

using namespace normlab;
using normlab::testing::TempDir;

namespace {

const std::string kMnist = std::string(NORMLAB_SOURCE_DIR) + "/../shared/data/mnist";

class Quiet : public TrainingObserver {
 public:
  int epochs_seen = 0;
  void on_epoch(const EpochMetrics&) override { ++epochs_seen; }
};

TrainConfig small_run(const std::string& out) {
  TrainConfig c;
  c.model = "flatten, linear(64), relu, bn, linear(32), relu, ln, linear(10)";
  c.data_dir = kMnist;
  c.epochs = 2;
  c.batch_size = 64;
  c.limit_train = 6400;  // 100 steps per epoch
  c.limit_test = 1000;
  c.seed = 3;
  c.out_dir = out;
  return c;
}

// The tensors of a run's model.safetensors, name -> bytes (the metadata holds
// timings, which differ from run to run).
std::map<std::string, std::string> model_bytes(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& t : read_safetensors(dir + "/model.safetensors").tensors) out[t.name] = t.data;
  return out;
}

class TrainingRun : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kMnist + "/train-images-idx3-ubyte.gz") &&
        !std::filesystem::exists(kMnist + "/train-images-idx3-ubyte"))
      GTEST_SKIP() << "MNIST not found at " << kMnist << " (CI has it beside the clone)";
  }
};

TEST_F(TrainingRun, LearnsMnistSubsetAndWritesTheRunDirectory) {
  TempDir tmp;
  const std::string out = tmp.file("run");
  Quiet q;
  const auto history = run_training(small_run(out), q);
  ASSERT_EQ(history.size(), 2u);
  EXPECT_EQ(q.epochs_seen, 2);
  EXPECT_EQ(history[1].steps, 200);
  // Chance is 10 % and a loss of log(10) = 2.30; two short epochs reach far past both.
  EXPECT_LT(history[0].loss_curve.back(), history[0].loss_curve.front());
  EXPECT_LT(history[1].train_loss, history[0].train_loss);
  EXPECT_LT(history[1].test_loss, 0.6);
  EXPECT_GT(history[1].test_accuracy, 0.85);
  for (const char* f :
       {"metrics.jsonl", "loss.png", "accuracy.png", "model.safetensors", "checkpoint.safetensors"})
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  // No temporaries left behind.
  for (const auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(metrics, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j.at("epoch").get<int>(), ++lines);
    EXPECT_NEAR(j.at("test_accuracy").get<double>(), history[lines - 1].test_accuracy, 1e-12);
  }
  EXPECT_EQ(lines, 2);
}

TEST_F(TrainingRun, WeightNormKeysChooseTheModelFileSpellingAndResumeKeepsIt) {
  TempDir tmp;
  TrainConfig c = small_run(tmp.file("wn"));
  c.model = "flatten, wnlinear(32), relu, bn, wnlinear(10, dim=none)";
  c.epochs = 1;
  c.limit_train = 640;
  c.limit_test = 100;
  c.weight_norm_keys = WeightNormKeys::Parametrizations;
  Quiet q;
  run_training(c, q);
  const auto model = model_bytes(c.out_dir);
  for (const char* k :
       {"1.bias", "1.parametrizations.weight.original0", "1.parametrizations.weight.original1",
        "4.parametrizations.weight.original0", "4.parametrizations.weight.original1",
        "3.num_batches_tracked"})
    EXPECT_TRUE(model.count(k)) << k;
  EXPECT_FALSE(model.count("1.weight_g"));
  // The checkpoint keeps normlab's own keys; both files load into the model.
  const SafetensorsFile ckpt = read_safetensors(c.out_dir + "/checkpoint.safetensors");
  EXPECT_NE(ckpt.find("1.weight_g"), nullptr);
  EXPECT_NE(ckpt.find("optimizer.exp_avg.1.weight_g"), nullptr);
  EXPECT_EQ(config_from_checkpoint(c.out_dir + "/checkpoint.safetensors").weight_norm_keys,
            WeightNormKeys::Parametrizations);
  Rng rng(0);
  auto a = build_model<float>(c.model, Shape{2, 784}, rng);
  auto b = build_model<float>(c.model, Shape{2, 784}, rng);
  load_model(c.out_dir + "/model.safetensors", a->state());
  load_model(c.out_dir + "/checkpoint.safetensors", b->state());
  const StateDict<float> sa = state_dict(*a), sb = state_dict(*b);
  for (const auto& item : sa) {
    if (const auto* t = std::get_if<Tensor<float>>(&item.value)) {
      for (int64_t i = 0; i < t->numel(); ++i) ASSERT_EQ(sb.tensor(item.key)[i], (*t)[i]);
    }
  }
}

TEST_F(TrainingRun, SameSeedSameWeights) {
  TempDir tmp;
  Quiet q;
  TrainConfig a = small_run(tmp.file("a")), b = small_run(tmp.file("b"));
  a.epochs = b.epochs = 1;
  run_training(a, q);
  run_training(b, q);
  EXPECT_EQ(model_bytes(a.out_dir), model_bytes(b.out_dir));
}

TEST_F(TrainingRun, ResumeFromEpochEndEqualsUninterruptedRun) {
  TempDir tmp;
  Quiet q;
  const TrainConfig full = small_run(tmp.file("full"));
  const auto reference = run_training(full, q);

  TrainConfig first = small_run(tmp.file("resumed"));
  first.epochs = 1;
  run_training(first, q);
  TrainConfig rest = small_run(tmp.file("resumed"));
  rest.resume = rest.out_dir + "/checkpoint.safetensors";
  const auto resumed = run_training(rest, q);

  EXPECT_EQ(model_bytes(full.out_dir), model_bytes(rest.out_dir));
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_EQ(resumed[1].train_loss, reference[1].train_loss);
  EXPECT_EQ(resumed[1].test_accuracy, reference[1].test_accuracy);
}

// A checkpoint written mid-epoch (--checkpoint-every) carries the position and
// the epoch's running sums: resuming from it reproduces weights and metrics.
TEST_F(TrainingRun, ResumeFromMidEpochCheckpointEqualsUninterruptedRun) {
  TempDir tmp;
  Quiet q;
  const TrainConfig full = small_run(tmp.file("full"));
  const auto reference = run_training(full, q);

  // Stop after step 130 (epoch 2, batch 30) by training a run whose last
  // checkpoint is that one: a 2-epoch run interrupted by an observer.
  struct StopAt : TrainingObserver {
    void on_progress(const Progress& p) override {
      if (p.epoch == 2 && p.batch >= 35) throw std::runtime_error("interrupted");
    }
  } stop;
  TrainConfig interrupted = small_run(tmp.file("resumed"));
  interrupted.checkpoint_every = 10;
  EXPECT_THROW(run_training(interrupted, stop), std::runtime_error);
  const TrainConfig saved = config_from_checkpoint(interrupted.out_dir + "/checkpoint.safetensors");
  EXPECT_EQ(saved.model, interrupted.model);

  TrainConfig rest = small_run(tmp.file("resumed"));
  rest.checkpoint_every = 10;
  rest.resume = rest.out_dir + "/checkpoint.safetensors";
  const auto resumed = run_training(rest, q);
  EXPECT_EQ(model_bytes(full.out_dir), model_bytes(rest.out_dir));
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_DOUBLE_EQ(resumed[1].train_loss, reference[1].train_loss);
}

TEST_F(TrainingRun, ResumeWithOtherSettingsIsRefused) {
  TempDir tmp;
  Quiet q;
  TrainConfig first = small_run(tmp.file("r"));
  first.epochs = 1;
  run_training(first, q);
  TrainConfig other = small_run(tmp.file("r"));
  other.resume = other.out_dir + "/checkpoint.safetensors";
  other.batch_size = 32;
  normlab::testing::expect_error([&] { run_training(other, q); },
                                 {"--resume", "--batch-size", "64", "32"});
  TrainConfig done = small_run(tmp.file("r"));
  done.epochs = 1;
  done.resume = done.out_dir + "/checkpoint.safetensors";
  normlab::testing::expect_error([&] { run_training(done, q); }, {"ended after epoch 1"});
}

TEST_F(TrainingRun, ModelThatIsNotAClassifierOfTheDataIsRefused) {
  TempDir tmp;
  Quiet q;
  TrainConfig c = small_run(tmp.file("x"));
  c.model = "linear(7)";
  normlab::testing::expect_error([&] { run_training(c, q); }, {"linear(7)", "(N, 10)"});
  EXPECT_FALSE(std::filesystem::exists(c.out_dir + "/checkpoint.safetensors"));
}

}  // namespace
