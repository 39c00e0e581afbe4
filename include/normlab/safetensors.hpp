// The safetensors file format (https://github.com/huggingface/safetensors), read
// and written exactly as its spec says, so that PyTorch's tools load our files:
//
//   8 bytes    N, the header length, unsigned little-endian
//   N bytes    a JSON object, UTF-8, starting with '{', maybe padded with spaces:
//                {"__metadata__": {"key": "value", ...},            (optional, strings only)
//                 "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, ...}
//   the rest   the data section: every tensor's little-endian bytes, row-major;
//              offsets are relative to the start of this section, and the tensors
//              cover it exactly (no holes, no overlaps, nothing after the last).
//
// The reader trusts nothing: every check below fails with an Error naming the
// file (or the `source` given for bytes in memory) and the tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "normlab/tensor.hpp"

namespace normlab {

// The reference implementation refuses headers above 100 MB; so do we.
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

// The byte-sized dtypes of the spec (the sub-byte F4/F6 ones are refused as unknown).
enum class Dtype {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64
};

const char* dtype_name(Dtype dtype);                       // "F32"
size_t dtype_size(Dtype dtype);                            // bytes per element
std::optional<Dtype> dtype_from_name(std::string_view s);  // nullopt for unknown names

struct SafeTensor {
  std::string name;
  Dtype dtype = Dtype::F32;
  Shape shape;       // [] for a scalar
  std::string data;  // shape_numel(shape) * dtype_size(dtype) little-endian bytes
};

struct SafetensorsFile {
  std::vector<SafeTensor> tensors;  // the reader returns them in data-offset order
  std::map<std::string, std::string> metadata;

  const SafeTensor* find(std::string_view name) const;  // nullptr if absent
};

// Parses a whole file held in memory; `source` names it in messages ("<path>", "<fuzz input>").
SafetensorsFile parse_safetensors(std::string_view bytes, const std::string& source);
SafetensorsFile read_safetensors(const std::string& path);

// The file's bytes: header padded with spaces so the data starts 8-byte aligned,
// tensors in the order given. Throws on duplicate or reserved names and on data
// whose size does not match dtype and shape.
std::string serialize_safetensors(const SafetensorsFile& file);
// serialize_safetensors, then write_file_atomic: the old file survives any failure.
void write_safetensors(const std::string& path, const SafetensorsFile& file);

}  // namespace normlab
