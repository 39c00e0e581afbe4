// The safetensors reader and writer: the exact byte layout of the spec, round
// trips, every malformed file refused with a message naming it, atomic writes.
#include "normlab/safetensors.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>

#include "ckpt_test_util.hpp"

namespace normlab {
namespace {

using testing::expect_error;
using testing::TempDir;

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A file from its header text and data section, exactly as given.
std::string raw_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

template <typename T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  std::memcpy(s.data(), std::data(values), s.size());
  return s;
}

SafetensorsFile sample_file() {
  SafetensorsFile f;
  f.metadata = {{"epoch", "3"}, {"model", "Linear(2,3)"}};
  f.tensors.push_back(
      {"0.weight", Dtype::F32, {2, 3}, bytes_of<float>({1, -2, 3.5f, 0, 1e-30f, 7})});
  f.tensors.push_back({"0.bias", Dtype::F64, {2}, bytes_of<double>({0.25, -1e300})});
  f.tensors.push_back({"1.num_batches_tracked", Dtype::I64, {}, bytes_of<int64_t>({42})});
  f.tensors.push_back({"empty", Dtype::F32, {0, 3}, ""});
  f.tensors.push_back({"mask", Dtype::BOOL, {3}, std::string("\1\0\1", 3)});
  f.tensors.push_back({"half", Dtype::F16, {1, 1}, std::string("\0\x3c", 2)});
  return f;
}

void expect_same(const SafetensorsFile& a, const SafetensorsFile& b) {
  EXPECT_EQ(a.metadata, b.metadata);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const SafeTensor& t : a.tensors) {
    const SafeTensor* u = b.find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(t.dtype, u->dtype) << t.name;
    EXPECT_EQ(t.shape, u->shape) << t.name;
    EXPECT_EQ(t.data, u->data) << t.name;  // bitwise
  }
}

TEST(Safetensors, DtypeTable) {
  EXPECT_EQ(dtype_size(Dtype::F32), 4u);
  EXPECT_EQ(dtype_size(Dtype::I64), 8u);
  EXPECT_EQ(dtype_size(Dtype::BF16), 2u);
  EXPECT_STREQ(dtype_name(Dtype::F64), "F64");
  EXPECT_EQ(dtype_from_name("I64"), Dtype::I64);
  EXPECT_EQ(dtype_from_name("f32"), std::nullopt);  // names are case-sensitive
  EXPECT_EQ(dtype_from_name("F4"), std::nullopt);   // sub-byte dtypes are not supported
}

TEST(Safetensors, ExactBytesOfASmallFile) {
  SafetensorsFile f;
  f.metadata = {{"k", "v"}};
  f.tensors.push_back({"t", Dtype::F32, {2}, bytes_of<float>({1.0f, -2.0f})});
  const std::string bytes = serialize_safetensors(f);
  std::string header =
      R"({"__metadata__":{"k":"v"},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  EXPECT_EQ(bytes, raw_file(header, bytes_of<float>({1.0f, -2.0f})));
  EXPECT_EQ((8 + header.size()) % 8, 0u);
}

TEST(Safetensors, RoundTripInMemoryIsBitwise) {
  const SafetensorsFile f = sample_file();
  const SafetensorsFile g = parse_safetensors(serialize_safetensors(f), "mem");
  expect_same(f, g);
  // The reader returns tensors in data order, which the writer keeps as given.
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (size_t i = 0; i < f.tensors.size(); ++i)
    if (!f.tensors[i].data.empty()) {
      EXPECT_EQ(g.tensors[i].name, f.tensors[i].name);
    }
}

TEST(Safetensors, RoundTripThroughAFile) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  write_safetensors(path, sample_file());
  expect_same(sample_file(), read_safetensors(path));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"x.safetensors"});
}

// Another writer may order entries freely, put __metadata__ last and pad with spaces.
TEST(Safetensors, ReadsAnyValidLayout) {
  const std::string header = R"({"b": {"data_offsets": [8, 16], "shape": [], "dtype": "I64"},)"
                             R"( "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                             R"( "z": {"dtype": "F32", "shape": [0], "data_offsets": [16, 16]},)"
                             R"( "__metadata__": {"format": "pt"}}     )";
  const auto f =
      parse_safetensors(raw_file(header, bytes_of<float>({5, 6}) + bytes_of<int64_t>({-9})), "mem");
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].name, "a");
  EXPECT_EQ(f.tensors[1].name, "b");
  EXPECT_EQ(f.find("b")->data, bytes_of<int64_t>({-9}));
  EXPECT_EQ(f.find("z")->shape, (Shape{0}));
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(parse_safetensors(raw_file("{}"), "mem").tensors.size(), 0u);
}

struct BadFile {
  const char* what;
  std::string bytes;
  std::vector<std::string> message;  // parts the error must contain
};

std::string one_tensor(const std::string& entry, const std::string& data) {
  return raw_file(R"({"t":)" + entry + "}", data);
}

std::vector<BadFile> bad_files() {
  const std::string valid = serialize_safetensors(sample_file());
  const std::string f32x2 = bytes_of<float>({1, 2});
  const char* ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"empty file", "", {"empty"}},
      {"shorter than the length field", std::string("\x10\0\0", 3), {"only 3 bytes"}},
      {"header length larger than the file", le64(1000) + "{}", {"header length 1000", "larger"}},
      {"header length over the cap", le64(200'000'000) + "{}", {"exceeds the limit"}},
      {"header length 2^64-1", le64(~0ull) + "{}", {"exceeds the limit"}},
      {"truncated in the header", valid.substr(0, 40), {"larger than"}},
      {"truncated in the data", valid.substr(0, valid.size() - 3), {"reach past the data section"}},
      {"trailing bytes", valid + "xyz", {"trailing bytes"}},
      {"garbage instead of a header", "\x89PNG\r\n\x1a\n\0\0\0\rIHDR", {"header length"}},
      {"header not starting with {", raw_file("[1, 2]  "), {"does not start with '{'"}},
      {"empty header", raw_file(""), {"does not start with '{'"}},
      {"invalid JSON", raw_file("{\"t\": {nope}"), {"not valid JSON"}},
      {"two JSON values", raw_file("{} {}"), {"not valid JSON"}},
      {"invalid UTF-8 in a name", raw_file("{\"\xff\": 1}"), {"not valid JSON"}},
      {"NUL padding", raw_file(std::string("{}\0\0", 4)), {"not valid JSON"}},
      {"entry not an object", raw_file(R"({"t": 5})"), {"'t'", "must be an object"}},
      {"unknown dtype",
       one_tensor(R"({"dtype":"F33","shape":[2],"data_offsets":[0,8]})", f32x2),
       {"'t'", "unknown dtype \"F33\""}},
      {"dtype not a string",
       one_tensor(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})", f32x2),
       {"dtype must be a string"}},
      {"missing data_offsets",
       one_tensor(R"({"dtype":"F32","shape":[2]})", f32x2),
       {"no 'data_offsets'"}},
      {"unknown field",
       one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})", f32x2),
       {"unknown field 'x'"}},
      {"negative dimension",
       one_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", f32x2),
       {"'t'", "non-negative integers", "-2"}},
      {"fractional dimension",
       one_tensor(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})", f32x2),
       {"non-negative integers"}},
      {"shape not an array",
       one_tensor(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})", f32x2),
       {"shape must be an array"}},
      {"shape nested",
       one_tensor(R"({"dtype":"F32","shape":[[2]],"data_offsets":[0,8]})", f32x2),
       {"nested deeper"}},
      {"shape product overflows",
       one_tensor(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})",
                  f32x2),
       {"more bytes than fit in 64 bits"}},
      {"shape product vs byte length",
       one_tensor(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", f32x2),
       {"'t'", "needs 12 bytes", "span 8"}},
      {"dtype vs byte length",
       one_tensor(R"({"dtype":"F64","shape":[2],"data_offsets":[0,8]})", f32x2),
       {"needs 16 bytes"}},
      {"offsets not a pair",
       one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})", f32x2),
       {"data_offsets must be [BEGIN, END]"}},
      {"offsets reversed",
       one_tensor(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})", f32x2),
       {"end before they begin"}},
      {"offsets past the end",
       one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})", f32x2),
       {"reach past the data section of 8 bytes"}},
      {"offsets with a hole",
       one_tensor(R"({"dtype":"F32","shape":[1],"data_offsets":[4,8]})", f32x2),
       {"hole"}},
      {"overlapping tensors",
       raw_file(std::string(R"({"a":)") + ok_entry +
                    R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                bytes_of<float>({1, 2, 3})),
       {"'b'", "overlaps tensor 'a'"}},
      {"duplicate tensor name",
       raw_file(std::string(R"({"t":)") + ok_entry + R"(,"t":)" + ok_entry + "}", f32x2),
       {"tensor 't' appears twice"}},
      {"duplicate field",
       one_tensor(R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})", f32x2),
       {"key 'dtype' twice"}},
      {"metadata not an object",
       raw_file(R"({"__metadata__": [1]})"),
       {"__metadata__ must be an object"}},
      {"metadata value not a string",
       raw_file(R"({"__metadata__": {"epoch": 3}})"),
       {"'epoch' must be a string"}},
  };
}

TEST(Safetensors, RefusesEveryMalformedFile) {
  for (const BadFile& bad : bad_files()) {
    SCOPED_TRACE(bad.what);
    std::vector<std::string> parts = bad.message;
    parts.push_back("bad.safetensors");
    expect_error([&] { parse_safetensors(bad.bytes, "bad.safetensors"); }, parts);
  }
}

TEST(Safetensors, ReadErrorsNameThePath) {
  TempDir dir;
  expect_error([&] { read_safetensors(dir.file("nope.safetensors")); },
               {dir.file("nope.safetensors"), "No such file"});
  expect_error([&] { read_safetensors(dir.path()); }, {"is a directory"});
  testing::write_bytes(dir.file("t.safetensors"), std::string("\x08\0\0\0", 4));
  expect_error([&] { read_safetensors(dir.file("t.safetensors")); },
               {dir.file("t.safetensors"), "only 4 bytes"});
}

TEST(Safetensors, WriterRefusesInconsistentTensors) {
  SafetensorsFile f;
  f.tensors.push_back({"t", Dtype::F32, {3}, bytes_of<float>({1, 2})});
  expect_error([&] { serialize_safetensors(f); }, {"'t'", "needs 12 bytes, got 8"});
  f.tensors[0] = {"__metadata__", Dtype::F32, {}, bytes_of<float>({1})};
  expect_error([&] { serialize_safetensors(f); }, {"reserved"});
  f.tensors[0] = {"t", Dtype::F32, {}, bytes_of<float>({1})};
  f.tensors.push_back(f.tensors[0]);
  expect_error([&] { serialize_safetensors(f); }, {"'t' is given twice"});
}

// --- atomic writes: a failed write leaves no temporary and the old file intact.

TEST(SafetensorsAtomicWrite, ReplacesTheFileAndLeavesNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, sample_file());
  SafetensorsFile f;
  f.tensors.push_back({"only", Dtype::F32, {1}, bytes_of<float>({9})});
  write_safetensors(path, f);
  expect_same(f, read_safetensors(path));
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

TEST(SafetensorsAtomicWrite, ADirectoryInTheWayIsLeftAlone) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::filesystem::create_directory(path);
  testing::write_bytes(dir.file("m.safetensors/keep"), "keep");
  expect_error([&] { write_safetensors(path, sample_file()); }, {"cannot write", path});
  EXPECT_EQ(testing::read_bytes(dir.file("m.safetensors/keep")), "keep");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

TEST(SafetensorsAtomicWrite, MissingDirectoryIsAnError) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/m.safetensors");
  expect_error([&] { write_safetensors(path, sample_file()); }, {"cannot write", path});
  EXPECT_TRUE(dir.entries().empty());
}

// The temporary's own path is blocked by a directory: the write fails before
// anything is renamed, and the existing file keeps its bytes.
TEST(SafetensorsAtomicWrite, FailedWriteKeepsTheExistingFile) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, sample_file());
  const std::string before = testing::read_bytes(path);
  const std::string blocker = path + ".tmp." + std::to_string(::getpid());
  std::filesystem::create_directory(blocker);
  SafetensorsFile f;
  f.tensors.push_back({"new", Dtype::F32, {1}, bytes_of<float>({1})});
  expect_error([&] { write_safetensors(path, f); }, {"cannot write", path});
  EXPECT_EQ(testing::read_bytes(path), before);
  std::filesystem::remove(blocker);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

TEST(SafetensorsAtomicWrite, InvalidContentNeverReachesTheDisk) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, sample_file());
  const std::string before = testing::read_bytes(path);
  SafetensorsFile f;
  f.tensors.push_back({"t", Dtype::F32, {3}, "short"});
  expect_error([&] { write_safetensors(path, f); }, {"cannot write", path, "'t'"});
  EXPECT_EQ(testing::read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

TEST(SafetensorsAtomicWrite, ReadOnlyDirectory) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_safetensors(path, sample_file());
  const std::string before = testing::read_bytes(path);
  ASSERT_EQ(::chmod(dir.path().c_str(), 0555), 0);
  expect_error([&] { write_safetensors(path, SafetensorsFile{}); },
               {"cannot write", path, "Permission denied"});
  ::chmod(dir.path().c_str(), 0755);
  EXPECT_EQ(testing::read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"m.safetensors"});
}

// The fuzzer's seeds (fuzz/corpus/checkpoint, written by fuzz_checkpoint.cpp's
// seed mode) must stay valid files, or the fuzzer starts from nothing.
TEST(Safetensors, FuzzSeedCorpusIsValid) {
  const std::filesystem::path dir =
      std::filesystem::path(NORMLAB_SOURCE_DIR) / "fuzz/corpus/checkpoint";
  int seeds = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    SCOPED_TRACE(entry.path().string());
    const SafetensorsFile f = read_safetensors(entry.path().string());
    expect_same(f, parse_safetensors(serialize_safetensors(f), "re-serialized"));
    ++seeds;
  }
  EXPECT_GE(seeds, 5);
}

}  // namespace
}  // namespace normlab
