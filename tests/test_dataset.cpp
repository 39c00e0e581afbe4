// Datasets (images + labels checked together), batch gathering, finding the
// data directory, the real MNIST / Fashion-MNIST files, and the batch sampler.
#include <gtest/gtest.h>
#include <omp.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>

#include "data_test_util.hpp"
#include "normlab/data.hpp"

namespace normlab {
namespace {

using testing::error_of;
using testing::gzip;
using testing::idx_file;
using testing::ramp;
using testing::TempDir;

namespace fs = std::filesystem;

// A 3-image, 2x2 train split; pixels i*51 (0, 51, ..., 255 over 3 images), labels 7 8 9.
void write_small_split(const TempDir& dir, bool gz, const std::string& prefix = "train") {
  std::string pixels(12, 0);
  for (int i = 0; i < 12; ++i) pixels[i] = char(std::min(255, i * 51) & 0xFF);
  auto maybe_gz = [&](const std::string& s) { return gz ? gzip(s) : s; };
  const std::string ext = gz ? ".gz" : "";
  dir.write(prefix + "-images-idx3-ubyte" + ext, maybe_gz(idx_file({3, 2, 2}, pixels)));
  dir.write(prefix + "-labels-idx1-ubyte" + ext, maybe_gz(idx_file({3}, "\x07\x08\x09")));
}

TEST(Dataset, LoadsRawAndGzipSplitsAndGathersScaledFloats) {
  for (bool gz : {false, true}) {
    SCOPED_TRACE(gz ? "gzip" : "raw");
    TempDir dir;
    write_small_split(dir, gz);
    const Dataset ds = load_dataset(dir.path(), Split::Train);
    EXPECT_EQ(ds.size(), 3);
    EXPECT_EQ(ds.height(), 2);
    EXPECT_EQ(ds.width(), 2);
    EXPECT_EQ(ds.features(), 4);
    EXPECT_EQ(ds.label(2), 9);
    EXPECT_NE(ds.images_file().find("train-images-idx3-ubyte"), std::string::npos);

    const std::vector<int64_t> idx = {2, 0, 2};
    std::vector<float> x(3 * 4, -1.0f);
    std::vector<int32_t> y(3, -1);
    ds.gather(idx, x.data(), y.data());
    EXPECT_EQ(y, (std::vector<int32_t>{9, 7, 9}));
    for (int b = 0; b < 3; ++b)
      for (int k = 0; k < 4; ++k) {
        const int pixel = std::min(255, int(idx[b] * 4 + k) * 51);
        EXPECT_EQ(x[b * 4 + k], float(pixel) / 255.0f) << "row " << b << " pixel " << k;
      }
    EXPECT_EQ(x[0 * 4 + 3], 1.0f);  // image 2's last pixel is 255
    EXPECT_EQ(x[1 * 4 + 0], 0.0f);
  }
}

TEST(Dataset, PrefersRawFileWhenBothExist) {
  TempDir dir;
  write_small_split(dir, false);
  dir.write("train-images-idx3-ubyte.gz", "not even gzip");
  EXPECT_EQ(load_dataset(dir.path(), Split::Train).images_file(),
            dir.path() + "/train-images-idx3-ubyte");
}

TEST(Dataset, GatherRefusesOutOfRangeIndices) {
  TempDir dir;
  write_small_split(dir, false);
  const Dataset ds = load_dataset(dir.path(), Split::Train);
  std::vector<float> x(4);
  int32_t y;
  for (int64_t bad : {int64_t{3}, int64_t{-1}}) {
    const std::vector<int64_t> idx = {bad};
    const std::string msg = error_of([&] { ds.gather(idx, x.data(), &y); });
    EXPECT_NE(msg.find("index " + std::to_string(bad) + " (batch row 0) is outside [0, 3)"),
              std::string::npos)
        << msg;
  }
}

TEST(DatasetBadFiles, MoreLabelsThanImages) {
  TempDir dir;
  const std::string images = dir.write("t10k-images-idx3-ubyte", idx_file({3, 2, 2}, ramp(12)));
  const std::string labels = dir.write("t10k-labels-idx1-ubyte", idx_file({4}, ramp(4)));
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Test); });
  EXPECT_NE(msg.find(labels + " has 4 labels but " + images + " has 3 images"), std::string::npos)
      << msg;
}

TEST(DatasetBadFiles, FewerLabelsThanImages) {
  TempDir dir;
  dir.write("t10k-images-idx3-ubyte", idx_file({3, 2, 2}, ramp(12)));
  dir.write("t10k-labels-idx1-ubyte", idx_file({2}, ramp(2)));
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Test); });
  EXPECT_NE(msg.find("has 2 labels but"), std::string::npos) << msg;
}

TEST(DatasetBadFiles, LabelOutOfRange) {
  TempDir dir;
  dir.write("train-images-idx3-ubyte", idx_file({3, 2, 2}, ramp(12)));
  const std::string labels = dir.write("train-labels-idx1-ubyte", idx_file({3}, "\x01\x09\x0A"));
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Train); });
  EXPECT_NE(msg.find(labels + ": label 10 at index 2 is out of range: labels must be in [0, 10)"),
            std::string::npos)
      << msg;
}

TEST(DatasetBadFiles, ImagesAndLabelsSwapped) {
  // A labels file where images belong: the rank check names the file.
  TempDir dir;
  const std::string images = dir.write("train-images-idx3-ubyte", idx_file({3}, ramp(3)));
  dir.write("train-labels-idx1-ubyte", idx_file({3}, ramp(3)));
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Train); });
  EXPECT_NE(msg.find(images + ": wrong number of dims: the header says 1, expected 3"),
            std::string::npos)
      << msg;
}

TEST(DatasetBadFiles, DamagedFileInsideALoadNamesThatFile) {
  TempDir dir;
  write_small_split(dir, true);
  const std::string labels =
      dir.write("train-labels-idx1-ubyte.gz", gzip(idx_file({3}, "\x07\x08\x09")).substr(0, 12));
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Train); });
  EXPECT_EQ(msg.rfind(labels + ": truncated gzip stream", 0), 0u) << msg;
}

TEST(DatasetBadFiles, HandMadeArraysAreCheckedToo) {
  IdxArray images{{2, 2, 2}, std::vector<uint8_t>(7)};  // one byte short
  IdxArray labels{{2}, {1, 2}};
  std::string msg = error_of([&] { Dataset(images, labels, "imgs", "labs"); });
  EXPECT_NE(msg.find("imgs: 7 bytes of data for dims with product 8"), std::string::npos) << msg;
  images.data.push_back(0);
  msg = error_of([&] { Dataset(labels, labels, "labs-as-images", "labs"); });
  EXPECT_NE(msg.find("labs-as-images: images must have 3 dims (N x H x W), the file has 1"),
            std::string::npos)
      << msg;
  EXPECT_EQ(Dataset(images, labels, "imgs", "labs").size(), 2);
}

TEST(DatasetBadFiles, MissingDirectoryOrFiles) {
  TempDir dir;
  const std::string nowhere = dir.path() + "/nowhere";
  std::string msg = error_of([&] { load_dataset(nowhere, Split::Train); });
  EXPECT_NE(msg.find("data directory " + nowhere + " does not exist"), std::string::npos) << msg;

  const std::string file = dir.write("plain-file", "x");
  msg = error_of([&] { load_dataset(file, Split::Train); });
  EXPECT_NE(msg.find("data directory " + file + " is not a directory"), std::string::npos) << msg;

  msg = error_of([&] { load_dataset(dir.path(), Split::Test); });
  EXPECT_NE(msg.find("data directory " + dir.path() +
                     " has neither t10k-images-idx3-ubyte nor t10k-images-idx3-ubyte.gz"),
            std::string::npos)
      << msg;

  write_small_split(dir, false);  // train files only: the test split still misses them
  fs::remove(dir.path() + "/train-labels-idx1-ubyte");
  msg = error_of([&] { load_dataset(dir.path(), Split::Train); });
  EXPECT_NE(msg.find("has neither train-labels-idx1-ubyte nor train-labels-idx1-ubyte.gz"),
            std::string::npos)
      << msg;
}

TEST(DatasetBadFiles, UnreadableDirectory) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: directory permissions are not enforced";
  TempDir dir;
  write_small_split(dir, false);
  fs::permissions(dir.path(), fs::perms::none);
  const std::string msg = error_of([&] { load_dataset(dir.path(), Split::Train); });
  fs::permissions(dir.path(), fs::perms::owner_all);
  EXPECT_NE(msg.find("data directory " + dir.path() + " cannot be read"), std::string::npos) << msg;
}

// ---------------------------------------------------------------- finding the data

// Sets (or unsets, for nullptr) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    value ? ::setenv(name, value, 1) : ::unsetenv(name);
  }
  ~ScopedEnv() { had_ ? ::setenv(name_, old_.c_str(), 1) : ::unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(DataDir, SearchOrder) {
  TempDir root;
  const std::string repo = root.path() + "/wt";
  fs::create_directories(repo + "/data/mnist");
  fs::create_directories(root.path() + "/env/mnist");
  {
    ScopedEnv env("NORMLAB_DATA", nullptr);
    EXPECT_EQ(default_data_dir("mnist", repo), repo + "/data/mnist");
    fs::create_directories(root.path() + "/shared/data/mnist");
    EXPECT_EQ(default_data_dir("mnist", repo), root.path() + "/shared/data/mnist");
  }
  ScopedEnv env("NORMLAB_DATA", (root.path() + "/env").c_str());
  EXPECT_EQ(default_data_dir("mnist", repo), root.path() + "/env/mnist");
}

TEST(DataDir, NoneFoundListsEveryPlaceTried) {
  if (fs::exists("/usr/share/datasets/mnist")) GTEST_SKIP() << "/usr/share/datasets/mnist exists";
  TempDir root;
  ScopedEnv env("NORMLAB_DATA", (root.path() + "/env").c_str());
  const std::string msg = error_of([&] { default_data_dir("mnist", root.path() + "/wt"); });
  for (const std::string& place :
       {root.path() + "/env/mnist", root.path() + "/shared/data/mnist",
        root.path() + "/wt/data/mnist", std::string("/usr/share/datasets/mnist"),
        std::string("scripts/fetch-data")})
    EXPECT_NE(msg.find(place), std::string::npos) << place << " not in: " << msg;
}

TEST(DataDir, UnknownDatasetName) {
  const std::string msg = error_of([] { default_data_dir("cifar10", "/tmp"); });
  EXPECT_NE(msg.find("unknown dataset 'cifar10': known are mnist, fashion-mnist"),
            std::string::npos)
      << msg;
}

TEST(DataDir, RepoFoundFromTheExecutable) {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  const fs::path src = fs::canonical(NORMLAB_SOURCE_DIR);
  if (ec || exe.string().rfind(src.string() + "/", 0) != 0)
    GTEST_SKIP() << "the test binary is not built inside the source tree";
  EXPECT_TRUE(fs::equivalent(repo_dir_of_executable(), src));
}

// ---------------------------------------------------------------- the real files

class RealData : public ::testing::Test {
 protected:
  static void load(const std::string& dir, Dataset& train, Dataset& test) {
    if (!fs::is_directory(dir)) return;
    train = load_dataset(dir, Split::Train);
    test = load_dataset(dir, Split::Test);
  }
  static void check_pixels(const Dataset& ds) {
    uint8_t lo = 255, hi = 0;
    for (int64_t i = 0; i < ds.size(); ++i)
      for (uint8_t p : ds.image(i)) lo = std::min(lo, p), hi = std::max(hi, p);
    EXPECT_EQ(lo, 0);
    EXPECT_EQ(hi, 255);
  }
  static void check_labels(const Dataset& ds, std::vector<int> first) {
    std::vector<int> got;
    for (int64_t i = 0; i < int64_t(first.size()); ++i) got.push_back(ds.label(i));
    EXPECT_EQ(got, first) << ds.labels_file();
  }
};

TEST_F(RealData, Mnist) {
  const std::string dir = NORMLAB_SOURCE_DIR "/../shared/data/mnist";
  if (!fs::is_directory(dir)) GTEST_SKIP() << "no MNIST at " << dir << " (scripts/fetch-data)";
  Dataset train, test;
  load(dir, train, test);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  EXPECT_EQ(train.height(), 28);
  EXPECT_EQ(train.width(), 28);
  check_labels(train, {5, 0, 4, 1, 9, 2, 1, 3, 1, 4});
  check_labels(test, {7, 2, 1, 0, 4, 1, 4, 9, 5, 9});
  check_pixels(train);
  check_pixels(test);

  // Image 0's pixels sum to 27525 (/255 in float, summed in double).
  std::vector<float> x(784);
  int32_t y;
  const std::vector<int64_t> first = {0};
  train.gather(first, x.data(), &y);
  double sum = 0;
  for (float v : x) {
    ASSERT_GE(v, 0.0f);
    ASSERT_LE(v, 1.0f);
    sum += v;
  }
  EXPECT_NEAR(sum, 27525.0 / 255.0, 1e-4);
  EXPECT_EQ(y, 5);
}

TEST_F(RealData, FashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::is_directory(dir))
    GTEST_SKIP() << "no Fashion-MNIST at " << dir << " (apt-get install dataset-fashion-mnist)";
  Dataset train, test;
  load(dir, train, test);
  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  check_labels(train, {9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  check_labels(test, {9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
  check_pixels(test);
}

// ---------------------------------------------------------------- the batch sampler

std::vector<std::vector<int64_t>> epoch_batches(const BatchSampler& s) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t b = 0; b < s.num_batches(); ++b) {
    auto span = s.batch(b);
    out.emplace_back(span.begin(), span.end());
  }
  return out;
}

std::vector<int64_t> flat(const std::vector<std::vector<int64_t>>& batches) {
  std::vector<int64_t> all;
  for (const auto& b : batches) all.insert(all.end(), b.begin(), b.end());
  return all;
}

TEST(BatchSampler, EveryIndexOncePerEpoch) {
  BatchSampler s(1000, 128, true, 42);
  for (int64_t epoch : {0, 1, 5}) {
    s.set_epoch(epoch);
    std::vector<int64_t> all = flat(epoch_batches(s));
    std::sort(all.begin(), all.end());
    ASSERT_EQ(all.size(), 1000u);
    for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(all[i], i) << "epoch " << epoch;
  }
}

TEST(BatchSampler, DeterministicPerSeedAndEpochDifferentAcrossThem) {
  BatchSampler a(500, 64, true, 7), b(500, 64, true, 7), c(500, 64, true, 8);
  EXPECT_EQ(flat(epoch_batches(a)), flat(epoch_batches(b)));
  EXPECT_NE(flat(epoch_batches(a)), flat(epoch_batches(c)));
  const auto epoch0 = flat(epoch_batches(a));
  a.set_epoch(1);
  EXPECT_NE(flat(epoch_batches(a)), epoch0);
  a.set_epoch(0);  // going back gives epoch 0's order again
  EXPECT_EQ(flat(epoch_batches(a)), epoch0);
  // Shuffled means not the identity, and not merely rotated.
  std::vector<int64_t> identity(500);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epoch0, identity);
  EXPECT_NE(epoch0[1], epoch0[0] + 1);
}

TEST(BatchSampler, SameOrderWhateverTheThreadCount) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = flat(epoch_batches(BatchSampler(300, 32, true, 3)));
  omp_set_num_threads(2);
  const auto two = flat(epoch_batches(BatchSampler(300, 32, true, 3)));
  omp_set_num_threads(before);
  EXPECT_EQ(one, two);
}

TEST(BatchSampler, NoShuffleIsSequential) {
  const auto batches = epoch_batches(BatchSampler(10, 4, false, 1, LastBatch::Keep));
  EXPECT_EQ(batches, (std::vector<std::vector<int64_t>>{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}}));
}

std::vector<size_t> sizes(const BatchSampler& s) {
  std::vector<size_t> out;
  for (const auto& b : epoch_batches(s)) out.push_back(b.size());
  return out;
}

TEST(BatchSampler, LastBatchPolicies) {
  using V = std::vector<size_t>;
  // 10 = 4 + 4 + 2
  EXPECT_EQ(sizes(BatchSampler(10, 4, true, 1, LastBatch::Keep)), (V{4, 4, 2}));
  EXPECT_EQ(sizes(BatchSampler(10, 4, true, 1, LastBatch::Drop)), (V{4, 4}));
  EXPECT_EQ(sizes(BatchSampler(10, 4, true, 1, LastBatch::MergeSingle)), (V{4, 4, 2}));
  // 9 = 4 + 4 + 1: the default merges the single sample into the batch before it.
  EXPECT_EQ(sizes(BatchSampler(9, 4, true, 1, LastBatch::Keep)), (V{4, 4, 1}));
  EXPECT_EQ(sizes(BatchSampler(9, 4, true, 1, LastBatch::Drop)), (V{4, 4}));
  EXPECT_EQ(sizes(BatchSampler(9, 4, true, 1)), (V{4, 5}));
  // 8 = 4 + 4: nothing left over under any policy.
  for (LastBatch p : {LastBatch::Keep, LastBatch::Drop, LastBatch::MergeSingle})
    EXPECT_EQ(sizes(BatchSampler(8, 4, true, 1, p)), (V{4, 4}));
  // Fewer samples than one batch.
  EXPECT_EQ(sizes(BatchSampler(3, 4, true, 1)), (V{3}));
  EXPECT_EQ(sizes(BatchSampler(3, 4, true, 1, LastBatch::Drop)), V{});
  EXPECT_EQ(sizes(BatchSampler(1, 4, true, 1)), (V{1}));  // nothing to merge with

  // MNIST's 60000 with batch 128: 468 full batches + 96.
  EXPECT_EQ(BatchSampler(60000, 128, true, 1).num_batches(), 469);
  EXPECT_EQ(BatchSampler(60000, 128, true, 1, LastBatch::Drop).num_batches(), 468);
}

TEST(BatchSampler, MergedSingleKeepsCoverageAndSizesTheBuffer) {
  BatchSampler s(129, 128, true, 5);  // remainder of one
  EXPECT_EQ(s.num_batches(), 1);
  EXPECT_EQ(s.max_batch_size(), 129);
  std::vector<int64_t> all = flat(epoch_batches(s));
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all.size(), 129u);
  EXPECT_EQ(std::set<int64_t>(all.begin(), all.end()).size(), 129u);

  EXPECT_EQ(BatchSampler(130, 128, true, 5).max_batch_size(), 128);
  EXPECT_EQ(BatchSampler(3, 128, true, 5).max_batch_size(), 3);
  EXPECT_EQ(BatchSampler(129, 128, true, 5, LastBatch::Keep).max_batch_size(), 128);
}

TEST(BatchSampler, RefusesBadArguments) {
  EXPECT_NE(error_of([] { BatchSampler(10, 0, true, 1); }).find("batch size 0 must be at least 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { BatchSampler(0, 4, true, 1); }).find("has 0 samples"), std::string::npos);
  const BatchSampler s(10, 4, false, 1);
  EXPECT_NE(error_of([&] { s.batch(3); }).find("batch 3 is outside [0, 3)"), std::string::npos);
}

}  // namespace
}  // namespace normlab
