// Every fuzzer's seeds (fuzz/corpus/<name>/) and every input a fuzzer ever
// found a problem with (fuzz/regressions/<name>/, see scripts/fuzz) replayed
// through the fuzz target itself, compiled into the suite (tests/fuzz_target_*.cpp).
// A target aborts on a broken invariant and lets anything but normlab::Error
// escape, so a regression fails this test (under scripts/test-sanitizers also
// on a sanitizer report), with or without clang and libFuzzer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int normlab_fuzz_target_idx(const uint8_t* data, size_t size);
extern "C" int normlab_fuzz_target_checkpoint(const uint8_t* data, size_t size);
extern "C" int normlab_fuzz_target_model_spec(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

// The files of fuzz/corpus/<name>/ and fuzz/regressions/<name>/.
std::vector<fs::path> inputs(const std::string& name) {
  std::vector<fs::path> files;
  for (const char* kind : {"corpus", "regressions"}) {
    const fs::path dir = fs::path(NORMLAB_SOURCE_DIR) / "fuzz" / kind / name;
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void replay(const std::string& name, int (*target)(const uint8_t*, size_t), size_t at_least) {
  const auto files = inputs(name);
  EXPECT_GE(files.size(), at_least) << "fuzz/corpus/" << name << " lost its seeds";
  for (const fs::path& f : files) {
    SCOPED_TRACE(f.string());
    std::ifstream in(f, std::ios::binary);
    const std::string bytes(std::istreambuf_iterator<char>(in), {});
    EXPECT_EQ(target(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
  }
}

TEST(FuzzRegressions, Idx) {
  replay("idx", normlab_fuzz_target_idx, 10);
}

TEST(FuzzRegressions, Checkpoint) {
  replay("checkpoint", normlab_fuzz_target_checkpoint, 8);
}

TEST(FuzzRegressions, ModelSpec) {
  replay("model_spec", normlab_fuzz_target_model_spec, 20);
}

}  // namespace
