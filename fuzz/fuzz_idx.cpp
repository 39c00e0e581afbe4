// libFuzzer target: the IDX reader (raw and gzip) and the Dataset checks on any bytes.
// It may only ever throw normlab::Error; anything else (a crash, a sanitizer
// report, another exception, a broken invariant below) is a finding.
// Seeds: fuzz/corpus/idx/ (small valid and invalid raw and gzip IDX files).
#include <cstdint>
#include <string_view>
#include <vector>

#include "normlab/data.hpp"
#include "normlab/error.hpp"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// A successful read must describe exactly the bytes it returns.
void check_array(const normlab::IdxArray& a, std::string_view bytes) {
  check(!a.dims.empty() && a.dims.size() <= size_t(normlab::kIdxMaxRank));
  uint64_t product = 1;
  for (int64_t d : a.dims) {
    check(d >= 1);
    product *= uint64_t(d);
  }
  check(product == a.data.size());
  const bool gzip = bytes.size() >= 2 && uint8_t(bytes[0]) == 0x1F && uint8_t(bytes[1]) == 0x8B;
  if (!gzip) {  // raw: the data is the file after its header, and nothing else
    const size_t header = 4 + 4 * a.dims.size();
    check(bytes.size() == header + a.data.size());
    check(bytes.substr(header) ==
          std::string_view(reinterpret_cast<const char*>(a.data.data()), a.data.size()));
  }
}

// Rank-3 data as images, its first N bytes as labels: the Dataset checks and gather.
void try_dataset(const normlab::IdxArray& a) {
  normlab::IdxArray labels{{a.dims[0]}, {a.data.begin(), a.data.begin() + a.dims[0]}};
  try {
    const normlab::Dataset ds(a, std::move(labels), "images", "labels");
    std::vector<float> x(2 * ds.features());
    int32_t y[2];
    const int64_t idx[2] = {0, ds.size() - 1};
    ds.gather(idx, x.data(), y);
    for (float v : x) check(v >= 0.0f && v <= 1.0f);
    for (int32_t label : y) check(label >= 0 && label < normlab::kNumClasses);
  } catch (const normlab::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const normlab::IdxArray a = normlab::read_idx_bytes(bytes, "fuzz");
    check_array(a, bytes);
    // The same bytes with another expected rank must be refused.
    const int other = int(a.dims.size()) % normlab::kIdxMaxRank + 1;
    try {
      normlab::read_idx_bytes(bytes, "fuzz", other);
      check(false);
    } catch (const normlab::Error&) {
    }
    if (a.dims.size() == 3) try_dataset(a);
  } catch (const normlab::Error&) {
  }
  return 0;
}
