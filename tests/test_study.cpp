// normlab study: the framework (unit keys, the cached result format, resume
// after a kill), the --quick studies' verdicts, and report.html in a real
// browser (headless Chromium: every figure loads, a screenshot is drawn, and a
// missing image is caught).
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cli_process.hpp"
#include "normlab/error.hpp"
#include "normlab/study.hpp"
#include "temp_dir.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;
using testing::Process;
using testing::run_normlab;
using testing::TempDir;

const std::string kMnist = std::string(NORMLAB_SOURCE_DIR) + "/../shared/data/mnist";

bool have_mnist() {
  return fs::exists(kMnist + "/train-images-idx3-ubyte") ||
         fs::exists(kMnist + "/train-images-idx3-ubyte.gz");
}

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

std::string read(const std::string& path) {
  return Process::slurp(path);
}

// Output of a shell command (stdout).
std::string shell(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

TEST(StudyUnit, KeyFollowsEverySetting) {
  StudyUnit a;
  a.model = "linear(10)";
  StudyUnit b = a;
  EXPECT_EQ(a.key(), b.key());
  EXPECT_EQ(a.key().size(), 16u);
  b.seed = 1;
  EXPECT_NE(a.key(), b.key());
  b = a;
  b.optim.lr = 0.1;
  EXPECT_NE(a.key(), b.key());
  b = a;
  b.init_std = 0.01;
  EXPECT_NE(a.key(), b.key());
  EXPECT_NE(a.settings_text().find("version=normlab"), std::string::npos);
  // The settings added for small-batch and depth-train change the key when
  // set, and are absent when not, so the committed studies' runs stay cached.
  EXPECT_EQ(a.settings_text().find("micro_batch"), std::string::npos);
  EXPECT_EQ(a.settings_text().find("train_mode_batch"), std::string::npos);
  EXPECT_EQ(a.settings_text().find("layer_stats"), std::string::npos);
  b = a;
  b.micro_batch = 4;
  EXPECT_NE(a.key(), b.key());
  b = a;
  b.train_mode_batch = 4;
  EXPECT_NE(a.key(), b.key());
  b = a;
  b.layer_stats = true;
  EXPECT_NE(a.key(), b.key());
}

TEST(StudyUnit, ResultCsvRoundTrip) {
  UnitResult r;
  r.diverged = true;
  r.diverged_step = 17;
  r.seconds = 1.5;
  StudyPoint p;
  p.step = 10;
  p.test_accuracy = 0.25;
  p.train_loss = std::nan("");
  p.p50 = -1.25;
  r.points = {p, p};
  const UnitResult s = parse_unit_result_csv(unit_result_csv(r), "x");
  EXPECT_TRUE(s.diverged);
  EXPECT_EQ(s.diverged_step, 17);
  ASSERT_EQ(s.points.size(), 2u);
  EXPECT_EQ(s.points[1].step, 10);
  EXPECT_EQ(s.points[1].test_accuracy, 0.25);
  EXPECT_TRUE(std::isnan(s.points[1].train_loss));
  EXPECT_EQ(s.points[1].p50, -1.25);
  EXPECT_THROW(parse_unit_result_csv("garbage\n", "x"), Error);
  // Rows of 7 values (written before train_mode_accuracy) still read.
  const UnitResult old = parse_unit_result_csv(
      "# diverged=0 diverged_step=0 seconds=2\nstep,test_accuracy,test_loss,train_loss,p15,p50,"
      "p85\n5,0.5,1,1,nan,nan,nan\n",
      "old");
  ASSERT_EQ(old.points.size(), 1u);
  EXPECT_EQ(old.points[0].test_accuracy, 0.5);
  EXPECT_TRUE(std::isnan(old.points[0].train_mode_accuracy));
  p.train_mode_accuracy = 0.75;
  r.points = {p};
  EXPECT_EQ(parse_unit_result_csv(unit_result_csv(r), "x").points[0].train_mode_accuracy, 0.75);
}

TEST(StudyUnit, LayerStatsCsvRoundTrip) {
  std::vector<LayerStatsPoint> v(2);
  v[0].step = 0;
  v[0].activation = {1.5, 0.25};
  v[0].gradient = {1e-9, 2, 3};
  v[1].step = 50;
  v[1].activation = {2, 4};
  v[1].gradient = {5, 6, 7};
  const auto w = parse_layer_stats_csv(layer_stats_csv(v), "x");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].step, 50);
  EXPECT_EQ(w[0].activation, v[0].activation);
  EXPECT_EQ(w[0].gradient, v[0].gradient);
  EXPECT_EQ(w[1].gradient, v[1].gradient);
  EXPECT_THROW(parse_layer_stats_csv("nonsense\n", "x"), Error);
  EXPECT_THROW(parse_layer_stats_csv("step,kind,layer,value\n0,activation,3,1\n", "x"), Error);
}

TEST(StudyCli, UnknownStudyAndBadSeedsExit2) {
  TempDir dir;
  auto r =
      run_normlab({"study", "no-such-study", "--out", dir.path() + "/o"}, dir.path(), dir.path());
  EXPECT_EQ(r.code, 2) << r.status();
  EXPECT_NE(r.err.find("unknown study"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bn-paper"), std::string::npos) << r.err;
  r = run_normlab({"study", "bn-paper", "--seeds", "0"}, dir.path(), dir.path());
  EXPECT_EQ(r.code, 2) << r.status();
  EXPECT_NE(r.err.find("--seeds 0"), std::string::npos) << r.err;
}

// One --quick bn-paper run shared by the tests below.
class BnPaperQuick : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_mnist()) return;
    dir_ = new TempDir();
    out_ = dir_->path() + "/bn";
    result_ = new testing::ProcessResult(
        run_normlab({"study", "bn-paper", "--quick", "--out", out_, "--data", kMnist}, dir_->path(),
                    dir_->path(), 120));
  }
  static void TearDownTestSuite() {
    delete result_;
    delete dir_;
    result_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!have_mnist())
      GTEST_SKIP() << "MNIST not found at " << kMnist << " (CI has it beside the clone)";
    ASSERT_EQ(result_->code, 0) << result_->status() << "\n" << result_->out << result_->err;
  }
  static TempDir* dir_;
  static std::string out_;
  static testing::ProcessResult* result_;
};
TempDir* BnPaperQuick::dir_ = nullptr;
std::string BnPaperQuick::out_;
testing::ProcessResult* BnPaperQuick::result_ = nullptr;

TEST_F(BnPaperQuick, VerdictsHold) {
  const std::string& o = result_->out;
  EXPECT_NE(o.find("With BN, higher test accuracy sooner (at 10% of training): yes"),
            std::string::npos)
      << o;
  EXPECT_NE(o.find("With BN, higher final test accuracy: yes"), std::string::npos) << o;
  EXPECT_NE(o.find("stays more stable with BN than without: yes"), std::string::npos) << o;
  EXPECT_NE(o.find("total time"), std::string::npos) << o;
  for (const char* f : {"curves.csv", "accuracy.png", "sigmoid_input_none.png",
                        "sigmoid_input_bn.png", "report.html"})
    EXPECT_TRUE(fs::is_regular_file(out_ + "/" + f)) << f;
  const std::string html = read(out_ + "/report.html");
  EXPECT_EQ(count(html, "class=\"yes\""), 3) << html;
  EXPECT_NE(html.find("machine"), std::string::npos);
}

TEST_F(BnPaperQuick, RerunReusesEveryRun) {
  const auto r = run_normlab({"study", "bn-paper", "--quick", "--out", out_, "--data", kMnist},
                             dir_->path(), dir_->path(), 60);
  ASSERT_EQ(r.code, 0) << r.status() << r.err;
  EXPECT_NE(r.out.find("2 of 2 runs already done"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 runs (2 cached)"), std::string::npos) << r.out;
  EXPECT_LT(r.seconds, 10.0);
}

// The page in a real browser: every <img> reports onload (data-loaded), none
// onerror; a screenshot is drawn; and with one PNG removed the page says so.
TEST_F(BnPaperQuick, ReportLoadsInHeadlessChromium) {
  ASSERT_EQ(std::system("command -v chromium >/dev/null 2>&1"), 0)
      << "chromium is not installed (scripts/setup installs it)";
  const std::string url = "file://" + fs::absolute(out_ + "/report.html").string();
  const std::string flags =
      "timeout 90 chromium --headless --no-sandbox --disable-gpu "
      "--user-data-dir=" +
      dir_->path() + "/chromium ";
  const std::string dom = shell(flags + "--dump-dom '" + url + "' 2>/dev/null");
  EXPECT_EQ(count(dom, "data-loaded=\"1\""), 3) << dom;
  EXPECT_EQ(count(dom, "data-broken=\"1\""), 0) << dom;
  EXPECT_EQ(dom.find("BROKEN IMAGE:"), dom.find("BROKEN IMAGE: '+"))  // only in the script
      << dom;
  const std::string shot = dir_->path() + "/shot.png";
  shell(flags + "--screenshot=" + shot + " --window-size=1100,2600 '" + url + "' >/dev/null 2>&1");
  ASSERT_TRUE(fs::is_regular_file(shot));
  EXPECT_GT(fs::file_size(shot), 50000u);  // text only is ~20 KB; the three plots make it larger

  // A copy of the page with one image missing is caught.
  const std::string broken = dir_->path() + "/broken";
  fs::create_directories(broken);
  for (const char* f : {"report.html", "accuracy.png", "sigmoid_input_none.png"})
    fs::copy_file(out_ + "/" + f, broken + "/" + f, fs::copy_options::overwrite_existing);
  const std::string dom2 = shell(flags + "--dump-dom 'file://" + fs::absolute(broken).string() +
                                 "/report.html' 2>/dev/null");
  EXPECT_EQ(count(dom2, "data-broken=\"1\""), 1) << dom2;
  EXPECT_NE(dom2.find("BROKEN IMAGE: sigmoid_input_bn.png"), std::string::npos) << dom2;
}

// Killed after its first run finished, the study reruns only the other one.
TEST(StudyResume, KilledStudyRedoesOnlyUnfinishedRuns) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const std::string out = dir.path() + "/bn";
  {
    Process p({"study", "bn-paper", "--quick", "--threads", "1", "--out", out, "--data", kMnist},
              dir.path(), dir.path());
    bool one_done = false;
    while (!p.finished() && p.elapsed() < 90) {
      int n = 0;
      if (fs::exists(out + "/runs"))
        for (const auto& e : fs::directory_iterator(out + "/runs"))
          n += fs::exists(e.path() / "result.csv");
      if (n >= 1) {
        one_done = true;
        p.kill_now();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(one_done) << "no run finished";
    p.wait(10);
  }
  EXPECT_FALSE(fs::exists(out + "/report.html"));
  const auto r = run_normlab(
      {"study", "bn-paper", "--quick", "--threads", "1", "--out", out, "--data", kMnist},
      dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.err;
  EXPECT_NE(r.out.find("1 of 2 runs already done"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 runs (1 cached)"), std::string::npos) << r.out;
}

TEST(StudyBatchSize, QuickVerdictsHold) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const auto r =
      run_normlab({"study", "batch-size", "--quick", "--out", dir.path() + "/bs", "--data", kMnist},
                  dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.out << r.err;
  EXPECT_NE(r.out.find("LayerNorm at batch 4 within 1 point of batch 128 (or better): yes"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("LayerNorm beats BatchNorm at batch 4: yes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BatchNorm loses more than LayerNorm going from batch 128 to batch 4: yes"),
            std::string::npos)
      << r.out;
  for (const char* f :
       {"final_accuracy.csv", "accuracy_batch128.png", "accuracy_batch4.png", "report.html"})
    EXPECT_TRUE(fs::is_regular_file(dir.path() + "/bs/" + f)) << f;
}

TEST(StudyLrSweep, QuickVerdictsHold) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const auto r =
      run_normlab({"study", "lr-sweep", "--quick", "--out", dir.path() + "/lr", "--data", kMnist},
                  dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.out << r.err;
  EXPECT_NE(r.out.find("BatchNorm has more usable learning rates than no norm: yes"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("LayerNorm has more usable learning rates than no norm: yes"),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(fs::is_regular_file(dir.path() + "/lr/accuracy_vs_lr.png"));
  // lr 10 diverges without a norm: recorded, not an error.
  EXPECT_NE(Process::slurp(dir.path() + "/lr/final_accuracy.csv").find("none,10,0,0.0000,1,"),
            std::string::npos);
}

// A step over micro-batches of 4 is Ghost BatchNorm with virtual batches of 4:
// the same statistics and the same gradient of the batch's mean loss, so with
// SGD the training losses agree to float rounding.
TEST(StudyRunner, MicroBatchStepIsGhostBatchNorm) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  StudyUnit micro;
  micro.label = "micro";
  micro.model = "linear(32), batchnorm, relu, linear(10)";
  micro.optimizer = "sgd";
  micro.optim.lr = 0.1;
  micro.batch_size = 32;
  micro.steps = 6;
  micro.eval_every = 3;
  micro.eval_images = 100;
  micro.micro_batch = 4;
  micro.train_mode_batch = 4;
  StudyUnit ghost = micro;
  ghost.label = "ghost";
  ghost.model = "linear(32), ghostbatchnorm(virtual_batch_size=4), relu, linear(10)";
  ghost.micro_batch = 0;
  StudyOptions o;
  o.out_dir = dir.path();
  o.data_dir = kMnist;
  o.threads = 2;
  StudyObserver quiet;
  const auto r = run_units({micro, ghost}, o, quiet);
  ASSERT_EQ(r[0].points.size(), 3u);
  ASSERT_EQ(r[1].points.size(), 3u);
  for (size_t i = 1; i < 3; ++i) {
    EXPECT_NEAR(r[0].points[i].train_loss, r[1].points[i].train_loss, 1e-5) << i;
    EXPECT_NEAR(r[0].points[i].train_mode_accuracy, r[1].points[i].train_mode_accuracy, 0.011) << i;
  }
  EXPECT_GT(std::fabs(r[0].points[2].train_loss - r[0].points[1].train_loss), 1e-3);  // it trains
}

// The --quick versions of the studies of issue 12, items 4-6: their verdicts
// are the tests (each run takes a few seconds).
TEST(StudySmallBatch, QuickVerdictsHold) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const auto r = run_normlab(
      {"study", "small-batch", "--quick", "--out", dir.path() + "/sb", "--data", kMnist},
      dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.out << r.err;
  for (const char* v :
       {"At micro-batches of 4, Batch Renorm's train/eval gap is smaller than BatchNorm's: yes",
        "At micro-batches of 4, Batch Renorm's eval accuracy >= BatchNorm's: yes"})
    EXPECT_NE(r.out.find(v), std::string::npos) << v << "\n" << r.out;
  for (const char* f : {"final_accuracy.csv", "accuracy.png", "gap.png", "report.html"})
    EXPECT_TRUE(fs::is_regular_file(dir.path() + "/sb/" + f)) << f;
  // Training-mode accuracy was recorded for every run.
  EXPECT_EQ(Process::slurp(dir.path() + "/sb/curves.csv").find(",nan\n"), std::string::npos);
}

TEST(StudyDepthTrain, QuickVerdictsHold) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const auto r = run_normlab(
      {"study", "depth-train", "--quick", "--out", dir.path() + "/dt", "--data", kMnist},
      dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.out << r.err;
  for (const char* v :
       {"Without normalization the activation norm falls by more than 10x from the first to the "
        "last block at step 0: yes",
        "With BatchNorm or LayerNorm (before or after the Linear) the blocks' activation norms "
        "stay within 10x of each other at every recorded step: yes",
        "At step 0 every weight gradient without normalization is more than 10x smaller than "
        "with BatchNorm after the Linear: yes",
        "Every normalized architecture ends with higher test accuracy than none: yes"})
    EXPECT_NE(r.out.find(v), std::string::npos) << v << "\n" << r.out;
  for (const char* f :
       {"layers.csv", "accuracy.png", "activation_none.png", "gradient_ln-post.png"})
    EXPECT_TRUE(fs::is_regular_file(dir.path() + "/dt/" + f)) << f;
  // 6 blocks + the output Linear: 7 gradient rows per arch and step.
  const std::string csv = Process::slurp(dir.path() + "/dt/layers.csv");
  EXPECT_NE(csv.find("none,0,0,gradient,7,"), std::string::npos);
  EXPECT_NE(csv.find("bn-post,0,150,activation,6,"), std::string::npos);
  // The page with the most figures in a real browser: all eleven load.
  ASSERT_EQ(std::system("command -v chromium >/dev/null 2>&1"), 0)
      << "chromium is not installed (scripts/setup installs it)";
  const std::string dom = shell(
      "timeout 90 chromium --headless --no-sandbox --disable-gpu --user-data-dir=" + dir.path() +
      "/chromium --dump-dom 'file://" + fs::absolute(dir.path() + "/dt/report.html").string() +
      "' 2>/dev/null");
  EXPECT_EQ(count(dom, "data-loaded=\"1\""), 11) << dom;
  EXPECT_EQ(count(dom, "data-broken=\"1\""), 0) << dom;
}

TEST(StudyCompare, QuickVerdictsHold) {
  if (!have_mnist()) GTEST_SKIP() << "MNIST not found at " << kMnist;
  TempDir dir;
  const auto r =
      run_normlab({"study", "compare", "--quick", "--out", dir.path() + "/c", "--data", kMnist},
                  dir.path(), dir.path(), 120);
  ASSERT_EQ(r.code, 0) << r.status() << r.out << r.err;
  EXPECT_NE(r.out.find("Every activation norm (BN, LN, RMSNorm, GroupNorm, Batch Renorm, Ghost BN, "
                       "mean-only BN, seed001's mix) beats none at epoch 1 (mean test accuracy): "
                       "yes"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("11 runs (0 cached)"), std::string::npos) << r.out;  // --quick: 1 seed
  const std::string csv = Process::slurp(dir.path() + "/c/accuracy_per_epoch.csv");
  EXPECT_NE(csv.find("\"RMSNorm\",2,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("\"WeightNorm + mean-only BN\",1,"), std::string::npos) << csv;
}

}  // namespace
}  // namespace normlab
