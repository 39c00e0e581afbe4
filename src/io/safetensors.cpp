#include "normlab/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "normlab/atomic_file.hpp"
#include "normlab/error.hpp"

namespace normlab {

// The format is little-endian and tensors are copied byte for byte.
static_assert(std::endian::native == std::endian::little, "normlab assumes a little-endian host");

namespace {

using json = nlohmann::json;

struct DtypeInfo {
  Dtype dtype;
  const char* name;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {Dtype::BOOL, "BOOL", 1},       {Dtype::U8, "U8", 1},           {Dtype::I8, "I8", 1},
    {Dtype::F8_E5M2, "F8_E5M2", 1}, {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2},
    {Dtype::U16, "U16", 2},         {Dtype::F16, "F16", 2},         {Dtype::BF16, "BF16", 2},
    {Dtype::I32, "I32", 4},         {Dtype::U32, "U32", 4},         {Dtype::F32, "F32", 4},
    {Dtype::F64, "F64", 8},         {Dtype::I64, "I64", 8},         {Dtype::U64, "U64", 8},
};

const DtypeInfo& info(Dtype d) {
  for (const auto& i : kDtypes)
    if (i.dtype == d) return i;
  fail("safetensors: invalid Dtype value ", static_cast<int>(d));
}

uint64_t read_le64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// Byte count of a tensor, or nullopt if it does not fit in 64 bits.
std::optional<uint64_t> checked_nbytes(const std::vector<uint64_t>& dims, size_t elem) {
  uint64_t n = elem;
  for (uint64_t d : dims) {
    if (d != 0 && n > std::numeric_limits<uint64_t>::max() / d) return std::nullopt;
    n *= d;
  }
  return n;
}

// nlohmann::json keeps the last of two equal keys, but the spec forbids them (two
// tensors of one name would be ambiguous), so a parse callback tracks the keys of
// every open object. It also stops absurd nesting early: a valid header is at
// most three levels deep (root, entry, shape).
json parse_header(std::string_view text, const std::string& source) {
  std::vector<std::set<std::string>> open_objects;
  auto watch = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (depth > 2) fail(source, ": header is nested deeper than a safetensors header can be");
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        const auto& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second) {
          if (open_objects.size() == 1)
            fail(source, ": tensor '", key, "' appears twice in the header");
          fail(source, ": header has the key '", key, "' twice in one entry");
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), watch);
  } catch (const json::exception& e) {
    fail(source, ": header is not valid JSON (", e.what(), ")");
  }
}

std::map<std::string, std::string> parse_metadata(const json& m, const std::string& source) {
  if (!m.is_object()) fail(source, ": __metadata__ must be an object, got ", m.type_name());
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string())
      fail(source, ": __metadata__ value of '", k, "' must be a string, got ", v.type_name());
    out[k] = v.get<std::string>();
  }
  return out;
}

uint64_t unsigned_value(const json& v, const std::string& where) {
  if (!v.is_number_unsigned())
    fail(where, " must hold non-negative integers, got ", v.dump(), " (", v.type_name(), ")");
  return v.get<uint64_t>();
}

struct Entry {
  SafeTensor tensor;
  uint64_t begin = 0, end = 0;
};

Entry parse_entry(const std::string& name, const json& v, uint64_t data_size,
                  const std::string& source) {
  const std::string at = source + ": tensor '" + name + "'";
  if (!v.is_object()) fail(at, ": entry must be an object, got ", v.type_name());
  for (const auto& [k, unused] : v.items())
    if (k != "dtype" && k != "shape" && k != "data_offsets")
      fail(at, ": unknown field '", k, "' (expected dtype, shape, data_offsets)");
  for (const char* k : {"dtype", "shape", "data_offsets"})
    if (!v.contains(k)) fail(at, ": entry has no '", k, "'");

  Entry e;
  e.tensor.name = name;
  const json& dt = v["dtype"];
  if (!dt.is_string()) fail(at, ": dtype must be a string, got ", dt.dump());
  const auto dtype = dtype_from_name(dt.get_ref<const std::string&>());
  if (!dtype) fail(at, ": unknown dtype ", dt.dump());
  e.tensor.dtype = *dtype;

  const json& sh = v["shape"];
  if (!sh.is_array()) fail(at, ": shape must be an array, got ", sh.dump());
  std::vector<uint64_t> dims;
  for (const json& d : sh) {
    dims.push_back(unsigned_value(d, at + ": shape"));
    if (dims.back() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(at, ": shape dimension ", dims.back(), " is too large");
    e.tensor.shape.push_back(static_cast<int64_t>(dims.back()));
  }
  const auto nbytes = checked_nbytes(dims, dtype_size(*dtype));
  if (!nbytes) fail(at, ": shape ", sh.dump(), " has more bytes than fit in 64 bits");

  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail(at, ": data_offsets must be [BEGIN, END], got ", off.dump());
  e.begin = unsigned_value(off[0], at + ": data_offsets");
  e.end = unsigned_value(off[1], at + ": data_offsets");
  if (e.end < e.begin) fail(at, ": data_offsets ", off.dump(), " end before they begin");
  if (e.end > data_size)
    fail(at, ": data_offsets ", off.dump(), " reach past the data section of ", data_size,
         " bytes (file truncated?)");
  if (e.end - e.begin != *nbytes)
    fail(at, ": ", dtype_name(*dtype), " shape ", shape_str(e.tensor.shape), " needs ", *nbytes,
         " bytes but data_offsets ", off.dump(), " span ", e.end - e.begin);
  return e;
}

std::string read_whole_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot read ", path, ": ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail("cannot read ", path, ": ", std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail("cannot read ", path, ": it is a directory, not a file");
  if (!S_ISREG(st.st_mode))
    fail("cannot read ", path,
         ": not a regular file (a pipe, socket or device, which could block or never end)");
  std::string bytes;
  bytes.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("cannot read ", path, ": ", std::strerror(errno));
    }
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  return bytes;
}

}  // namespace

const char* dtype_name(Dtype dtype) {
  return info(dtype).name;
}
size_t dtype_size(Dtype dtype) {
  return info(dtype).size;
}

std::optional<Dtype> dtype_from_name(std::string_view s) {
  for (const auto& i : kDtypes)
    if (s == i.name) return i.dtype;
  return std::nullopt;
}

const SafeTensor* SafetensorsFile::find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source) {
  if (bytes.empty()) fail(source, ": file is empty, not a safetensors file");
  if (bytes.size() < 8)
    fail(source, ": file has only ", bytes.size(),
         " bytes, too short for the 8-byte header length of a safetensors file");
  const uint64_t header_len = read_le64(bytes.data());
  const uint64_t rest = bytes.size() - 8;
  if (header_len > kSafetensorsMaxHeader)
    fail(source, ": header length ", header_len, " exceeds the limit of ", kSafetensorsMaxHeader,
         " bytes (not a safetensors file?)");
  if (header_len > rest)
    fail(source, ": header length ", header_len, " is larger than the ", rest,
         " bytes after it (file truncated, or not a safetensors file)");
  const std::string_view header_text = bytes.substr(8, header_len);
  if (header_text.empty() || header_text[0] != '{')
    fail(source, ": header does not start with '{' (not a safetensors file?)");
  // nlohmann::json stops at a NUL byte as at the end of input, so "{}\0junk"
  // would pass; raw NULs are never valid JSON.
  if (const size_t nul = header_text.find('\0'); nul != std::string_view::npos)
    fail(source, ": header is not valid JSON (a NUL byte at offset ", nul, ")");
  const json header = parse_header(header_text, source);
  if (!header.is_object()) fail(source, ": header is not a JSON object");

  const std::string_view data = bytes.substr(8 + header_len);
  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__")
      file.metadata = parse_metadata(value, source);
    else
      entries.push_back(parse_entry(key, value, data.size(), source));
  }

  // The tensors must tile the data section exactly: sorted by offset, each
  // begins where the previous one ends, and the last ends at the file's end.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const std::string* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < expected)
      fail(source, ": tensor '", e.tensor.name, "' at bytes [", e.begin, ", ", e.end,
           ") overlaps tensor '", *previous, "' which ends at ", expected);
    if (e.begin > expected)
      fail(source, ": tensor '", e.tensor.name, "' begins at byte ", e.begin,
           " leaving a hole after byte ", expected, " of the data section");
    expected = e.end;
    previous = &e.tensor.name;
  }
  if (expected != data.size())
    fail(source, ": the data section has ", data.size(), " bytes but its tensors cover only ",
         expected, " (trailing bytes)");

  file.tensors.reserve(entries.size());
  for (Entry& e : entries) {
    e.tensor.data.assign(data.substr(e.begin, e.end - e.begin));
    file.tensors.push_back(std::move(e.tensor));
  }
  return file;
}

SafetensorsFile read_safetensors(const std::string& path) {
  return parse_safetensors(read_whole_file(path), path);
}

std::string serialize_safetensors(const SafetensorsFile& file) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : file.metadata) m[k] = v;
  }
  std::set<std::string_view> names;
  uint64_t offset = 0;
  for (const SafeTensor& t : file.tensors) {
    if (t.name == "__metadata__")
      fail("safetensors: '__metadata__' is reserved, not a tensor name");
    if (!names.insert(t.name).second) fail("safetensors: tensor '", t.name, "' is given twice");
    const uint64_t expected = static_cast<uint64_t>(shape_numel(t.shape)) * dtype_size(t.dtype);
    if (t.data.size() != expected)
      fail("safetensors: tensor '", t.name, "' of ", dtype_name(t.dtype), " shape ",
           shape_str(t.shape), " needs ", expected, " bytes, got ", t.data.size());
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + expected}}};
    offset += expected;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("safetensors: cannot encode the header (", e.what(), ")");
  }
  // Spaces after the JSON let the data start 8-byte aligned, as the reference writer does.
  text.append((8 - text.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((text.size() >> (8 * i)) & 0xff));
  out += text;
  for (const SafeTensor& t : file.tensors) out += t.data;
  return out;
}

void write_safetensors(const std::string& path, const SafetensorsFile& file) {
  std::string bytes;
  try {
    bytes = serialize_safetensors(file);
  } catch (const Error& e) {
    fail("cannot write ", path, ": ", e.what());
  }
  write_file_atomic(path, bytes);
}

}  // namespace normlab
