// The IDX reader: good raw and gzip files, and a catalogue of bad ones. Every
// bad file is made here, written to a temporary directory and read back; the
// message must name the file and the specific problem with its numbers.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data_test_util.hpp"
#include "normlab/data.hpp"

namespace normlab {
namespace {

using testing::error_of;
using testing::gzip;
using testing::idx_file;
using testing::noise;
using testing::ramp;
using testing::TempDir;

TEST(Idx, ReadsRawImages) {
  TempDir dir;
  const std::string data = ramp(2 * 3 * 4);
  const IdxArray a = read_idx(dir.write("img", idx_file({2, 3, 4}, data)), 3);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(std::string(a.data.begin(), a.data.end()), data);
}

TEST(Idx, ReadsGzipLabels) {
  TempDir dir;
  const std::string data = ramp(1000, 10);
  const IdxArray a = read_idx(dir.write("lab.gz", gzip(idx_file({1000}, data))), 1);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{1000}));
  EXPECT_EQ(std::string(a.data.begin(), a.data.end()), data);
}

TEST(Idx, GzipRecognisedByContentNotName) {
  TempDir dir;
  const std::string file = idx_file({5}, ramp(5));
  EXPECT_EQ(read_idx(dir.write("a.gz", file)).data.size(), 5u);     // raw, named .gz
  EXPECT_EQ(read_idx(dir.write("b", gzip(file))).data.size(), 5u);  // gzip, no .gz
}

TEST(Idx, ReadsLargerGzipThroughBufferGrowth) {
  // 3 MiB of data: more than the first 1 MiB decompression buffer.
  TempDir dir;
  const std::string data = ramp(3 * 1024 * 1024 + 7, 251);
  const IdxArray a = read_idx(dir.write("big.gz", gzip(idx_file({3 * 1024 * 1024 + 7}, data))));
  ASSERT_EQ(a.data.size(), data.size());
  EXPECT_EQ(std::string(a.data.begin(), a.data.end()), data);
}

TEST(Idx, ReadsConcatenatedGzipMembers) {
  // `cat a.gz b.gz` is a valid gzip file holding both parts, as gzip -d reads it.
  TempDir dir;
  const std::string file = idx_file({2, 2, 3}, ramp(12));
  const IdxArray a = read_idx(dir.write("m.gz", gzip(file.substr(0, 9)) + gzip(file.substr(9))));
  EXPECT_EQ(std::string(a.data.begin(), a.data.end()), ramp(12));
}

TEST(Idx, IgnoresZeroPaddingAfterTheLastGzipMember) {
  // Tape and block-device writers pad to a block: gzip -d and Python's gzip
  // read such a file silently, whatever the amount of padding.
  TempDir dir;
  const std::string data = ramp(1000, 10);
  const std::string gz = gzip(idx_file({1000}, data));
  for (size_t pad : {size_t{1}, size_t{2}, size_t{512}, size_t{70000}}) {
    SCOPED_TRACE(pad);
    const IdxArray a = read_idx(dir.write("pad.gz", gz + std::string(pad, '\0')), 1);
    EXPECT_EQ(a.dims, (std::vector<int64_t>{1000}));
    EXPECT_EQ(std::string(a.data.begin(), a.data.end()), data);
  }
}

TEST(Idx, ReadsConcatenatedGzipMembersFollowedByZeroPadding) {
  TempDir dir;
  const std::string file = idx_file({2, 2, 3}, ramp(12));
  const std::string gz = gzip(file.substr(0, 9)) + gzip(file.substr(9)) + std::string(512, '\0');
  const IdxArray a = read_idx(dir.write("m.gz", gz), 3);
  EXPECT_EQ(a.dims, (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(std::string(a.data.begin(), a.data.end()), ramp(12));
}

TEST(Idx, AcceptsAnyRankUpToTheCapWhenNoneExpected) {
  TempDir dir;
  EXPECT_EQ(read_idx(dir.write("r4", idx_file({1, 2, 1, 2}, ramp(4)))).dims.size(), 4u);
}

struct BadCase {
  std::string label;  // what is wrong (also the file name)
  std::string bytes;
  int expected_rank;
  std::vector<std::string> expect;  // substrings of the message, besides the path
};

std::string with_byte(std::string s, size_t at, uint8_t value) {
  s[at] = char(value);
  return s;
}

std::string flip_byte(std::string s, size_t at) {
  s[at] = char(s[at] ^ 0x55);
  return s;
}

std::vector<BadCase> bad_cases() {
  const std::string img = idx_file({2, 3, 4}, ramp(24));  // 16-byte header + 24 bytes
  const std::string big_gz = gzip(idx_file({4000}, noise(4000)));
  std::vector<BadCase> c = {
      {"empty", "", 0, {"empty file (0 bytes)"}},
      {"header-truncated-in-magic",
       std::string("\0\0\x08", 3),
       0,
       {"truncated header", "has 3 bytes", "4-byte magic number"}},
      {"header-truncated-in-dims",
       img.substr(0, 10),
       3,
       {"truncated header", "has 10 bytes", "3 dims needs 16"}},
      {"body-truncated",
       img.substr(0, 30),
       3,
       {"truncated body", "2 x 3 x 4 = 24 data bytes", "40 bytes in all", "file has 30 bytes"}},
      {"too-long", img + "xyzw", 3, {"too long", "40 bytes in all", "file has 44 bytes (4 extra)"}},
      {"wrong-magic",
       "\x12\x34\x56\x78" + img.substr(4),
       0,
       {"bad magic number 0x12345678", "not an IDX file"}},
      {"type-float32",
       idx_file({2}, "12345678", 0x0D),
       0,
       {"data type 0x0D (float32", "magic 0x00000D01", "not supported", "unsigned-byte"}},
      {"type-int32", idx_file({1}, "1234", 0x0C), 0, {"0x0C (int32", "not supported"}},
      {"type-unknown", idx_file({1}, "1", 0x42), 0, {"unknown IDX data type byte 0x42"}},
      {"rank-2-for-labels",
       idx_file({2, 2}, "1234"),
       1,
       {"wrong number of dims", "says 2, expected 1 (labels)"}},
      {"rank-1-for-images",
       idx_file({4}, "1234"),
       3,
       {"wrong number of dims", "says 1, expected 3 (images"}},
      {"rank-0", idx_file({}, ""), 0, {"wrong number of dims", "says 0, supported are 1 to 4"}},
      {"rank-9",
       idx_file({1, 1, 1, 1, 1, 1, 1, 1, 1}, "1"),
       0,
       {"wrong number of dims", "says 9, supported are 1 to 4"}},
      {"dim-zero", idx_file({3, 0, 28}, ""), 3, {"dim 1 of 3 is 0", "at least 1"}},
      {"dim-negative",
       idx_file({0x80000000u}, ""),
       1,
       {"dim 0 of 1 is 2147483648 (0x80000000)", "2^31-1"}},
      {"dims-overflow",
       idx_file({0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF}, ""),
       3,
       {"dims 2147483647 x 2147483647 x 2147483647", "overflows 64 bits"}},
      {"dims-over-cap",
       idx_file({65536, 65536, 1}, ""),
       3,
       {"dims 65536 x 65536 x 1 make 4294967296 bytes", "limit of 2147483648"}},
      {"gzip-truncated",
       big_gz.substr(0, big_gz.size() / 2),
       1,
       {"truncated gzip stream", "no end-of-stream marker"}},
      {"gzip-truncated-in-trailer",
       big_gz.substr(0, big_gz.size() - 3),
       1,
       {"truncated gzip stream", "after 4008 decompressed bytes"}},
      {"gzip-bad-crc",
       flip_byte(big_gz, big_gz.size() - 6),
       1,
       {"damaged gzip stream", "incorrect data check"}},
      {"gzip-bad-length",
       flip_byte(big_gz, big_gz.size() - 2),
       1,
       {"damaged gzip stream", "incorrect length check"}},
      // Damage that garbles the IDX header: the gzip damage is reported, not the bad magic.
      {"gzip-damage-in-header",
       flip_byte(big_gz, 15),
       1,
       {"damaged gzip stream", "incorrect data check"}},
      // Byte 10 starts the deflate data (after gzip's 10-byte header): block type 3 is invalid.
      {"gzip-bad-block-type",
       with_byte(big_gz, 10, 0x07),
       1,
       {"damaged gzip stream", "invalid block type"}},
      {"gzip-trailing-garbage",
       big_gz + "garbage!",
       1,
       {"trailing garbage after the end of gzip member 1 (4008 decompressed bytes)",
        "byte offset " + std::to_string(big_gz.size()) + " of the " +
            std::to_string(big_gz.size() + 8) + "-byte file holds 67 61 72 62 ...",
        "neither the start of another gzip member (1F 8B) nor zero padding"}},
      {"gzip-zero-padding-then-garbage",
       big_gz + std::string(100, '\0') + "x",
       1,
       {"trailing garbage after the end of gzip member 1",
        "byte offset " + std::to_string(big_gz.size() + 100) + " of the " +
            std::to_string(big_gz.size() + 101) + "-byte file holds 78,",
        "zero padding may only end the file"}},
      {"gzip-two-members-then-garbage",
       big_gz + big_gz + "\x1F\x8C",
       1,
       {"trailing garbage after the end of gzip member 2",
        "byte offset " + std::to_string(2 * big_gz.size()), "holds 1F 8C"}},
      {"gzip-second-member-cut-after-magic", big_gz + "\x1F", 1, {"truncated gzip stream"}},
      {"gzip-empty-content", gzip(""), 0, {"empty: the decompressed data has 0 bytes"}},
      {"gzip-body-truncated",
       gzip(img.substr(0, 30)),
       3,
       {"truncated body", "40 bytes in all", "decompressed data has 30 bytes"}},
      {"gzip-too-long",
       gzip(img + "xyzw"),
       3,
       {"too long", "decompressed data has 44 bytes (4 extra)"}},
      {"gzip-wrong-magic",
       gzip("\x12\x34\x56\x78" + img.substr(4)),
       3,
       {"bad magic number 0x12345678"}},
  };
  return c;
}

TEST(IdxBadFiles, EachIsRefusedWithAMessageNamingFileAndProblem) {
  TempDir dir;
  for (const BadCase& bc : bad_cases()) {
    SCOPED_TRACE(bc.label);
    const std::string path = dir.write(bc.label, bc.bytes);
    const std::string msg = error_of([&] { read_idx(path, bc.expected_rank); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << "message does not start with the path: " << msg;
    for (const std::string& part : bc.expect)
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
  }
}

TEST(IdxBadFiles, InMemoryEntryPointUsesTheGivenName) {
  const std::string msg = error_of([] { read_idx_bytes("\x01\x02\x03\x04\x05", "<fuzz>"); });
  EXPECT_EQ(msg.rfind("<fuzz>: bad magic number 0x01020304", 0), 0u) << msg;
}

TEST(IdxBadFiles, MissingFileAndDirectory) {
  TempDir dir;
  const std::string missing = dir.path() + "/nope-idx1-ubyte";
  std::string msg = error_of([&] { read_idx(missing); });
  EXPECT_NE(msg.find(missing + ": cannot open: No such file or directory"), std::string::npos)
      << msg;
  msg = error_of([&] { read_idx(dir.path()); });
  EXPECT_NE(msg.find(dir.path() + ": is a directory"), std::string::npos) << msg;
}

TEST(IdxBadFiles, UnreadableFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: file permissions are not enforced";
  TempDir dir;
  const std::string path = dir.write("secret", idx_file({1}, "1"));
  ::chmod(path.c_str(), 0);
  const std::string msg = error_of([&] { read_idx(path); });
  EXPECT_NE(msg.find(path + ": cannot open: Permission denied"), std::string::npos) << msg;
}

}  // namespace
}  // namespace normlab
