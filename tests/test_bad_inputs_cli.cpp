// The catalogue of bad inputs (tests/bad_inputs.md), each run through the real
// normlab executable: absurd flag values, bad model specs, damaged datasets and
// checkpoints. Every case must end with a normal non-zero exit (no signal, no
// "internal error", no sanitizer report), within a time limit, with a message
// on stderr naming the flag, file or layer and the offending value, and without
// writing anything: the run directory (holding a good earlier run), the
// working directory and the input files are byte-identical afterwards.
//
// Tiny data (4x4 images, 40 training and 20 test samples) and a tiny model keep
// the ~200 runs to a few seconds.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli_process.hpp"
#include "data_test_util.hpp"
#include "normlab/safetensors.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;
using testing::gzip;
using testing::idx_file;
using testing::noise;
using testing::ProcessResult;
using testing::run_normlab;
using testing::snapshot;
using testing::TempDir;

constexpr const char* kSmall = "flatten, linear(8), relu, batchnorm, linear(10)";
constexpr const char* kOther = "flatten, linear(6), relu, batchnorm, linear(10)";  // same keys
constexpr double kTimeLimit = 30;  // seconds per case; they take ~0.05 s (a few under ASan)

// A flag and its value; "<drop>" removes the flag from the base command line.
using Flag = std::pair<std::string, std::string>;

// One bad input: the command line ("{root}": the fixture's directory, "{out}":
// the case's run directory) and the parts its error message must contain.
struct Case {
  std::string name;  // also its row in tests/bad_inputs.md
  std::vector<std::string> args;
  std::vector<std::string> message;
};

// The base command line of a subcommand with `flags` replacing or adding to it.
std::vector<std::string> command(std::vector<std::string> base, const std::vector<Flag>& flags) {
  for (const auto& [flag, value] : flags) {
    auto it = std::find(base.begin(), base.end(), flag);
    if (it != base.end()) {
      if (value == "<drop>")
        base.erase(it, it + 2);
      else
        *(it + 1) = value;
    } else if (value == "<flag>") {
      base.push_back(flag);
    } else {
      base.push_back(flag);
      base.push_back(value);
    }
  }
  return base;
}

std::vector<std::string> train(const std::vector<Flag>& flags = {}) {
  return command({"train", "--data", "{root}/data/good", "--model", kSmall, "--epochs", "1",
                  "--batch-size", "16", "--threads", "1", "--progress", "never", "--out", "{out}"},
                 flags);
}
std::vector<std::string> eval(const std::string& checkpoint, const std::vector<Flag>& flags = {}) {
  return command({"eval", checkpoint, "--data", "{root}/data/good", "--threads", "1"}, flags);
}
std::vector<std::string> depth(const std::vector<Flag>& flags = {}) {
  return command({"depth", "--arch", "none", "--max-depth", "1", "--width", "8", "--threads", "1",
                  "--out", "{out}/depth"},
                 flags);
}
std::vector<std::string> model(const std::string& spec, const std::vector<Flag>& flags = {}) {
  return command({"model", spec, "--input", "4x4"}, flags);
}

// ------------------------------------------------------------------ the fixture

// Tiny MNIST-like IDX files: 4x4 images, labels 0..9.
std::string images(uint32_t n, uint32_t h = 4, uint32_t w = 4) {
  return idx_file({n, h, w}, noise(size_t(n) * h * w, n));
}
std::string labels(uint32_t n, uint8_t first = 0) {
  std::string s(n, 0);
  for (uint32_t i = 0; i < n; ++i) s[i] = char((first + i) % 10);
  return idx_file({n}, s);
}

const char* kTrainImages = "train-images-idx3-ubyte";
const char* kTrainLabels = "train-labels-idx1-ubyte";
const char* kTestImages = "t10k-images-idx3-ubyte";
const char* kTestLabels = "t10k-labels-idx1-ubyte";

class BadInputs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new TempDir;
    write_data();
    // Two good runs: the small model's (the source of the damaged checkpoints and
    // the pre-existing run every case must leave alone) and another model's.
    for (const auto& [dir, spec] :
         {std::pair{"good_run", kSmall}, std::pair{"other_run", kOther}}) {
      const std::string log = root_->file(std::string(dir) + "_log");
      fs::create_directories(log);
      const ProcessResult r = run_normlab({"train", "--data", root_->file("data/good"), "--model",
                                           spec, "--epochs", "1", "--batch-size", "16", "--threads",
                                           "1", "--progress", "never", "--out", root_->file(dir)},
                                          root_->path(), log);
      ASSERT_TRUE(r.exited && r.code == 0) << r.status() << "\n" << r.err;
    }
    write_checkpoints();
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }

  // A data directory: the four good files, then `replace` written over them.
  static void data_dir(const std::string& name, const std::map<std::string, std::string>& replace,
                       const std::set<std::string>& remove = {}) {
    const std::map<std::string, std::string> good = {{kTrainImages, images(40)},
                                                     {kTrainLabels, labels(40)},
                                                     {kTestImages, images(20)},
                                                     {kTestLabels, labels(20, 3)}};
    for (const auto& [file, bytes] : good)
      if (!remove.count(file) && !replace.count(file))
        root_->write("data/" + name + "/" + file, bytes);
    for (const auto& [file, bytes] : replace) root_->write("data/" + name + "/" + file, bytes);
    fs::create_directories(root_->file("data/" + name));
  }

  static void write_data() {
    data_dir("good", {});
    const std::string img = images(40);
    const std::string gz = gzip(img);
    std::string flipped = gz;
    flipped[gz.size() / 2] = char(flipped[gz.size() / 2] ^ 0x55);
    data_dir("empty", {{kTrainImages, ""}});
    data_dir("header3", {{kTrainImages, img.substr(0, 3)}});
    data_dir("header10", {{kTrainImages, img.substr(0, 10)}});
    data_dir("body", {{kTrainImages, img.substr(0, 100)}});
    data_dir("toolong", {{kTrainImages, img + "xyz"}});
    data_dir("magic", {{kTrainImages, "\x12\x34\x56\x78" + img.substr(4)}});
    data_dir("type", {{kTrainImages, idx_file({40, 4, 4}, std::string(640 * 4, '\0'), 0x0D)}});
    data_dir("rank2", {{kTrainImages, idx_file({40, 16}, noise(640))}});
    data_dir("labelrank", {{kTrainLabels, idx_file({40, 1}, std::string(40, '\1'))}});
    data_dir("dim0", {{kTrainImages, idx_file({0, 4, 4}, "")}});
    data_dir("dimneg", {{kTrainImages, idx_file({0xFFFFFFFFu, 4, 4}, "")}});
    data_dir("overflow", {{kTrainImages, idx_file({0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF}, "")}});
    data_dir("overcap", {{kTrainImages, idx_file({65536, 65536, 1}, "")}});
    data_dir("morelabels", {{kTrainLabels, labels(41)}});
    data_dir("fewerlabels", {{kTrainLabels, labels(39)}});
    data_dir("label10", {{kTrainLabels, idx_file({40}, std::string(39, '\1') + "\x0A")}});
    data_dir("label255", {{kTestLabels, idx_file({20}, "\xFF" + std::string(19, '\1'))}});
    data_dir("gzflip", {{std::string(kTrainImages) + ".gz", flipped}}, {kTrainImages});
    data_dir("gzcut", {{std::string(kTrainImages) + ".gz", gz.substr(0, gz.size() / 2)}},
             {kTrainImages});
    data_dir("gztrail", {{std::string(kTrainImages) + ".gz", gz + "junk"}}, {kTrainImages});
    data_dir("notgz", {{std::string(kTrainImages) + ".gz", "\x1F\x8B not really gzip"}},
             {kTrainImages});
    data_dir("testsize", {{kTestImages, images(20, 5, 5)}});
    data_dir("swapped", {{kTrainImages, labels(40)}, {kTrainLabels, images(40)}});
    data_dir("nolabels", {}, {kTrainLabels});
    data_dir("notest", {}, {kTestImages, kTestLabels});
    data_dir("onesample", {{kTrainImages, images(1)}, {kTrainLabels, labels(1)}});
    data_dir("isdir", {}, {kTrainImages});
    fs::create_directories(root_->file("data/isdir/") + kTrainImages);
    data_dir("fifo", {}, {kTrainImages});
    ASSERT_EQ(mkfifo((root_->file("data/fifo/") + kTrainImages).c_str(), 0644), 0);
    data_dir("devzero", {}, {kTrainImages});
    fs::create_symlink("/dev/zero", root_->file("data/devzero/") + kTrainImages);
    root_->write("data/plainfile", "not a directory");
  }

  // Damaged copies of the good run's files, in ckpt/.
  static void edit(const std::string& source, const std::string& name,
                   const std::function<void(SafetensorsFile&)>& change) {
    SafetensorsFile f = read_safetensors(root_->file(source));
    change(f);
    root_->write("ckpt/" + name, serialize_safetensors(f));
  }
  static SafeTensor& tensor(SafetensorsFile& f, const std::string& name) {
    for (auto& t : f.tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name);
  }

  static void write_checkpoints() {
    const std::string model = testing::Process::slurp(root_->file("good_run/model.safetensors"));
    const std::string ckpt =
        testing::Process::slurp(root_->file("good_run/checkpoint.safetensors"));
    uint64_t header = 0;
    std::memcpy(&header, model.data(), 8);
    auto with_length = [&](uint64_t n, const std::string& rest) {
      std::string s(8, '\0');
      std::memcpy(s.data(), &n, 8);
      return s + rest;
    };
    root_->write("ckpt/empty.safetensors", "");
    root_->write("ckpt/len4.safetensors", model.substr(0, 4));
    root_->write("ckpt/half.safetensors", model.substr(0, model.size() / 2));
    root_->write("ckpt/cut-header.safetensors", model.substr(0, 8 + header / 2));
    root_->write("ckpt/last-byte.safetensors", model.substr(0, model.size() - 1));
    root_->write("ckpt/garbage-header.safetensors", with_length(16, "this is no json!"));
    root_->write("ckpt/huge-header.safetensors", with_length(uint64_t(1) << 62, "{}"));
    root_->write("ckpt/header-past-end.safetensors", with_length(5000, model.substr(8)));
    root_->write("ckpt/ckpt-half.safetensors", ckpt.substr(0, ckpt.size() / 2));
    root_->write("ckpt/random.safetensors", noise(3000, 7));
    const std::string m = "good_run/model.safetensors", c = "good_run/checkpoint.safetensors";
    edit(m, "i32.safetensors",
         [](SafetensorsFile& f) { tensor(f, "1.weight").dtype = Dtype::I32; });
    // F64 and F16 tensors load (converted, as PyTorch does), but not values
    // beyond float's range or NaNs.
    edit(m, "f64.safetensors", [](SafetensorsFile& f) {
      SafeTensor& t = tensor(f, "1.weight");
      t.dtype = Dtype::F64;
      t.data.assign(t.data.size() * 2, '\0');
      const double huge = 1e300;
      std::memcpy(t.data.data() + 8 * 5, &huge, 8);
    });
    edit(m, "f16.safetensors", [](SafetensorsFile& f) {
      SafeTensor& t = tensor(f, "4.weight");
      t.dtype = Dtype::F16;
      t.data.assign(t.data.size() / 2, '\0');
      t.data[2 * 3 + 1] = '\x7E';  // element 3: 0x7E00, a NaN
    });
    edit(m, "missing.safetensors", [](SafetensorsFile& f) {
      std::erase_if(f.tensors, [](const SafeTensor& t) { return t.name == "4.bias"; });
    });
    edit(m, "extra.safetensors", [](SafetensorsFile& f) {
      f.tensors.push_back({"9.weight", Dtype::F32, {2}, std::string(8, '\0')});
    });
    edit(m, "nan.safetensors", [](SafetensorsFile& f) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      std::memcpy(tensor(f, "4.weight").data.data() + 12, &nan, 4);
    });
    edit(m, "count-f32.safetensors", [](SafetensorsFile& f) {
      SafeTensor& t = tensor(f, "3.num_batches_tracked");
      t.dtype = Dtype::F32;
      t.data.resize(4);
    });
    edit(m, "no-spec.safetensors", [](SafetensorsFile& f) { f.metadata.erase("model"); });
    edit(m, "bad-spec.safetensors",
         [](SafetensorsFile& f) { f.metadata["model"] = "flatten, warp(9)"; });
    // The other model's tensors under this model's metadata: only the shapes tell.
    edit("other_run/model.safetensors", "other-model.safetensors", [](SafetensorsFile& f) {
      f.metadata = read_safetensors(root_->file("good_run/model.safetensors")).metadata;
    });
    edit(c, "ckpt-no-optimizer.safetensors", [](SafetensorsFile& f) {
      std::erase_if(f.tensors,
                    [](const SafeTensor& t) { return t.name.rfind("optimizer.", 0) == 0; });
    });
    edit(c, "ckpt-missing-exp-avg.safetensors", [](SafetensorsFile& f) {
      std::erase_if(f.tensors,
                    [](const SafeTensor& t) { return t.name == "optimizer.exp_avg.4.bias"; });
    });
    edit(c, "ckpt-inf-exp-avg-sq.safetensors", [](SafetensorsFile& f) {
      const float inf = std::numeric_limits<float>::infinity();
      std::memcpy(tensor(f, "optimizer.exp_avg_sq.1.weight").data.data(), &inf, 4);
    });
    edit(c, "ckpt-no-config.safetensors",
         [](SafetensorsFile& f) { f.metadata.erase("train_config"); });
    edit(c, "ckpt-bad-config.safetensors",
         [](SafetensorsFile& f) { f.metadata["train_config"] = "{\"model\": 3"; });
    edit(c, "ckpt-config-types.safetensors", [](SafetensorsFile& f) {
      std::string& s = f.metadata["train_config"];
      const size_t at = s.find("\"batch_size\":");
      s.insert(at + 13, "\"sixteen\",\"was\":");
    });
    edit(c, "ckpt-bad-position.safetensors",
         [](SafetensorsFile& f) { f.metadata["position"] = "{\"epoch\": \"one\"}"; });
    edit(c, "ckpt-negative-position.safetensors", [](SafetensorsFile& f) {
      f.metadata["position"] =
          "{\"epoch\":0,\"batch\":-5,\"loss_sum\":0,\"correct\":0,\"count\":0,\"skipped\":0,"
          "\"curve\":[]}";
    });
    edit(c, "ckpt-position-past-end.safetensors", [](SafetensorsFile& f) {
      f.metadata["position"] =
          "{\"epoch\":0,\"batch\":999,\"loss_sum\":0,\"correct\":0,\"count\":0,\"skipped\":0,"
          "\"curve\":[]}";
    });
    edit("other_run/checkpoint.safetensors", "ckpt-other-model.safetensors",
         [](SafetensorsFile& f) {
           f.metadata = read_safetensors(root_->file("good_run/checkpoint.safetensors")).metadata;
         });
  }

  // Runs one case in fresh directories and checks everything the catalogue promises.
  static void check_refused(const Case& c) {
    SCOPED_TRACE("case '" + c.name + "'");
    static int counter = 0;
    const std::string dir = root_->file("case" + std::to_string(counter++));
    const std::string out = dir + "/out", cwd = dir + "/cwd", log = dir + "/log";
    fs::create_directories(cwd);
    fs::create_directories(log);
    fs::create_directories(out);
    for (const char* f : {"model.safetensors", "checkpoint.safetensors", "metrics.jsonl"})
      fs::copy_file(root_->file(std::string("good_run/") + f), out + "/" + f);
    std::vector<std::string> args;
    std::string line = "normlab";
    for (std::string a : c.args) {
      for (const auto& [key, value] :
           {std::pair<std::string, std::string>{"{root}", root_->path()}, {"{out}", out}})
        for (size_t at; (at = a.find(key)) != std::string::npos;) a.replace(at, key.size(), value);
      args.push_back(a);
      line += " '" + a + "'";
    }
    const auto out_before = snapshot(out), cwd_before = snapshot(cwd);
    const auto ckpt_before = snapshot(root_->file("ckpt"));
    const ProcessResult r = run_normlab(args, cwd, log, kTimeLimit);
    const std::string context = line + "\n" + r.status() + ", stderr:\n" + r.err;
    // NORMLAB_PRINT_CATALOGUE=1: one line per case (name, command, exit code, message),
    // the material of tests/bad_inputs.md.
    if (std::getenv("NORMLAB_PRINT_CATALOGUE")) {
      std::string raw;
      for (const auto& a : c.args) raw += (raw.empty() ? "" : "\x1f") + a;
      std::printf("CASE\t%s\t%s\t%d\t%s\n", c.name.c_str(), raw.c_str(), r.code,
                  r.err.substr(0, r.err.find('\n')).c_str());
    }
    EXPECT_FALSE(r.timed_out) << context;
    EXPECT_TRUE(r.exited) << "crashed: " << context;
    EXPECT_NE(r.code, 0) << "accepted: " << context;
    EXPECT_LT(r.code, 128) << context;
    EXPECT_NE(r.code, 3) << "internal error (a non-normlab exception): " << context;
    EXPECT_EQ(r.err.find("internal error"), std::string::npos) << context;
    EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << context;
    EXPECT_EQ(r.err.find("runtime error:"), std::string::npos) << context;
    for (const auto& part : c.message)
      EXPECT_NE(r.err.find(part), std::string::npos)
          << "'" << part << "' not in the message: " << context;
    const auto out_after = snapshot(out), cwd_after = snapshot(cwd);
    EXPECT_TRUE(out_after == out_before) << "the run directory changed: " << context << "before:\n"
                                         << testing::listing(out_before) << "after:\n"
                                         << testing::listing(out_after);
    EXPECT_TRUE(cwd_after == cwd_before)
        << "files appeared in the working directory: " << context << testing::listing(cwd_after);
    EXPECT_TRUE(snapshot(root_->file("ckpt")) == ckpt_before)
        << "an input checkpoint changed: " << context;
    fs::remove_all(dir);
  }

  static void check_all(const std::vector<Case>& cases) {
    for (const Case& c : cases) check_refused(c);
  }

  static TempDir* root_;
};

TempDir* BadInputs::root_ = nullptr;

// ------------------------------------------------------------------ the cases

constexpr const char* kHuge = "99999999999999999999";  // more than any 64-bit integer

// Integer flags: zero / negative / huge / non-numeric, and an in-range absurd value.
std::vector<Case> flag_cases() {
  std::vector<Case> c = {
      // train
      {"train --epochs 0",
       train({{"--epochs", "0"}}),
       {"--epochs", "between 1 and 1000000", "got 0"}},
      {"train --epochs -3", train({{"--epochs", "-3"}}), {"--epochs", "got -3"}},
      {"train --epochs huge", train({{"--epochs", kHuge}}), {"--epochs", kHuge, "out of range"}},
      {"train --epochs 2000000", train({{"--epochs", "2000000"}}), {"--epochs", "got 2000000"}},
      {"train --epochs abc",
       train({{"--epochs", "abc"}}),
       {"--epochs", "'abc'", "not a whole number"}},
      {"train --epochs 2.5", train({{"--epochs", "2.5"}}), {"--epochs", "'2.5'"}},
      {"train --epochs 0x10", train({{"--epochs", "0x10"}}), {"--epochs", "'0x10'"}},
      {"train --batch-size 0", train({{"--batch-size", "0"}}), {"--batch-size", "got 0"}},
      {"train --batch-size -1", train({{"--batch-size", "-1"}}), {"--batch-size", "got -1"}},
      {"train --batch-size huge", train({{"--batch-size", kHuge}}), {"--batch-size", kHuge}},
      {"train --batch-size 1e12",
       train({{"--batch-size", "1000000000000"}}),
       {"--batch-size", "between 1 and 1048576", "got 1000000000000"}},
      {"train --batch-size x", train({{"--batch-size", "x"}}), {"--batch-size", "'x'"}},
      {"train --batch-size 1 with BatchNorm",
       train({{"--batch-size", "1"}}),
       {"step 1", "--batch-size 1", "BatchNorm1d(8)", "more than 1 value per channel"}},
      {"train --eval-batch-size 0",
       train({{"--eval-batch-size", "0"}}),
       {"--eval-batch-size", "got 0"}},
      {"train --eval-batch-size -7",
       train({{"--eval-batch-size", "-7"}}),
       {"--eval-batch-size", "got -7"}},
      {"train --eval-batch-size huge",
       train({{"--eval-batch-size", kHuge}}),
       {"--eval-batch-size", kHuge}},
      {"train --eval-batch-size 1e12",
       train({{"--eval-batch-size", "1000000000000"}}),
       {"--eval-batch-size", "got 1000000000000"}},
      {"train --eval-batch-size many",
       train({{"--eval-batch-size", "many"}}),
       {"--eval-batch-size", "'many'"}},
      {"train --seed -1", train({{"--seed", "-1"}}), {"--seed", "'-1'", "negative"}},
      {"train --seed huge", train({{"--seed", kHuge}}), {"--seed", kHuge, "out of range"}},
      {"train --seed abc", train({{"--seed", "abc"}}), {"--seed", "'abc'"}},
      {"train --threads -1", train({{"--threads", "-1"}}), {"--threads", "got -1"}},
      {"train --threads 5000",
       train({{"--threads", "5000"}}),
       {"--threads", "between 0 and 1024", "got 5000"}},
      {"train --threads huge", train({{"--threads", kHuge}}), {"--threads", kHuge}},
      {"train --threads two", train({{"--threads", "two"}}), {"--threads", "'two'"}},
      {"train --checkpoint-every -1",
       train({{"--checkpoint-every", "-1"}}),
       {"--checkpoint-every", "got -1"}},
      {"train --checkpoint-every huge",
       train({{"--checkpoint-every", kHuge}}),
       {"--checkpoint-every", kHuge}},
      {"train --checkpoint-every often",
       train({{"--checkpoint-every", "often"}}),
       {"--checkpoint-every", "'often'"}},
      {"train --limit-train -1", train({{"--limit-train", "-1"}}), {"--limit-train", "got -1"}},
      {"train --limit-train 1",
       train({{"--limit-train", "1"}}),
       {"at least 2 samples", "got 1", "--limit-train 1"}},
      {"train --limit-train huge", train({{"--limit-train", kHuge}}), {"--limit-train", kHuge}},
      {"train --limit-train some", train({{"--limit-train", "some"}}), {"--limit-train", "'some'"}},
      {"train --limit-test -1", train({{"--limit-test", "-1"}}), {"--limit-test", "got -1"}},
      {"train --limit-test huge", train({{"--limit-test", kHuge}}), {"--limit-test", kHuge}},
      {"train --limit-test some", train({{"--limit-test", "some"}}), {"--limit-test", "'some'"}},
      // floating-point flags
      {"train --lr 0", train({{"--lr", "0"}}), {"lr=0", "must be > 0"}},
      {"train --lr -0.1", train({{"--lr", "-0.1"}}), {"lr=-0.1", "must be > 0"}},
      {"train --lr nan", train({{"--lr", "nan"}}), {"--lr", "'nan'", "not a finite number"}},
      {"train --lr inf", train({{"--lr", "inf"}}), {"--lr", "'inf'", "not a finite number"}},
      {"train --lr 1e999", train({{"--lr", "1e999"}}), {"--lr", "'1e999'", "not a finite number"}},
      {"train --lr fast", train({{"--lr", "fast"}}), {"--lr", "'fast'", "not a number"}},
      {"train --lr 1e30 (diverges)",
       train({{"--lr", "1e30"}}),
       {"training stopped at step", "loss"}},
      {"train --weight-decay -1",
       train({{"--weight-decay", "-1"}}),
       {"weight_decay=-1", "must be >= 0"}},
      {"train --weight-decay inf", train({{"--weight-decay", "inf"}}), {"--weight-decay", "'inf'"}},
      {"train --weight-decay 1e30 (optimizer state overflows)",
       train({{"--weight-decay", "1e30"}}),
       {"training stopped after step", "optimizer.exp_avg_sq", "non-finite", "left as it was"}},
      {"train --weight-decay x", train({{"--weight-decay", "x"}}), {"--weight-decay", "'x'"}},
      {"train --momentum with adam",
       train({{"--momentum", "0"}}),
       {"momentum=0", "does not apply to adam"}},
      {"train sgd --momentum -1",
       train({{"--optimizer", "sgd"}, {"--lr", "0.1"}, {"--momentum", "-1"}}),
       {"momentum=-1", "must be >= 0"}},
      {"train sgd --momentum nan",
       train({{"--optimizer", "sgd"}, {"--lr", "0.1"}, {"--momentum", "nan"}}),
       {"--momentum", "'nan'"}},
      {"train sgd --momentum 1e30 (diverges)",
       train({{"--optimizer", "sgd"}, {"--lr", "0.1"}, {"--momentum", "1e30"}}),
       {"training stopped at step"}},
      {"train sgd without --lr", train({{"--optimizer", "sgd"}}), {"sgd", "lr has no default"}},
      {"train sgd --nesterov without momentum",
       train({{"--optimizer", "sgd"}, {"--lr", "0.1"}, {"--nesterov", "<flag>"}}),
       {"esterov"}},
      // text flags
      {"train --optimizer adagrad",
       train({{"--optimizer", "adagrad"}}),
       {"adagrad", "adam, adamw or sgd"}},
      {"train --on-nonfinite ignore",
       train({{"--on-nonfinite", "ignore"}}),
       {"--on-nonfinite", "'ignore'"}},
      {"train --progress sometimes",
       train({{"--progress", "sometimes"}}),
       {"--progress", "'sometimes'"}},
      {"train --weight-norm-keys new",
       train({{"--weight-norm-keys", "new"}}),
       {"--weight-norm-keys must be legacy or parametrizations, got 'new'"}},
      {"train --wn-init random",
       train({{"--wn-init", "random"}}),
       {"--wn-init must be pytorch or data, got 'random'"}},
      {"train --wn-init data without wnlinear",
       train({{"--wn-init", "data"}}),
       {"--wn-init data: weight-norm data-dependent init",
        "the model has no WeightNormLinear (wnlinear) layer"}},
      {"train --wn-init data with wnlinear dim=1",
       train(
           {{"--wn-init", "data"}, {"--model", "flatten, wnlinear(8, dim=1), relu, wnlinear(10)"}}),
       {"--wn-init data", "layer 1 (WeightNormLinear(16, 8, dim=1))", "one norm per output row"}},
      {"train --wn-init data with --batch-size 1",
       train({{"--wn-init", "data"},
              {"--model", "flatten, wnlinear(8), relu, wnlinear(10)"},
              {"--batch-size", "1"}}),
       {"--wn-init data", "layer 1 (WeightNormLinear(16, 8))",
        "needs a batch of at least 2 rows to take a standard deviation, got 1"}},
      {"train --dataset cifar",
       train({{"--data", "<drop>"}, {"--dataset", "cifar"}}),
       {"--dataset 'cifar'", "mnist, fashion-mnist"}},
      {"train --out under a file",
       train({{"--out", "{root}/data/plainfile/run"}}),
       {"--out", "plainfile/run", "cannot create the directory"}},
      {"train --out is a file",
       train({{"--out", "{root}/data/plainfile"}}),
       {"--out", "plainfile"}},
      {"train unknown flag", train({{"--learning-rate", "0.1"}}), {"--learning-rate"}},
      // eval
      {"eval --batch-size 0",
       eval("{root}/good_run/model.safetensors", {{"--batch-size", "0"}}),
       {"--batch-size", "got 0"}},
      {"eval --batch-size -5",
       eval("{root}/good_run/model.safetensors", {{"--batch-size", "-5"}}),
       {"--batch-size", "got -5"}},
      {"eval --batch-size huge",
       eval("{root}/good_run/model.safetensors", {{"--batch-size", kHuge}}),
       {"--batch-size", kHuge}},
      {"eval --batch-size 1e12",
       eval("{root}/good_run/model.safetensors", {{"--batch-size", "1000000000000"}}),
       {"--batch-size", "got 1000000000000"}},
      {"eval --batch-size lots",
       eval("{root}/good_run/model.safetensors", {{"--batch-size", "lots"}}),
       {"--batch-size", "'lots'"}},
      {"eval --threads -1",
       eval("{root}/good_run/model.safetensors", {{"--threads", "-1"}}),
       {"--threads", "got -1"}},
      {"eval --threads huge",
       eval("{root}/good_run/model.safetensors", {{"--threads", kHuge}}),
       {"--threads", kHuge}},
      {"eval --threads x",
       eval("{root}/good_run/model.safetensors", {{"--threads", "x"}}),
       {"--threads", "'x'"}},
      {"eval --split val",
       eval("{root}/good_run/model.safetensors", {{"--split", "val"}}),
       {"--split", "'val'"}},
      {"eval without a checkpoint",
       {"eval", "--data", "{root}/data/good"},
       {"checkpoint", "required"}},
      // depth
      {"depth --min-depth -1",
       depth({{"--min-depth", "-1"}}),
       {"--min-depth -1", "between 0 and 1000"}},
      {"depth --min-depth huge", depth({{"--min-depth", kHuge}}), {"--min-depth", kHuge}},
      {"depth --min-depth abc", depth({{"--min-depth", "abc"}}), {"--min-depth", "'abc'"}},
      {"depth --max-depth -1", depth({{"--max-depth", "-1"}}), {"--max-depth -1"}},
      {"depth --max-depth 5000", depth({{"--max-depth", "5000"}}), {"--max-depth 5000"}},
      {"depth --max-depth huge", depth({{"--max-depth", kHuge}}), {"--max-depth", kHuge}},
      {"depth --max-depth x", depth({{"--max-depth", "x"}}), {"--max-depth", "'x'"}},
      {"depth --min-depth > --max-depth",
       depth({{"--min-depth", "1"}, {"--max-depth", "0"}}),
       {"--min-depth 1 is greater than --max-depth 0"}},
      {"depth --seeds 0", depth({{"--seeds", "0"}}), {"--seeds 0", "between 1 and 100000"}},
      {"depth --seeds -2", depth({{"--seeds", "-2"}}), {"--seeds -2"}},
      {"depth --seeds 1e9", depth({{"--seeds", "1000000000"}}), {"--seeds 1000000000"}},
      {"depth --seeds huge", depth({{"--seeds", kHuge}}), {"--seeds", kHuge}},
      {"depth --seeds x", depth({{"--seeds", "x"}}), {"--seeds", "'x'"}},
      {"depth --seed -1", depth({{"--seed", "-1"}}), {"--seed", "'-1'", "negative"}},
      {"depth --seed huge", depth({{"--seed", kHuge}}), {"--seed", kHuge}},
      {"depth --seed x", depth({{"--seed", "x"}}), {"--seed", "'x'"}},
      {"depth --width 0", depth({{"--width", "0"}}), {"--width 0"}},
      {"depth --width -8", depth({{"--width", "-8"}}), {"--width -8"}},
      {"depth --width 1e7", depth({{"--width", "10000000"}}), {"--width 10000000", "16384"}},
      {"depth --width huge", depth({{"--width", kHuge}}), {"--width", kHuge}},
      {"depth --width wide", depth({{"--width", "wide"}}), {"--width", "'wide'"}},
      {"depth --batch 0", depth({{"--batch", "0"}}), {"--batch 0"}},
      {"depth --batch 1", depth({{"--batch", "1"}}), {"--batch 1", "BatchNorm"}},
      {"depth --batch -1", depth({{"--batch", "-1"}}), {"--batch -1"}},
      {"depth --batch 1e6", depth({{"--batch", "1000000"}}), {"--batch 1000000", "65536"}},
      {"depth --batch huge", depth({{"--batch", kHuge}}), {"--batch", kHuge}},
      {"depth --batch x", depth({{"--batch", "x"}}), {"--batch", "'x'"}},
      {"depth --outputs 0", depth({{"--outputs", "0"}}), {"--outputs 0"}},
      {"depth --outputs -1", depth({{"--outputs", "-1"}}), {"--outputs -1"}},
      {"depth --outputs 1e7", depth({{"--outputs", "10000000"}}), {"--outputs 10000000"}},
      {"depth --outputs huge", depth({{"--outputs", kHuge}}), {"--outputs", kHuge}},
      {"depth --outputs x", depth({{"--outputs", "x"}}), {"--outputs", "'x'"}},
      {"depth --threads -1", depth({{"--threads", "-1"}}), {"--threads -1"}},
      {"depth --threads 5000", depth({{"--threads", "5000"}}), {"--threads 5000"}},
      {"depth --threads huge", depth({{"--threads", kHuge}}), {"--threads", kHuge}},
      {"depth --threads x", depth({{"--threads", "x"}}), {"--threads", "'x'"}},
      {"depth --arch unknown",
       depth({{"--arch", "bn-mid"}}),
       {"--arch bn-mid", "unknown architecture"}},
      {"depth --reference missing",
       depth({{"--reference", "{root}/nope.csv"}}),
       {"--reference", "nope.csv", "no such file"}},
      {"depth --out under a file",
       depth({{"--out", "{root}/data/plainfile/d"}}),
       {"--out", "plainfile/d", "cannot create"}},
      // model
      {"model --weight-norm-keys v2",
       model("wnlinear(10)", {{"--weight-norm-keys", "v2"}}),
       {"--weight-norm-keys must be legacy or parametrizations, got 'v2'"}},
      {"model --input 0", model("linear(10)", {{"--input", "0"}}), {"--input '0'"}},
      {"model --input -4", model("linear(10)", {{"--input", "-4"}}), {"--input '-4'"}},
      {"model --input huge", model("linear(10)", {{"--input", kHuge}}), {"--input", kHuge}},
      {"model --input 1e7", model("linear(10)", {{"--input", "10000000"}}), {"10000000"}},
      {"model --input abc", model("linear(10)", {{"--input", "abc"}}), {"--input 'abc'"}},
      {"model --input 4x", model("linear(10)", {{"--input", "4x"}}), {"--input '4x'"}},
      // bench
      {"bench --repeats 0", {"bench", "--repeats", "0"}, {"--repeats", "got 0"}},
      {"bench --repeats abc", {"bench", "--repeats", "abc"}, {"--repeats"}},
      {"bench --threads -1", {"bench", "--threads", "-1"}, {"--threads", "got -1"}},
      {"bench --threads huge", {"bench", "--threads", kHuge}, {"--threads"}},
      {"bench --shapes 0x5", {"bench", "--shapes", "0x5"}, {"--shapes", "0x5"}},
      {"bench --min-time -1", {"bench", "--min-time", "-1"}, {"--min-time", "got -1"}},
      {"bench --cache tepid", {"bench", "--cache", "tepid"}, {"--cache", "tepid"}},
      {"bench unknown flag", {"bench", "--iterations", "0"}, {"--iterations"}},
      {"no subcommand", {}, {"subcommand"}},
      {"unknown subcommand", {"fly"}, {"fly"}},
      // issue 13, part 4: how MPI ranks exchange gradients (checked in one process too)
      {"train --mpi-transport tcp",
       train({{"--mpi-transport", "tcp"}}),
       {"--mpi-transport must be auto, ring or shm, got 'tcp'"}},
  };
  return c;
}

TEST_F(BadInputs, Flags) {
  check_all(flag_cases());
}

std::vector<Case> spec_cases() {
  return {
      {"spec: unknown layer",
       model("flatten, conv(3), linear(10)"),
       {"column 10", "unknown layer 'conv'", "known layers"}},
      {"spec: unknown layer (train)",
       train({{"--model", "flatten, bogus(3), linear(10)"}}),
       {"unknown layer 'bogus'"}},
      {"spec: unknown layer (eval --model)",
       eval("{root}/good_run/model.safetensors", {{"--model", "flatten, bogus, linear(10)"}}),
       {"unknown layer 'bogus'"}},
      {"spec: mismatched sizes",
       model("flatten, linear(16, 8), relu, linear(9, 10)"),
       {"linear(9, 10) expects 9 input features", "linear(16, 8)"}},
      {"spec: input size disagrees",
       train({{"--model", "flatten, linear(784, 10)"}}),
       {"linear(784, 10)", "784", "16"}},
      {"spec: norm size disagrees",
       model("flatten, linear(8), layernorm(9), linear(10)"),
       {"layernorm(9)", "9", "8"}},
      {"spec: batchnorm size disagrees",
       model("flatten, linear(8), batchnorm(7), linear(10)"),
       {"batchnorm(7)", "7", "8"}},
      {"spec: wrong number of classes",
       train({{"--model", "flatten, linear(7)"}}),
       {"outputs shape", "7", "(N, 10)"}},
      // PyTorch builds BatchNorm1d(eps=0) and refuses to train it (F.batch_norm).
      {"spec: batchnorm eps=0 in training",
       train({{"--model", "flatten, linear(8), relu, batchnorm(eps=0), linear(10)"}}),
       {"BatchNorm1d(8, eps=0)", "eps must be positive", "got 0"}},
      {"spec: negative eps",
       model("flatten, linear(8), layernorm(eps=-1e-5)"),
       {"eps must be a finite number >= 0", "'-1e-5'"}},
      {"spec: non-finite momentum",
       model("flatten, linear(8), batchnorm(momentum=nan)"),
       {"momentum must be none or a finite number", "'nan'"}},
      {"spec: zero size",
       model("flatten, linear(0)"),
       {"linear(0)", "size must be positive, got 0"}},
      {"spec: negative size", model("flatten, linear(-3)"), {"linear(-3)"}},
      {"spec: huge size", model("flatten, linear(99999999999999999999)"), {"99999999999999999999"}},
      {"spec: over the size limit", model("flatten, linear(2000000)"), {"2000000", "1048576"}},
      {"spec: layer too large", model("linear(1048576), linear(1048576)"), {"linear(1048576)"}},
      {"spec: non-numeric size", model("flatten, linear(ten)"), {"linear(ten)", "column"}},
      {"spec: unknown option", model("flatten, linear(10, biass=false)"), {"biass"}},
      {"spec: bad option value", model("flatten, linear(10, bias=maybe)"), {"maybe"}},
      {"spec: unbalanced bracket", model("flatten, [linear(10)"), {"column"}},
      {"spec: unbalanced paren", model("flatten, linear(10"), {"column"}},
      {"spec: empty", model(""), {"spec"}},
      {"spec: only commas", model(",,,"), {"column"}},
      {"spec: unknown preset parameter", model("bn-pre:depth=2,colour=red"), {"colour"}},
      {"spec: preset parameter out of range", model("bn-pre:depth=-1"), {"depth", "-1"}},
      {"spec: preset huge width", model("ln-post:width=99999999999"), {"width", "99999999999"}},
      {"spec: relu with an argument", model("relu(3)"), {"relu(3)"}},
      // Found by fuzz_model_spec: the parser recursed once per '[' until the stack overflowed.
      {"spec: 60000 nested groups",
       model(std::string(60000, '[') + "relu" + std::string(60000, ']')),
       {"column 33", "groups nested more than 32 deep"}},
      // issue 10: rmsnorm and the normalized_shape options dims= / shape=
      {"spec: rmsnorm over more dims than the input has",
       model("rmsnorm(dims=3), flatten, linear(10)"),
       {"rmsnorm(dims=3)", "last 3 dims", "(2, 4, 4)"}},
      {"spec: layernorm shape not the input's trailing dims",
       model("layernorm(shape=4x5), flatten, linear(10)"),
       {"layernorm(shape=4x5)", "(4, 5)", "(2, 4, 4)"}},
      {"spec: rmsnorm shape not sizes", model("rmsnorm(shape=4xfour)"), {"shape", "'4xfour'"}},
      {"spec: rmsnorm size and dims",
       model("rmsnorm(4, dims=2)"),
       {"rmsnorm(4, dims=2)", "not both"}},
      {"spec: rmsnorm eps nan",
       model("flatten, rmsnorm(eps=nan)"),
       {"eps must be a finite number >= 0", "'nan'"}},
      {"spec: groupnorm groups do not divide the channels",
       model("flatten, linear(10), groupnorm(4)"),
       {"groupnorm(4)", "divisible", "10 % 4 = 2"}},
      {"spec: instancenorm1d on a 2-D input",
       model("flatten, linear(10), instancenorm1d"),
       {"instancenorm1d", "3-D (N, C, L)", "(2, 10)"}},
      // BatchNorm variants
      {"spec: batchrenorm rmax below 1",
       model("flatten, linear(8), batchrenorm(rmax=0.5)"),
       {"rmax must be a finite number >= 1", "'0.5'"}},
      {"spec: batchrenorm unknown schedule",
       model("flatten, linear(8), brn(schedule=cosine)"),
       {"schedule must be paper", "'cosine'"}},
      {"spec: batchrenorm fractional warmup",
       model("flatten, linear(8), brn(warmup=1.5)"),
       {"warmup must be a whole number of steps", "'1.5'"}},
      {"spec: ghostbatchnorm zero virtual batch",
       model("flatten, linear(8), gbn(virtual_batch_size=0)"),
       {"gbn(virtual_batch_size=0)", "got 0"}},
      {"spec: ghostbatchnorm last virtual batch of one sample",
       train({{"--model",
               "flatten, linear(8), relu, ghostbatchnorm(virtual_batch_size=3), linear(10)"}}),
       {"GhostBatchNorm1d(8, virtual_batch_size=3)", "16 = 5 x 3 + 1"}},
      // the norms on (N, C, H, W) (issue 11)
      {"spec: batchnorm2d on a 2-D input",
       model("flatten, linear(8), batchnorm2d"),
       {"batchnorm2d", "4-D (N, C, H, W)", "(2, 8)"}},
      {"spec: instancenorm2d over one pixel",
       model("flatten, unflatten(16, 1, 1), instancenorm2d"),
       {"instancenorm2d", "H*W > 1", "(2, 16, 1, 1)"}},
      {"spec: batchnorm2d channel count",
       model("flatten, unflatten(4, 2, 2), bn2d(3)"),
       {"bn2d(3)", "expects 3 channels", "(2, 4, 2, 2)"}},
      // Convolution and pooling (issue 11)
      {"spec: conv2d channels not divisible by groups",
       model("flatten, unflatten(1, 4, 4), conv2d(6, 3, groups=4)"),
       {"conv2d(6, 3, groups=4)", "divisible by groups=4", "1 and 6"}},
      {"spec: conv2d kernel larger than the padded input",
       model("flatten, unflatten(1, 4, 4), conv2d(6, 5)"),
       {"conv2d(6, 5)", "kernel 5x5", "padded input 4x4"}},
      {"spec: conv2d stride 0",
       model("flatten, unflatten(1, 4, 4), conv2d(2, 3, stride=0)"),
       {"stride must be a whole number >= 1", "'0'"}},
      {"spec: conv2d on a 2-D input",
       model("flatten, conv2d(2, 3)"),
       {"conv2d(2, 3)", "needs a 4-D (N, C, H, W) input", "(2, 16)"}},
      {"spec: maxpool2d padding above half the kernel",
       model("flatten, unflatten(1, 4, 4), maxpool2d(2, padding=2)"),
       {"maxpool2d(2, padding=2)", "padding 2x2", "more than half the kernel 2x2"}},
      {"spec: cnn preset unknown norm", model("cnn:norm=xx"), {"cnn", "norm", "'xx'"}},
      // --sync-bn on the BatchNorm family (issue 13, part 2)
      {"spec: --sync-bn with ghostbatchnorm",
       train({{"--model", "flatten, linear(8), relu, gbn(virtual_batch_size=4), linear(10)"},
              {"--sync-bn", "<flag>"}}),
       {"--sync-bn", "column 27", "gbn(virtual_batch_size=4)", "Ghost BatchNorm"}},
      {"spec: --sync-bn with mean_only_batchnorm",
       train({{"--model", "flatten, linear(8), meanonlybn, linear(10)"}, {"--sync-bn", "<flag>"}}),
       {"--sync-bn", "column 21", "meanonlybn", "no synchronised version"}},
  };
}

TEST_F(BadInputs, ModelSpecs) {
  check_all(spec_cases());
}

std::vector<Case> data_cases() {
  auto d = [](const std::string& name) { return train({{"--data", "{root}/data/" + name}}); };
  const std::string ti = kTrainImages, tl = kTrainLabels;
  return {
      {"data: directory does not exist", d("nope"), {"--data", "data/nope", "no such directory"}},
      {"data: a file, not a directory", d("plainfile"), {"--data", "plainfile", "not a directory"}},
      {"data: missing labels file", d("nolabels"), {"nolabels", tl}},
      {"data: missing test files", d("notest"), {"notest", kTestImages}},
      {"data: empty images file", d("empty"), {ti, "empty"}},
      {"data: header truncated in the magic", d("header3"), {ti, "truncated header", "3 bytes"}},
      {"data: header truncated in the dims", d("header10"), {ti, "truncated header", "10 bytes"}},
      {"data: body truncated", d("body"), {ti, "truncated body", "100 bytes"}},
      {"data: body too long", d("toolong"), {ti, "too long", "3 extra"}},
      {"data: wrong magic", d("magic"), {ti, "bad magic number 0x12345678"}},
      {"data: float32 IDX", d("type"), {ti, "0x0D", "float32", "not supported"}},
      {"data: images with 2 dims", d("rank2"), {ti, "wrong number of dims", "says 2, expected 3"}},
      {"data: labels with 2 dims",
       d("labelrank"),
       {tl, "wrong number of dims", "says 2, expected 1"}},
      {"data: a zero dim", d("dim0"), {ti, "dim 0 of 3 is 0"}},
      {"data: a negative dim", d("dimneg"), {ti, "4294967295", "2^31-1"}},
      {"data: dims overflow 64 bits", d("overflow"), {ti, "overflows 64 bits"}},
      {"data: dims over the size cap", d("overcap"), {ti, "4294967296 bytes", "limit"}},
      {"data: more labels than images", d("morelabels"), {tl, "41", "40"}},
      {"data: fewer labels than images", d("fewerlabels"), {tl, "39", "40"}},
      {"data: label 10", d("label10"), {tl, "label", "10"}},
      {"data: label 255 in the test set", d("label255"), {kTestLabels, "255"}},
      {"data: images and labels swapped", d("swapped"), {"wrong number of dims"}},
      {"data: damaged gzip (flipped byte)", d("gzflip"), {ti + ".gz", "damaged gzip stream"}},
      {"data: truncated gzip", d("gzcut"), {ti + ".gz", "truncated gzip stream"}},
      {"data: garbage after the gzip stream",
       d("gztrail"),
       {ti + ".gz", "trailing garbage after the end of gzip member 1", "byte offset"}},
      {"data: gzip magic, no gzip", d("notgz"), {ti + ".gz", "gzip"}},
      {"data: test images of another size", d("testsize"), {kTestImages, "25", "16"}},
      {"data: one training sample",
       d("onesample"),
       {"at least 2 samples", "got 1", "onesample/train-images-idx3-ubyte holds 1"}},
      {"data: images file is a directory", d("isdir"), {ti, "directory"}},
      {"data: images file is a FIFO (must not block)", d("fifo"), {ti, "not a regular file"}},
      {"data: images file is /dev/zero (must not read forever)",
       d("devzero"),
       {ti, "not a regular file"}},
      {"data: eval on a damaged directory",
       eval("{root}/good_run/model.safetensors", {{"--data", "{root}/data/label255"}}),
       {kTestLabels, "255"}},
      {"data: eval --data missing",
       eval("{root}/good_run/model.safetensors", {{"--data", "{root}/nope"}}),
       {"--data", "nope", "no such directory"}},
  };
}

TEST_F(BadInputs, DataDirectories) {
  check_all(data_cases());
}

// Unreadable by permissions: root reads anything, so only as another user.
TEST_F(BadInputs, UnreadableDataDirectory) {
  if (geteuid() == 0) GTEST_SKIP() << "running as root: permissions do not stop reads";
  const std::string dir = root_->file("data/unreadable");
  fs::create_directories(dir);
  fs::copy(root_->file("data/good"), dir);
  fs::permissions(dir, fs::perms::none);
  check_refused({"data: unreadable directory", train({{"--data", dir}}), {dir}});
  fs::permissions(dir, fs::perms::owner_all);
}

std::vector<Case> checkpoint_cases() {
  auto e = [](const std::string& name) { return eval("{root}/ckpt/" + name); };
  auto r = [](const std::string& name) { return train({{"--resume", "{root}/ckpt/" + name}}); };
  return {
      {"eval: no such file", e("nope.safetensors"), {"nope.safetensors", "No such file"}},
      {"eval: empty file", e("empty.safetensors"), {"empty.safetensors"}},
      {"eval: truncated in the length", e("len4.safetensors"), {"len4.safetensors"}},
      {"eval: truncated in the header", e("cut-header.safetensors"), {"cut-header.safetensors"}},
      {"eval: truncated in the data", e("half.safetensors"), {"half.safetensors"}},
      {"eval: last byte missing", e("last-byte.safetensors"), {"last-byte.safetensors"}},
      {"eval: garbage header", e("garbage-header.safetensors"), {"garbage-header.safetensors"}},
      {"eval: oversized header length",
       e("huge-header.safetensors"),
       {"huge-header.safetensors", "4611686018427387904"}},
      {"eval: header past the end",
       e("header-past-end.safetensors"),
       {"header-past-end.safetensors", "5000"}},
      {"eval: random bytes", e("random.safetensors"), {"random.safetensors"}},
      {"eval: I32 weights", e("i32.safetensors"), {"i32.safetensors", "'1.weight'", "I32"}},
      {"eval: F64 weight beyond float's range",
       e("f64.safetensors"),
       {"f64.safetensors", "'1.weight'", "holds 1e+300 at flat index 5",
        "beyond the range of float"}},
      {"eval: NaN in F16 weights",
       e("f16.safetensors"),
       {"f16.safetensors", "'4.weight'", "1 non-finite value", "index 3"}},
      {"eval: missing tensor",
       e("missing.safetensors"),
       {"missing.safetensors", "missing 1 key '4.bias'"}},
      {"eval: extra tensor",
       e("extra.safetensors"),
       {"extra.safetensors", "unexpected 1 key '9.weight'"}},
      {"eval: NaN weight", e("nan.safetensors"), {"nan.safetensors", "'4.weight'", "non-finite"}},
      {"eval: count stored as F32",
       e("count-f32.safetensors"),
       {"count-f32.safetensors", "'3.num_batches_tracked'"}},
      {"eval: no model spec in the file",
       e("no-spec.safetensors"),
       {"no-spec.safetensors", "model"}},
      {"eval: unknown layer in the file's spec",
       e("bad-spec.safetensors"),
       {"bad-spec.safetensors", "model spec in its metadata", "unknown layer 'warp'"}},
      {"eval: tensors of another model",
       e("other-model.safetensors"),
       {"other-model.safetensors", "'1.weight'", "shape (6, 16) in the file but (8, 16)",
        "another model"}},
      {"eval: another model's file, --model given",
       eval("{root}/other_run/model.safetensors", {{"--model", kSmall}}),
       {"other_run/model.safetensors", "another model"}},
      {"eval: a directory", e(""), {"ckpt", "directory"}},
      {"eval: a FIFO",
       eval("{root}/data/fifo/train-images-idx3-ubyte"),
       {"fifo", "not a regular file"}},
      {"eval: /dev/zero", eval("/dev/zero"), {"/dev/zero", "not a regular file"}},
      {"resume: no such file", r("nope.safetensors"), {"nope.safetensors"}},
      {"resume: empty file", r("empty.safetensors"), {"empty.safetensors"}},
      {"resume: truncated", r("ckpt-half.safetensors"), {"ckpt-half.safetensors"}},
      {"resume: garbage header", r("garbage-header.safetensors"), {"garbage-header.safetensors"}},
      {"resume: oversized header", r("huge-header.safetensors"), {"huge-header.safetensors"}},
      {"resume: the model file (no optimizer state)",
       train({{"--resume", "{root}/good_run/model.safetensors"}}),
       {"model.safetensors"}},
      {"resume: optimizer state removed",
       r("ckpt-no-optimizer.safetensors"),
       {"ckpt-no-optimizer.safetensors", "optimizer"}},
      {"resume: one optimizer tensor missing",
       r("ckpt-missing-exp-avg.safetensors"),
       {"ckpt-missing-exp-avg.safetensors", "optimizer.exp_avg.4.bias"}},
      {"resume: inf in the optimizer state",
       r("ckpt-inf-exp-avg-sq.safetensors"),
       {"ckpt-inf-exp-avg-sq.safetensors", "optimizer.exp_avg_sq.1.weight", "non-finite"}},
      {"resume: no training configuration",
       r("ckpt-no-config.safetensors"),
       {"ckpt-no-config.safetensors", "train_config"}},
      {"resume: damaged training configuration",
       r("ckpt-bad-config.safetensors"),
       {"ckpt-bad-config.safetensors", "damaged"}},
      {"resume: wrong types in the configuration",
       r("ckpt-config-types.safetensors"),
       {"ckpt-config-types.safetensors", "damaged"}},
      {"resume: damaged run position",
       r("ckpt-bad-position.safetensors"),
       {"ckpt-bad-position.safetensors", "position", "damaged"}},
      {"resume: negative batch in the position",
       r("ckpt-negative-position.safetensors"),
       {"ckpt-negative-position.safetensors", "position", "batch -5"}},
      {"resume: batch past the epoch's end",
       r("ckpt-position-past-end.safetensors"),
       {"ckpt-position-past-end.safetensors", "position", "batch 999 of 3"}},
      {"resume: tensors of another model",
       r("ckpt-other-model.safetensors"),
       {"ckpt-other-model.safetensors", "shape (6, 16) in the file but (8, 16)"}},
      {"resume: another model's checkpoint, --model given",
       train({{"--resume", "{root}/other_run/checkpoint.safetensors"}}),
       {"--resume", "--model", kOther, kSmall}},
      {"resume: other settings",
       train({{"--resume", "{root}/good_run/checkpoint.safetensors"},
              {"--batch-size", "8"},
              {"--epochs", "3"}}),
       {"--resume", "--batch-size 16", "asks for 8"}},
      {"resume: another --wn-init",
       train({{"--resume", "{root}/good_run/checkpoint.safetensors"},
              {"--wn-init", "data"},
              {"--epochs", "3"}}),
       {"--resume", "--wn-init pytorch", "asks for data"}},
      {"resume: already finished",
       train({{"--resume", "{root}/good_run/checkpoint.safetensors"}}),
       {"ended after epoch 1", "--epochs"}},
  };
}

TEST_F(BadInputs, Checkpoints) {
  check_all(checkpoint_cases());
}

// Values at the edges that are meaningful, not bad: each runs and does what
// its help text says (0 threads: OpenMP's default; 0 limit: the whole set; a
// limit above the set's size: the whole set; 0: no mid-epoch checkpoints).
TEST_F(BadInputs, EdgeValuesThatMeanSomething) {
  struct Accepted {
    std::vector<std::string> args;
    std::string in_stdout;
  };
  const std::vector<Accepted> accepted = {
      {train({{"--threads", "0"}}), "epoch 1"},
      {train({{"--seed", "0"}}), "epoch 1"},
      {train({{"--seed", "18446744073709551615"}}), "epoch 1"},
      {train({{"--limit-train", "0"}, {"--limit-test", "0"}}),
       "train samples: 40, test samples: 20"},
      {train({{"--limit-train", "1000000"}, {"--limit-test", "9223372036854775807"}}),
       "train samples: 40, test samples: 20"},
      {train({{"--checkpoint-every", "0"}}), "epoch 1"},
      {train({{"--checkpoint-every", "9223372036854775807"}}), "epoch 1"},
      {train({{"--eval-batch-size", "1048576"}}), "epoch 1"},
      {train({{"--batch-size", "1048576"}}), "epoch 1"},  // one batch of all 40 samples
      {train({{"--weight-decay", "0"}}), "epoch 1"},
      {train({{"--optimizer", "sgd"}, {"--lr", "0.1"}, {"--momentum", "0"}}), "epoch 1"},
      {train({{"--epochs", "003"}}), "epoch 3 "},  // decimal, not octal
      {train({{"--epochs", "+2"}}), "epoch 2 "},
      {eval("{root}/good_run/model.safetensors", {{"--threads", "0"}, {"--batch-size", "1"}}),
       "accuracy"},
      {depth({{"--min-depth", "0"}, {"--max-depth", "0"}, {"--seed", "0"}}), "depth.csv"},
      {model("linear(10)", {{"--input", "1"}}), "state_dict"},
  };
  for (const Accepted& a : accepted) {
    const std::string dir = root_->file("accepted");
    fs::create_directories(dir + "/log");
    std::vector<std::string> args;
    std::string line = "normlab";
    for (std::string arg : a.args) {
      for (const auto& [key, value] :
           {std::pair<std::string, std::string>{"{root}", root_->path()}, {"{out}", dir + "/out"}})
        for (size_t at; (at = arg.find(key)) != std::string::npos;)
          arg.replace(at, key.size(), value);
      args.push_back(arg);
      line += " '" + arg + "'";
    }
    const ProcessResult r = run_normlab(args, dir, dir + "/log", kTimeLimit);
    EXPECT_TRUE(r.exited && r.code == 0) << line << "\n" << r.status() << "\n" << r.err;
    EXPECT_NE(r.out.find(a.in_stdout), std::string::npos) << line << "\n" << r.out;
    if (a.in_stdout == "epoch 3 ") {
      EXPECT_EQ(r.out.find("epoch 4 "), std::string::npos) << r.out;
    }
    fs::remove_all(dir);
  }
}

// Every case has a row in tests/bad_inputs.md (and every row a case).
TEST(BadInputsCatalogue, ListsEveryCase) {
  std::ifstream md(std::string(NORMLAB_SOURCE_DIR) + "/tests/bad_inputs.md");
  ASSERT_TRUE(md) << "tests/bad_inputs.md is missing";
  const std::string text(std::istreambuf_iterator<char>(md), {});
  std::string missing;
  for (const auto& cases : {flag_cases(), spec_cases(), data_cases(), checkpoint_cases()})
    for (const Case& c : cases)
      if (text.find("| " + c.name + " |") == std::string::npos) missing += "| " + c.name + " |\n";
  EXPECT_TRUE(missing.empty()) << "rows missing from tests/bad_inputs.md:\n" << missing;
}

}  // namespace
}  // namespace normlab
