// A training run killed at any moment (SIGKILL: no handler, no cleanup) leaves
// its last checkpoint intact, and --resume from it ends with exactly the
// weights and metrics of a run that was never stopped. The real executable
// trains the seed001 network on 3000 MNIST samples for 3 epochs with a
// checkpoint every 5 steps (~17 checkpoint writes); it is killed early, in the
// middle of writing a checkpoint, late, and twice in a row.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_process.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/safetensors.hpp"
#include "temp_dir.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;
using testing::Process;
using testing::ProcessResult;
using testing::TempDir;

constexpr double kRunLimit = 120;  // seconds; a whole run takes ~1.5 s (~10 s under ASan)

class KillResume : public ::testing::Test {
 protected:
  void SetUp() override {
    try {
      data_ = default_data_dir("mnist", NORMLAB_SOURCE_DIR);
    } catch (const Error& e) {
      GTEST_SKIP() << "no MNIST here (scripts/fetch-data gets it): " << e.what();
    }
  }

  // The run's command line; with `resume`, the settings come from the checkpoint.
  std::vector<std::string> args(const std::string& out, bool resume) const {
    std::vector<std::string> a = {"train", "--data",     data_,   "--threads",
                                  "1",     "--progress", "never", "--checkpoint-every",
                                  "5"};
    if (resume)  // without --out: the run continues in the checkpoint's directory
      a.insert(a.end(), {"--resume", out + "/checkpoint.safetensors"});
    else
      a.insert(a.end(),
               {"--out", out, "--limit-train", "3000", "--limit-test", "500", "--epochs", "3"});
    return a;
  }

  std::string log_dir() {
    const std::string d = dir_.file("log" + std::to_string(logs_++));
    fs::create_directories(d);
    return d;
  }

  // Starts a run and SIGKILLs it once `checkpoints` new checkpoint files have
  // appeared (each write renames a fresh inode into place), or, with
  // `mid_write`, as soon as the temporary of the next one exists. Returns false
  // if the run ended before that point.
  bool run_and_kill(const std::string& out, bool resume, int checkpoints, bool mid_write) {
    const std::string ckpt = out + "/checkpoint.safetensors";
    auto inode = [&]() -> ino_t {
      struct stat st {};
      return ::stat(ckpt.c_str(), &st) == 0 ? st.st_ino : 0;
    };
    ino_t last = inode();
    int seen = 0;
    Process p(args(out, resume), dir_.path(), log_dir());
    const std::string tmp = ckpt + ".tmp." + std::to_string(p.pid());
    while (!p.finished() && p.elapsed() < kRunLimit) {
      const ino_t now = inode();
      if (now != 0 && now != last) {
        last = now;
        ++seen;
      }
      if (seen >= checkpoints && (!mid_write || fs::exists(tmp))) {
        p.kill_now();
        const ProcessResult r = p.wait(kRunLimit);
        EXPECT_TRUE(!r.exited && r.signal == SIGKILL) << r.status() << "\n" << r.err;
        // Killed mid-write, the half-written temporary stays until the next run
        // (which removes it; expect_same_as_reference checks that).
        if (mid_write) {
          EXPECT_TRUE(fs::exists(tmp)) << "not killed during the write";
        }
        return !r.exited;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return false;
  }

  // The checkpoint a kill left behind is whole: it parses, every tensor is
  // there with its full data, and its metadata says where the run stood.
  void expect_intact_checkpoint(const std::string& out) {
    const SafetensorsFile f = read_safetensors(out + "/checkpoint.safetensors");
    EXPECT_GT(f.tensors.size(), 40u);
    const int64_t step = metadata_int(f.metadata, kStepKey, out);
    EXPECT_GT(step, 0);
    EXPECT_EQ(step % 5 == 0 || step % 24 == 0, true) << "step " << step;
  }

  void resume_to_end(const std::string& out) {
    const ProcessResult r =
        testing::run_normlab(args(out, true), dir_.path(), log_dir(), kRunLimit);
    ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
  }

  // Same tensors, bit for bit, and the same epoch metrics (but the times).
  void expect_same_as_reference(const std::string& out) {
    for (const char* file : {"model.safetensors", "checkpoint.safetensors"}) {
      const SafetensorsFile a = read_safetensors(reference_ + "/" + file);
      const SafetensorsFile b = read_safetensors(out + "/" + file);
      ASSERT_EQ(a.tensors.size(), b.tensors.size()) << file;
      for (size_t i = 0; i < a.tensors.size(); ++i) {
        EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
        EXPECT_TRUE(a.tensors[i].data == b.tensors[i].data)
            << file << ": tensor " << a.tensors[i].name << " differs from the uninterrupted run";
      }
    }
    EXPECT_EQ(metrics_without_times(reference_), metrics_without_times(out));
    for (const auto& e : fs::directory_iterator(out))
      EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos)
          << "stray temporary left: " << e.path();
  }

  static std::vector<nlohmann::json> metrics_without_times(const std::string& out) {
    std::ifstream in(out + "/metrics.jsonl");
    std::vector<nlohmann::json> rows;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("train_seconds");
      j.erase("eval_seconds");
      rows.push_back(j);
    }
    return rows;
  }

  void make_reference() {
    reference_ = dir_.file("reference");
    const ProcessResult r =
        testing::run_normlab(args(reference_, false), dir_.path(), log_dir(), kRunLimit);
    ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
    ASSERT_EQ(metrics_without_times(reference_).size(), 3u);
  }

  TempDir dir_;
  std::string data_, reference_;
  int logs_ = 0;
};

TEST_F(KillResume, EndsWithTheWeightsOfAnUninterruptedRun) {
  make_reference();
  struct KillPoint {
    const char* name;
    int checkpoints;  // kill after this many checkpoint writes ...
    bool mid_write;   // ... or while writing the next one
  };
  for (const KillPoint& k : {KillPoint{"early", 1, false}, KillPoint{"mid-write", 6, true},
                             KillPoint{"late", 13, false}}) {
    SCOPED_TRACE(k.name);
    const std::string out = dir_.file(k.name);
    ASSERT_TRUE(run_and_kill(out, false, k.checkpoints, k.mid_write))
        << "the run ended before the kill point";
    expect_intact_checkpoint(out);
    resume_to_end(out);
    expect_same_as_reference(out);
  }
}

// Killed, resumed, killed again (now during a write), resumed to the end.
TEST_F(KillResume, TwoKillsInARow) {
  make_reference();
  const std::string out = dir_.file("twice");
  ASSERT_TRUE(run_and_kill(out, false, 3, false));
  expect_intact_checkpoint(out);
  ASSERT_TRUE(run_and_kill(out, true, 4, true)) << "the resumed run ended before the kill point";
  expect_intact_checkpoint(out);
  resume_to_end(out);
  expect_same_as_reference(out);
}

}  // namespace
}  // namespace normlab
