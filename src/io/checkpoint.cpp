#include "normlab/checkpoint.hpp"

#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "normlab/error.hpp"

namespace normlab {
namespace {

// Where in a run of values the first non-finite one sits, and how many there are.
struct NonFinite {
  int64_t count = 0, first = -1;
  double first_value = 0;
};

template <typename T>
NonFinite scan_non_finite(const T* v, int64_t n) {
  NonFinite r;
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]) && r.count++ == 0) {
      r.first = i;
      r.first_value = static_cast<double>(v[i]);
    }
  return r;
}

std::string describe(const NonFinite& r) {
  std::ostringstream os;
  os << r.count << " non-finite value" << (r.count == 1 ? "" : "s") << " (the first, at flat index "
     << r.first << ", is " << r.first_value << ")";
  return os.str();
}

template <typename T>
constexpr Dtype dtype_of() {
  return sizeof(T) == 4 ? Dtype::F32 : Dtype::F64;
}

// IEEE binary16 -> float, exactly (every half is a float).
float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {        // subnormal: mant * 2^-24
    const float f = static_cast<float>(mant) * 0x1p-24f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// bfloat16 is the top half of a float.
float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// The i-th element of a floating-point safetensors tensor, as a double (exact for all four).
double element(const SafeTensor& t, int64_t i) {
  const char* p = t.data.data();
  switch (t.dtype) {
    case Dtype::F32: {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case Dtype::F64: {
      double v;
      std::memcpy(&v, p + 8 * i, 8);
      return v;
    }
    case Dtype::F16: {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return half_to_float(v);
    }
    default: {  // BF16
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      return bf16_to_float(v);
    }
  }
}

template <typename T>
Tensor<T> tensor_from(const SafeTensor& t, const std::string& at) {
  Tensor<T> out(t.shape);
  const int64_t n = out.numel();
  if (t.dtype == dtype_of<T>()) {
    if (n > 0) std::memcpy(out.data(), t.data.data(), t.data.size());  // empty: data() is null
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double v = element(t, i);
      // Checked before the cast: converting a finite double beyond float's
      // range is undefined behaviour, not inf.
      if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<T>::max()))
        fail(at, " holds ", v, " at flat index ", i, ", beyond the range of float (",
             dtype_name(t.dtype), " in the file); refusing to load it as inf");
      out[i] = static_cast<T>(v);
    }
  }
  const NonFinite bad = scan_non_finite(out.data(), n);
  if (bad.count) fail(at, " holds ", describe(bad), "; refusing to load damaged weights");
  return out;
}

bool has_prefix(const std::string& s, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes)
    if (s.compare(0, p.size(), p) == 0) return true;
  return false;
}

std::string another_model_hint(const SafetensorsFile& file) {
  const auto it = file.metadata.find(kModelSpecKey);
  std::string hint = "; the file was probably written for another model";
  if (it != file.metadata.end()) hint += " (its metadata says model '" + it->second + "')";
  return hint;
}

template <typename T>
std::vector<StateEntry<T>> prefixed(const BasicStateGroup<T>& g) {
  std::vector<StateEntry<T>> out = g.entries;
  for (auto& e : out) e.name = g.prefix + e.name;
  return out;
}

template <typename T>
SafetensorsFile pack(const std::vector<BasicStateGroup<T>>& groups, const Metadata& meta,
                     const std::string& dest, const StateDictOptions& options) {
  StateDict<T> all;
  for (const auto& g : groups) {
    // Only the model's keys follow the export option; an optimizer's stay normlab's.
    const StateDict<T> sd =
        state_dict(prefixed(g), g.prefix.empty() ? options : StateDictOptions{});
    for (const auto& item : sd) {
      if (all.contains(item.key))
        fail("cannot write ", dest, ": state entry '", item.key, "' is given twice");
      all.insert(item.key, item.value);
    }
  }
  return state_dict_to_safetensors(all, meta, dest);
}

template <typename T>
void unpack(const SafetensorsFile& file, const std::string& source,
            const std::vector<BasicStateGroup<T>>& groups,
            const std::vector<std::string>& ignore_prefixes) {
  // Each key goes to the group with the longest matching prefix ("" takes the rest).
  const StateDict<T> all = state_dict_from_safetensors<T>(file, source, ignore_prefixes);
  std::vector<StateDict<T>> parts(groups.size());
  std::vector<std::string> unassigned;
  for (const auto& item : all) {
    size_t best = groups.size();
    for (size_t g = 0; g < groups.size(); ++g)
      if (item.key.compare(0, groups[g].prefix.size(), groups[g].prefix) == 0 &&
          (best == groups.size() || groups[g].prefix.size() > groups[best].prefix.size()))
        best = g;
    if (best == groups.size())
      unassigned.push_back(item.key);
    else
      parts[best].insert(item.key, item.value);
  }
  if (!unassigned.empty())
    fail(source, ": the file does not match the model: unexpected key '", unassigned[0], "'");
  std::vector<std::vector<StateEntry<T>>> targets;
  for (size_t g = 0; g < groups.size(); ++g) {
    targets.push_back(prefixed(groups[g]));
    LoadOptions opt;
    opt.source = source;
    opt.subject = "the file";
    opt.hint = another_model_hint(file);
    opt.pytorch_compat = groups[g].prefix.empty();
    check_state_dict(targets.back(), parts[g], opt);
  }
  // Everything is verified: these copies cannot fail half-way.
  for (size_t g = 0; g < groups.size(); ++g) copy_state_dict(targets[g], parts[g]);
}

void check_version(const SafetensorsFile& file, const std::string& path, bool required) {
  const auto it = file.metadata.find(kFormatVersionKey);
  if (it == file.metadata.end()) {
    if (required)
      fail(path, ": not a normlab checkpoint (its metadata has no '", kFormatVersionKey, "')");
    return;
  }
  if (it->second != kFormatVersion)
    fail(path, ": written in normlab checkpoint format ", it->second, ", this build reads format ",
         kFormatVersion);
}

}  // namespace

template <typename T>
SafetensorsFile state_dict_to_safetensors(const StateDict<T>& sd, const Metadata& meta,
                                          const std::string& dest) {
  SafetensorsFile file;
  for (const auto& [k, v] : meta) {
    if (k == "format" || k == kFormatVersionKey)
      fail("cannot write ", dest, ": metadata key '", k, "' is reserved for normlab");
    file.metadata[k] = v;
  }
  // "format": "pt" is what safetensors.torch.save_file writes.
  file.metadata.emplace("format", std::string("pt"));
  file.metadata.emplace(kFormatVersionKey, std::string(kFormatVersion));
  for (const auto& item : sd) {
    SafeTensor st;
    st.name = item.key;
    if (const int64_t* count = std::get_if<int64_t>(&item.value)) {
      st.dtype = Dtype::I64;
      st.data.assign(reinterpret_cast<const char*>(count), 8);
    } else {
      const Tensor<T>& v = std::get<Tensor<T>>(item.value);
      const NonFinite bad = scan_non_finite(v.data(), v.numel());
      if (bad.count)
        fail("refusing to write ", dest, ": tensor '", item.key, "' holds ", describe(bad),
             "; the file on disk is left as it was");
      st.dtype = dtype_of<T>();
      st.shape = v.shape();
      st.data.assign(reinterpret_cast<const char*>(v.data()),
                     static_cast<size_t>(v.numel()) * sizeof(T));
    }
    file.tensors.push_back(std::move(st));
  }
  return file;
}

template <typename T>
StateDict<T> state_dict_from_safetensors(const SafetensorsFile& file, const std::string& source,
                                         const std::vector<std::string>& ignore_prefixes) {
  StateDict<T> sd;
  for (const SafeTensor& t : file.tensors) {
    if (has_prefix(t.name, ignore_prefixes)) continue;
    const std::string at = source + ": tensor '" + t.name + "'";
    switch (t.dtype) {
      case Dtype::F32:
      case Dtype::F64:
      case Dtype::F16:
      case Dtype::BF16:
        sd.insert(t.name, tensor_from<T>(t, at));
        break;
      case Dtype::I64: {
        if (!t.shape.empty() && t.shape != Shape{1})
          fail(at, " is I64 of shape ", shape_str(t.shape),
               ": normlab reads I64 only as a count of shape () (num_batches_tracked, step)");
        int64_t v;
        std::memcpy(&v, t.data.data(), 8);
        if (v < 0) fail(at, " holds the count ", v, ", which cannot be negative");
        sd.insert(t.name, v);
        break;
      }
      default:
        fail(at, " has dtype ", dtype_name(t.dtype),
             ": normlab reads tensors stored as F32, F64, F16 or BF16 (converted to ",
             sizeof(T) == 4 ? "float32" : "float64", ") and counts stored as I64");
    }
  }
  return sd;
}

SafetensorsFile pack_state(const std::vector<BasicStateGroup<float>>& groups, const Metadata& meta,
                           const std::string& dest, const StateDictOptions& options) {
  return pack(groups, meta, dest, options);
}
SafetensorsFile pack_state(const std::vector<BasicStateGroup<double>>& groups, const Metadata& meta,
                           const std::string& dest, const StateDictOptions& options) {
  return pack(groups, meta, dest, options);
}

void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<BasicStateGroup<float>>& groups,
                  const std::vector<std::string>& ignore_prefixes) {
  unpack(file, source, groups, ignore_prefixes);
}
void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<BasicStateGroup<double>>& groups,
                  const std::vector<std::string>& ignore_prefixes) {
  unpack(file, source, groups, ignore_prefixes);
}

template <typename T>
void save_model(const std::string& path, const std::vector<StateEntry<T>>& model,
                const Metadata& meta, const StateDictOptions& options) {
  write_safetensors(path, pack_state({{"", model}}, meta, path, options));
}

template <typename T>
void save_checkpoint(const std::string& path, const std::vector<StateEntry<T>>& model,
                     const std::vector<StateEntry<T>>& optimizer, const Metadata& meta) {
  write_safetensors(path, pack_state({{"", model}, {kOptimizerPrefix, optimizer}}, meta, path));
}

template <typename T>
Metadata load_model(const std::string& path, const std::vector<StateEntry<T>>& model) {
  const SafetensorsFile file = read_safetensors(path);
  check_version(file, path, false);
  unpack_state(file, path, {{"", model}}, {kOptimizerPrefix});
  return file.metadata;
}

template <typename T>
Metadata load_checkpoint(const std::string& path, const std::vector<StateEntry<T>>& model,
                         const std::vector<StateEntry<T>>& optimizer) {
  const SafetensorsFile file = read_safetensors(path);
  check_version(file, path, true);
  if (!optimizer.empty()) {
    bool has_optimizer = false;
    for (const SafeTensor& t : file.tensors)
      has_optimizer |= t.name.compare(0, std::strlen(kOptimizerPrefix), kOptimizerPrefix) == 0;
    if (!has_optimizer)
      fail(path,
           ": holds no optimizer state (a model-only file?); resuming needs the "
           "checkpoint file a run writes beside it (checkpoint.safetensors)");
  }
  unpack_state(file, path, {{"", model}, {kOptimizerPrefix, optimizer}});
  return file.metadata;
}

#define NORMLAB_CHECKPOINT(T)                                                                      \
  template SafetensorsFile state_dict_to_safetensors(const StateDict<T>&, const Metadata&,         \
                                                     const std::string&);                          \
  template StateDict<T> state_dict_from_safetensors(const SafetensorsFile&, const std::string&,    \
                                                    const std::vector<std::string>&);              \
  template void save_model(const std::string&, const std::vector<StateEntry<T>>&, const Metadata&, \
                           const StateDictOptions&);                                               \
  template void save_checkpoint(const std::string&, const std::vector<StateEntry<T>>&,             \
                                const std::vector<StateEntry<T>>&, const Metadata&);               \
  template Metadata load_model(const std::string&, const std::vector<StateEntry<T>>&);             \
  template Metadata load_checkpoint(const std::string&, const std::vector<StateEntry<T>>&,         \
                                    const std::vector<StateEntry<T>>&);

NORMLAB_CHECKPOINT(float)
NORMLAB_CHECKPOINT(double)

const std::string& metadata_string(const Metadata& meta, const std::string& key,
                                   const std::string& source) {
  const auto it = meta.find(key);
  if (it == meta.end()) fail(source, ": metadata has no '", key, "'");
  return it->second;
}

int64_t metadata_int(const Metadata& meta, const std::string& key, const std::string& source) {
  const std::string& s = metadata_string(meta, key, source);
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty())
    fail(source, ": metadata '", key, "' should be an integer, got '", s, "'");
  return v;
}

}  // namespace normlab
