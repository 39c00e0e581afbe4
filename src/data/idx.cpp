// IDX reader: raw or gzip bytes -> IdxArray, checking everything a file can get wrong.
// Both kinds are read through a ByteSource, so the header and size checks are
// written once; the gzip source decompresses on demand and never allocates
// more than the data actually present (a lying header cannot make it reserve 2 GiB).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iomanip>
#include <limits>
#include <sstream>

#include "normlab/data.hpp"
#include "normlab/error.hpp"

namespace normlab {
namespace {

std::string hex(uint64_t v, int digits) {
  std::ostringstream os;
  os << "0x" << std::hex << std::uppercase;
  os.width(digits);
  os.fill('0');
  os << v;
  return os.str();
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? " x " : "") + std::to_string(dims[i]);
  return s;
}

const char* type_name(int type) {
  switch (type) {
    case 0x08:
      return "unsigned byte";
    case 0x09:
      return "signed byte";
    case 0x0B:
      return "int16";
    case 0x0C:
      return "int32";
    case 0x0D:
      return "float32";
    case 0x0E:
      return "float64";
    default:
      return nullptr;
  }
}

// A stream of bytes: the file itself, or what its gzip stream decompresses to.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Copies up to n bytes to dst; fewer only at the end of the data.
  virtual size_t read(uint8_t* dst, size_t n) = 0;
  // Reads to the end and returns how many bytes were left.
  virtual uint64_t drain() = 0;
  // "the file" / "the decompressed data": what the size messages talk about.
  virtual const char* what() const = 0;
};

class RawSource final : public ByteSource {
 public:
  explicit RawSource(std::string_view bytes) : bytes_(bytes) {}
  size_t read(uint8_t* dst, size_t n) override {
    n = std::min(n, bytes_.size() - pos_);
    if (n) std::memcpy(dst, bytes_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  uint64_t drain() override {
    const uint64_t left = bytes_.size() - pos_;
    pos_ = bytes_.size();
    return left;
  }
  uint64_t remaining() const { return bytes_.size() - pos_; }
  const char* what() const override { return "the file"; }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

// Decompresses gzip members one after another (as `gzip -d` does) until the
// input ends. The input must end at the end of a member, maybe followed by zero
// padding (see after_member); anything else is a truncated or damaged stream or
// trailing garbage. zlib checks each member's CRC32 and length.
class GzipSource final : public ByteSource {
 public:
  GzipSource(std::string_view in, std::string_view name) : in_(in), name_(name) {
    std::memset(&zs_, 0, sizeof zs_);
    if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK)  // 16: gzip wrapper only
      fail(name_, ": cannot start zlib's decompressor (out of memory?)");
  }
  ~GzipSource() override { inflateEnd(&zs_); }
  GzipSource(const GzipSource&) = delete;
  GzipSource& operator=(const GzipSource&) = delete;

  size_t read(uint8_t* dst, size_t n) override {
    size_t done = 0;
    while (done < n && !finished_) {
      // avail_in / avail_out are 32-bit: feed and drain in chunks of at most 1 GiB.
      const size_t want = std::min<size_t>(n - done, size_t{1} << 30);
      zs_.next_out = dst + done;
      zs_.avail_out = static_cast<uInt>(want);
      refill();
      const int rc = inflate(&zs_, Z_NO_FLUSH);
      const size_t produced = want - zs_.avail_out;
      done += produced;
      out_total_ += produced;
      if (rc == Z_STREAM_END) {
        ++members_;
        after_member();
      } else if (rc == Z_BUF_ERROR) {  // no progress possible: the input is used up
        if (consumed() == in_.size()) truncated();
        damaged("no progress");
      } else if (rc != Z_OK) {
        damaged(zs_.msg ? zs_.msg : ("zlib error " + std::to_string(rc)).c_str());
      }
    }
    return done;
  }

  uint64_t drain() override {
    uint8_t scratch[1 << 16];
    uint64_t left = 0;
    while (!finished_) left += read(scratch, sizeof scratch);
    return left;
  }
  const char* what() const override { return "the decompressed data"; }
  size_t max_output() const { return 1032 * in_.size(); }  // deflate's largest expansion

 private:
  size_t consumed() const { return fed_ - zs_.avail_in; }
  // A member ended at consumed(). What may follow, as `gzip -d` reads it: the
  // end of the file; zero bytes up to the end of the file (padding that tape and
  // block-device writers add; gzip and Python's gzip accept it silently); or
  // another member (its magic 1F 8B). Anything else is refused: gzip would only
  // warn and drop it, but bytes nobody can account for mean a damaged file.
  void after_member() {
    const size_t at = consumed();
    const std::string_view rest = in_.substr(at);
    if (rest.find_first_not_of('\0') == std::string_view::npos) {
      finished_ = true;  // nothing left, or only zero padding
      return;
    }
    const auto byte = [&](size_t i) { return static_cast<uint8_t>(rest[i]); };
    if (byte(0) == 0x1F && (rest.size() == 1 || byte(1) == 0x8B)) {
      if (inflateReset(&zs_) != Z_OK) damaged("cannot restart the decompressor");
      return;  // another member (a lone 1F at the end is reported as truncated)
    }
    finished_ = true;  // the stream is over: a drain() after this error reads nothing more
    const size_t bad = at + rest.find_first_not_of('\0');
    std::ostringstream shown;  // up to four bytes in hex: "67 61 72 62"
    shown << std::hex << std::uppercase << std::setfill('0');
    for (size_t i = bad; i < in_.size() && i < bad + 4; ++i)
      shown << (i > bad ? " " : "") << std::setw(2) << int{static_cast<uint8_t>(in_[i])};
    fail(name_, ": trailing garbage after the end of gzip member ", members_, " (", out_total_,
         " decompressed bytes): byte offset ", bad, " of the ", in_.size(), "-byte file holds ",
         shown.str(), bad + 4 < in_.size() ? " ..." : "",
         ", neither the start of another gzip member (1F 8B) nor zero padding to the end",
         bad > at ? " (zero padding may only end the file)" : "");
  }
  void refill() {
    if (zs_.avail_in > 0 || fed_ == in_.size()) return;
    const size_t chunk = std::min<size_t>(in_.size() - fed_, size_t{1} << 30);
    zs_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in_.data() + fed_));
    zs_.avail_in = static_cast<uInt>(chunk);
    fed_ += chunk;
  }
  [[noreturn]] void truncated() const {
    fail(name_, ": truncated gzip stream: the ", in_.size(),
         "-byte file ends inside a compressed stream (no end-of-stream marker) after ", out_total_,
         " decompressed bytes");
  }
  [[noreturn]] void damaged(const std::string& why) const {
    fail(name_, ": damaged gzip stream at compressed byte ", consumed(), " of ", in_.size(),
         " (after ", out_total_, " decompressed bytes",
         members_ ? ", after the end of gzip member " + std::to_string(members_) : "", "): ", why);
  }

  std::string_view in_;
  std::string name_;
  z_stream zs_;
  size_t fed_ = 0;
  uint64_t out_total_ = 0;
  int members_ = 0;
  bool finished_ = false;
};

struct Header {
  std::vector<int64_t> dims;
  int64_t data_bytes = 0;    // product(dims)
  int64_t header_bytes = 0;  // 4 + 4 * rank
};

Header read_header(ByteSource& src, std::string_view name, int expected_rank) {
  uint8_t m[4];
  const size_t got = src.read(m, 4);
  if (got == 0) fail(name, ": empty: ", src.what(), " has 0 bytes, not an IDX file");
  if (got < 4)
    fail(name, ": truncated header: ", src.what(), " has ", got,
         " bytes, an IDX file starts with a 4-byte magic number");
  const uint32_t magic = (uint32_t{m[0]} << 24) | (uint32_t{m[1]} << 16) | (m[2] << 8) | m[3];
  if (m[0] != 0 || m[1] != 0)
    fail(name, ": bad magic number ", hex(magic, 8),
         ": not an IDX file (an IDX file starts with 0x0000, a type byte and a dims byte, "
         "e.g. 0x00000803 for images, 0x00000801 for labels)");
  const int type = m[2], rank = m[3];
  if (type != 0x08) {
    if (const char* t = type_name(type))
      fail(name, ": IDX data type ", hex(type, 2), " (", t, ", magic ", hex(magic, 8),
           ") is not supported: normlab reads unsigned-byte IDX files (type 0x08) only");
    fail(name, ": unknown IDX data type byte ", hex(type, 2), " in magic number ", hex(magic, 8),
         " (unsigned-byte files have 0x08)");
  }
  if (expected_rank > 0 && rank != expected_rank)
    fail(name, ": wrong number of dims: the header says ", rank, ", expected ", expected_rank,
         expected_rank == 1   ? " (labels)"
         : expected_rank == 3 ? " (images: N x H x W)"
                              : "");
  if (rank < 1 || rank > kIdxMaxRank)
    fail(name, ": wrong number of dims: the header says ", rank, ", supported are 1 to ",
         kIdxMaxRank);

  Header h;
  h.header_bytes = 4 + 4 * rank;
  uint8_t d[4 * kIdxMaxRank];
  const size_t got_dims = src.read(d, 4 * rank);
  if (got_dims < size_t(4 * rank))
    fail(name, ": truncated header: ", src.what(), " has ", 4 + got_dims, " bytes, a header with ",
         rank, " dims needs ", h.header_bytes);
  uint64_t product = 1;
  bool overflow = false;
  for (int i = 0; i < rank; ++i) {
    const uint8_t* p = d + 4 * i;
    const uint32_t v = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (p[2] << 8) | p[3];
    if (v == 0) fail(name, ": dim ", i, " of ", rank, " is 0: every dim must be at least 1");
    // IDX dims are signed 32-bit integers: a set top bit is a negative size.
    if (v > uint32_t(std::numeric_limits<int32_t>::max()))
      fail(name, ": dim ", i, " of ", rank, " is ", v, " (", hex(v, 8),
           "): more than 2^31-1, the largest IDX dim");
    h.dims.push_back(v);
    overflow = overflow || __builtin_mul_overflow(product, uint64_t{v}, &product);
  }
  if (overflow)
    fail(name, ": dims ", dims_str(h.dims),
         ": the product overflows 64 bits (the data size cannot be represented)");
  if (product > uint64_t(kIdxMaxBytes))
    fail(name, ": dims ", dims_str(h.dims), " make ", product,
         " bytes of data, more than the limit of ", kIdxMaxBytes, " bytes");
  h.data_bytes = static_cast<int64_t>(product);
  return h;
}

std::string announce(const Header& h) {
  std::ostringstream os;
  os << "the header announces " << dims_str(h.dims) << " = " << h.data_bytes
     << " data bytes after the " << h.header_bytes << "-byte header ("
     << h.header_bytes + h.data_bytes << " bytes in all)";
  return os.str();
}

IdxArray read_body(ByteSource& src, const Header& h, std::string_view name) {
  IdxArray out;
  out.dims = h.dims;
  const auto need = static_cast<size_t>(h.data_bytes);
  if (auto* raw = dynamic_cast<RawSource*>(&src)) {
    // Sizes are known up front: check before allocating.
    const uint64_t have = raw->remaining(), total = h.header_bytes + have;
    if (have < need)
      fail(name, ": truncated body: ", announce(h), ", but the file has ", total, " bytes");
    if (have > need)
      fail(name, ": too long: ", announce(h), ", but the file has ", total, " bytes (", have - need,
           " extra)");
    out.data.resize(need);
    src.read(out.data.data(), need);
    return out;
  }
  // Decompressing. Deflate expands at most 1032:1, so a first buffer of that
  // bound is safe against a lying header and holds a real file in one go;
  // beyond it (only reachable with a damaged stream) the buffer grows with the data.
  const auto* gz = static_cast<const GzipSource*>(&src);  // the only other ByteSource
  size_t got = 0;
  size_t cap = std::min(need, gz->max_output() + (size_t{1} << 16));
  while (got < need) {
    cap = std::min(need, std::max(cap, 2 * got));
    out.data.resize(cap);
    const size_t r = src.read(out.data.data() + got, cap - got);
    got += r;
    if (got < cap) break;
  }
  if (got < need)
    fail(name, ": truncated body: ", announce(h), ", but ", src.what(), " has ",
         h.header_bytes + got, " bytes");
  if (const uint64_t extra = src.drain())
    fail(name, ": too long: ", announce(h), ", but ", src.what(), " has ",
         h.header_bytes + h.data_bytes + extra, " bytes (", extra, " extra)");
  return out;
}

std::string read_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail(path, ": cannot stat: ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, ": is a directory, not an IDX file");
  if (!S_ISREG(st.st_mode))
    fail(path, ": not a regular file (a pipe, socket or device, which could block or never end)");
  // Read straight into the string: the size fstat gave (a file that changes
  // meanwhile is caught by the header's size checks).
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  size_t used = 0;
  while (used < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + used, bytes.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, ": cannot read: ", std::strerror(errno));
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
  }
  bytes.resize(used);
  return bytes;
}

}  // namespace

IdxArray read_idx_bytes(std::string_view bytes, std::string_view name, int expected_rank) {
  if (bytes.empty()) fail(name, ": empty file (0 bytes): not an IDX file");
  const bool gzip = bytes.size() >= 2 && uint8_t(bytes[0]) == 0x1F && uint8_t(bytes[1]) == 0x8B;
  if (!gzip) {
    RawSource src(bytes);
    const Header h = read_header(src, name, expected_rank);
    return read_body(src, h, name);
  }
  GzipSource src(bytes, name);
  try {
    const Header h = read_header(src, name, expected_rank);
    return read_body(src, h, name);
  } catch (const Error&) {
    // A damaged stream can decompress to a bad header or size: report the
    // damage (found by reading on to the CRC check) rather than its symptom.
    src.drain();
    throw;
  }
}

IdxArray read_idx(const std::string& path, int expected_rank) {
  return read_idx_bytes(read_file(path), path, expected_rank);
}

}  // namespace normlab
