// Data: IDX files (raw or gzip) -> a compact in-memory Dataset -> float batches.
//
// The reader trusts nothing in a file: every problem (damaged gzip, bad magic,
// unsupported type, wrong rank, zero or huge dims, a size that disagrees with
// the header, too many labels, a label out of range) is an Error whose message
// starts with the file's path and prints the numbers involved.
//
// Images stay as bytes (N x 784 bytes for MNIST: 47 MB); a batch is converted
// to float x/255 (what torchvision's ToTensor does) into a buffer the caller
// owns and reuses, so training allocates nothing per batch.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace normlab {

// ---------------------------------------------------------------- IDX files

// IDX header: 0x00 0x00, a type byte (0x08 = unsigned byte, the only type read
// here), a dims byte R, then R big-endian int32 dims; then the data, row-major.
// Caps against absurd headers: MNIST-style files use rank 1 (labels) and 3
// (images); 2 GiB of data is far above any MNIST-like set (EMNIST: 0.7 GB).
inline constexpr int kIdxMaxRank = 4;
inline constexpr int64_t kIdxMaxBytes = int64_t{1} << 31;

struct IdxArray {
  std::vector<int64_t> dims;  // e.g. {60000, 28, 28}; every dim >= 1
  std::vector<uint8_t> data;  // product(dims) bytes, row-major
};

// Reads a raw or gzip-compressed IDX file (recognised by its content, not its
// name). expected_rank: the number of dims the caller needs (1 for labels, 3
// for images), or 0 to accept any rank from 1 to kIdxMaxRank.
// A gzip file is read to the end of its stream (several members allowed, as
// `cat a.gz b.gz` makes; zero bytes after the last member are padding and
// ignored, as gzip -d and Python's gzip do), so a damaged or truncated stream,
// a wrong CRC or other bytes after a member (trailing garbage: the message
// gives the byte offset) are reported, not ignored.
IdxArray read_idx(const std::string& path, int expected_rank = 0);

// The same on bytes already in memory; `name` is used in messages (the fuzzer's entry point).
IdxArray read_idx_bytes(std::string_view bytes, std::string_view name, int expected_rank = 0);

// ---------------------------------------------------------------- datasets

inline constexpr int kNumClasses = 10;  // MNIST digits, Fashion-MNIST garment classes

// N images of H x W bytes with a label each, all kept as bytes.
class Dataset {
 public:
  Dataset() = default;
  // Checks images is (N, H, W), labels is (N) with the same N, each array's
  // data has product(dims) bytes, every label < num_classes; messages name
  // the two files given here.
  Dataset(IdxArray images, IdxArray labels, std::string images_file, std::string labels_file,
          int num_classes = kNumClasses);

  int64_t size() const { return n_; }
  int64_t height() const { return h_; }
  int64_t width() const { return w_; }
  int64_t features() const { return h_ * w_; }  // D of one flattened image: 784
  int num_classes() const { return num_classes_; }
  const std::string& images_file() const { return images_file_; }
  const std::string& labels_file() const { return labels_file_; }

  std::span<const uint8_t> image(int64_t i) const {
    return {pixels_.data() + i * features(), static_cast<size_t>(features())};
  }
  int label(int64_t i) const { return labels_[i]; }

  // The batch of samples `indices` into caller-owned buffers, no allocation:
  //   x: (B, features()) floats, pixel / 255 in [0, 1];  y: (B) labels.
  // B = indices.size(). Throws an Error if an index is outside [0, size()).
  void gather(std::span<const int64_t> indices, float* x, int32_t* y) const;

 private:
  int64_t n_ = 0, h_ = 0, w_ = 0;
  int num_classes_ = kNumClasses;
  std::vector<uint8_t> pixels_;  // (N, H, W)
  std::vector<uint8_t> labels_;  // (N)
  std::string images_file_, labels_file_;
};

enum class Split { Train, Test };

// Loads `<dir>/train-images-idx3-ubyte` + `train-labels-idx1-ubyte` (Split::Train)
// or the `t10k-` pair (Split::Test), each raw or with `.gz` (raw preferred when
// both exist). A missing directory or file is an Error naming the directory and
// the file names looked for.
Dataset load_dataset(const std::string& dir, Split split);

// Known dataset names, in the order they are listed in messages: "mnist", "fashion-mnist".
const std::vector<std::string>& dataset_names();

// The directory holding `dataset`'s files: the first existing of
//   $NORMLAB_DATA/<dataset>            (NORMLAB_DATA: a root of dataset directories)
//   <repo>/../shared/data/<dataset>    (the shared read-only copy beside the worktrees)
//   <repo>/data/<dataset>              (where scripts/fetch-data puts MNIST)
//   /usr/share/datasets/<dataset>      (Debian: dataset-fashion-mnist)
// repo_dir "" means: derived from the executable's location (see repo_dir_of_executable).
// Throws an Error for an unknown name, or listing every place tried when none exists.
std::string default_data_dir(std::string_view dataset, std::string repo_dir = "");

// The source tree the running executable was built in: the nearest ancestor of
// /proc/self/exe's directory holding include/normlab/data.hpp; "" if none.
std::string repo_dir_of_executable();

// ---------------------------------------------------------------- batches

// What happens to the last batch when batch_size does not divide N.
enum class LastBatch {
  Keep,         // keep it whatever its size (evaluation: every sample counts once)
  Drop,         // drop it (PyTorch's drop_last=True)
  MergeSingle,  // keep it, but a remainder of exactly 1 sample joins the batch
                // before it (size batch_size + 1): a BatchNorm training batch of
                // one has no variance. Every sample is still seen once per epoch.
};

// The batches of one epoch as index lists into a dataset of n samples.
// With shuffle, the order is a Fisher-Yates permutation drawn from
// Rng(seed).fork(epoch): the same for a (seed, epoch) whatever the thread
// count, different from epoch to epoch. Without shuffle: 0, 1, ..., n-1.
// If n == 1 the only batch has one sample under every policy but Drop.
class BatchSampler {
 public:
  BatchSampler(int64_t n, int64_t batch_size, bool shuffle, uint64_t seed,
               LastBatch last = LastBatch::MergeSingle);

  void set_epoch(int64_t epoch);  // draws that epoch's order (the constructor sets epoch 0)
  int64_t epoch() const { return epoch_; }
  int64_t num_batches() const { return num_batches_; }
  int64_t max_batch_size() const;                   // size the caller's buffers with this
  std::span<const int64_t> batch(int64_t b) const;  // indices of batch b, 0 <= b < num_batches()

 private:
  int64_t n_, batch_size_;
  bool shuffle_;
  uint64_t seed_;
  LastBatch last_;
  int64_t epoch_ = 0;
  int64_t num_batches_ = 0;
  std::vector<int64_t> order_;
};

}  // namespace normlab
