// Dataset: images and labels checked against each other, gathered into float batches;
// finding a dataset's directory on disk.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "normlab/data.hpp"
#include "normlab/error.hpp"

namespace normlab {

namespace fs = std::filesystem;

namespace {

// read_idx guarantees this; an IdxArray built by hand might not.
void check_size(const IdxArray& a, const std::string& file) {
  int64_t product = 1;
  for (int64_t d : a.dims) {
    if (d < 1 || d > kIdxMaxBytes) fail(file, ": dim ", d, " is outside [1, ", kIdxMaxBytes, "]");
    product *= d;
    if (product > kIdxMaxBytes) fail(file, ": more than ", kIdxMaxBytes, " bytes of data");
  }
  if (static_cast<int64_t>(a.data.size()) != product)
    fail(file, ": ", a.data.size(), " bytes of data for dims with product ", product);
}

}  // namespace

Dataset::Dataset(IdxArray images, IdxArray labels, std::string images_file, std::string labels_file,
                 int num_classes)
    : num_classes_(num_classes),
      images_file_(std::move(images_file)),
      labels_file_(std::move(labels_file)) {
  if (num_classes < 1 || num_classes > 256)
    fail("Dataset(", images_file_, "): num_classes ", num_classes, " must be in [1, 256]");
  if (images.dims.size() != 3)
    fail(images_file_, ": images must have 3 dims (N x H x W), the file has ", images.dims.size());
  if (labels.dims.size() != 1)
    fail(labels_file_, ": labels must have 1 dim (N), the file has ", labels.dims.size());
  check_size(images, images_file_);
  check_size(labels, labels_file_);
  n_ = images.dims[0];
  h_ = images.dims[1];
  w_ = images.dims[2];
  if (labels.dims[0] != n_)
    fail(labels_file_, " has ", labels.dims[0], " labels but ", images_file_, " has ", n_,
         " images: the counts must match");
  for (size_t i = 0; i < labels.data.size(); ++i)
    if (labels.data[i] >= num_classes)
      fail(labels_file_, ": label ", int(labels.data[i]), " at index ", i,
           " is out of range: labels must be in [0, ", num_classes, ")");
  pixels_ = std::move(images.data);
  labels_ = std::move(labels.data);
}

void Dataset::gather(std::span<const int64_t> indices, float* x, int32_t* y) const {
  const int64_t d = features(), B = static_cast<int64_t>(indices.size());
  for (int64_t b = 0; b < B; ++b)
    if (indices[b] < 0 || indices[b] >= n_)
      fail("Dataset(", images_file_, ")::gather: index ", indices[b], " (batch row ", b,
           ") is outside [0, ", n_, ")");
      // A training batch (128 x 784) converts on two threads in half the time.
#pragma omp parallel for schedule(static) if (B * d >= (1 << 16))
  for (int64_t b = 0; b < B; ++b) {
    const uint8_t* src = pixels_.data() + indices[b] * d;
    float* dst = x + b * d;
    // Division, not * (1/255): bit-identical to ToTensor's img.float().div(255).
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) dst[k] = static_cast<float>(src[k]) / 255.0f;
    y[b] = labels_[indices[b]];
  }
}

namespace {

std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + names[i];
  return s;
}

// `<dir>/<stem>` or `<dir>/<stem>.gz`, raw first (no decompression).
std::string find_idx(const fs::path& dir, const std::string& stem) {
  std::error_code ec;
  for (const std::string& name : {stem, stem + ".gz"}) {
    const fs::path p = dir / name;
    if (fs::exists(p, ec)) return p.string();
  }
  fail("data directory ", dir.string(), " has neither ", stem, " nor ", stem,
       ".gz (an MNIST-style directory holds train-images-idx3-ubyte, train-labels-idx1-ubyte, "
       "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each raw or .gz; scripts/fetch-data "
       "gets MNIST and Fashion-MNIST)");
}

}  // namespace

Dataset load_dataset(const std::string& dir, Split split) {
  std::error_code ec;
  const fs::path d(dir);
  const auto st = fs::status(d, ec);
  if (!fs::exists(st)) fail("data directory ", dir, " does not exist");
  if (!fs::is_directory(st)) fail("data directory ", dir, " is not a directory");
  if (::access(dir.c_str(), R_OK | X_OK) != 0)
    fail("data directory ", dir, " cannot be read (permission denied)");
  const std::string prefix = split == Split::Train ? "train" : "t10k";
  const std::string images_file = find_idx(d, prefix + "-images-idx3-ubyte");
  const std::string labels_file = find_idx(d, prefix + "-labels-idx1-ubyte");
  return Dataset(read_idx(images_file, 3), read_idx(labels_file, 1), images_file, labels_file);
}

const std::vector<std::string>& dataset_names() {
  static const std::vector<std::string> names = {"mnist", "fashion-mnist"};
  return names;
}

std::string repo_dir_of_executable() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (fs::path p = exe.parent_path(); !p.empty(); p = p.parent_path()) {
    if (fs::exists(p / "include" / "normlab" / "data.hpp", ec)) return p.string();
    if (p == p.root_path()) break;
  }
  return "";
}

std::string default_data_dir(std::string_view dataset, std::string repo_dir) {
  const auto& names = dataset_names();
  if (std::find(names.begin(), names.end(), dataset) == names.end())
    fail("unknown dataset '", dataset, "': known are ", join_names(names));
  const std::string name(dataset);
  if (repo_dir.empty()) repo_dir = repo_dir_of_executable();

  std::vector<std::string> tried;
  if (const char* root = std::getenv("NORMLAB_DATA"); root && *root)
    tried.push_back((fs::path(root) / name).string());
  if (!repo_dir.empty()) {
    tried.push_back((fs::path(repo_dir) / ".." / "shared" / "data" / name).lexically_normal());
    tried.push_back((fs::path(repo_dir) / "data" / name).lexically_normal());
  }
  tried.push_back("/usr/share/datasets/" + name);
  std::error_code ec;
  for (const auto& dir : tried)
    if (fs::is_directory(dir, ec)) return dir;
  fail("no data directory for ", name, ": tried ", join_names(tried),
       (repo_dir.empty() ? " (source tree not found from the executable)" : ""),
       "; run scripts/fetch-data, set NORMLAB_DATA to a directory holding ", name,
       "/, or give the directory explicitly");
}

}  // namespace normlab
