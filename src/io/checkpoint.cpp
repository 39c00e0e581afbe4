#include "normlab/checkpoint.hpp"

#include <charconv>
#include <cmath>
#include <cstring>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "normlab/error.hpp"

namespace normlab {
namespace {

// Where in a run of floats the first non-finite value sits, and how many there are.
struct NonFinite {
  int64_t count = 0, first = -1;
  float first_value = 0;
};

NonFinite scan_non_finite(const char* bytes, int64_t n) {
  NonFinite r;
  for (int64_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, bytes + 4 * i, 4);
    if (!std::isfinite(v)) {
      if (r.count++ == 0) {
        r.first = i;
        r.first_value = v;
      }
    }
  }
  return r;
}

std::string describe(const NonFinite& r) {
  std::ostringstream os;
  os << r.count << " non-finite value" << (r.count == 1 ? "" : "s") << " (the first, at flat index "
     << r.first << ", is " << r.first_value << ")";
  return os.str();
}

// "'a', 'b', 'c' and 4 more"
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 6;
  std::string s;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > kShown) s += " and " + std::to_string(names.size() - kShown) + " more";
  return s;
}

struct Target {
  std::string key;
  const StateEntry<float>* entry;
};

// Every entry of every group under its full key, in order; throws on malformed
// entries and key collisions (programming errors of the caller).
std::vector<Target> targets_of(const std::vector<StateGroup>& groups, const std::string& where) {
  std::vector<Target> out;
  std::unordered_map<std::string, size_t> seen;
  for (const StateGroup& g : groups)
    for (const StateEntry<float>& e : g.entries) {
      const std::string key = g.prefix + e.name;
      if ((e.value == nullptr) == (e.count == nullptr))
        fail(where, ": state entry '", key, "' must have exactly one of a tensor and a count");
      if (!seen.emplace(key, out.size()).second)
        fail(where, ": state entry '", key, "' is given twice");
      out.push_back({key, &e});
    }
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

void check_tensor(const SafeTensor& t, const Target& target, const SafetensorsFile& file,
                  const std::string& source) {
  const std::string at = source + ": tensor '" + target.key + "'";
  if (target.entry->count) {
    if (t.dtype != Dtype::I64 || !t.shape.empty())
      fail(at, " is ", dtype_name(t.dtype), " of shape ", shape_str(t.shape),
           ", expected an I64 scalar of shape ()");
    int64_t v;
    std::memcpy(&v, t.data.data(), 8);
    if (v < 0) fail(at, " holds the count ", v, ", which cannot be negative");
    return;
  }
  if (t.dtype != Dtype::F32)
    fail(at, " has dtype ", dtype_name(t.dtype), ", expected F32 (normlab models are float32)");
  const Shape& want = target.entry->value->shape();
  if (t.shape != want)
    fail(at, " has shape ", shape_str(t.shape), " in the file but ", shape_str(want),
         " in the model", another_model_hint(file));
  const NonFinite bad = scan_non_finite(t.data.data(), shape_numel(t.shape));
  if (bad.count) fail(at, " holds ", describe(bad), "; refusing to load damaged weights");
}

}  // namespace

SafetensorsFile pack_state(const std::vector<StateGroup>& groups, const Metadata& meta,
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
  for (const Target& t : targets_of(groups, "cannot write " + dest)) {
    SafeTensor st;
    st.name = t.key;
    if (t.entry->count) {
      st.dtype = Dtype::I64;
      st.data.assign(reinterpret_cast<const char*>(t.entry->count), 8);
    } else {
      const Tensor<float>& v = *t.entry->value;
      const char* bytes = reinterpret_cast<const char*>(v.data());
      const NonFinite bad = scan_non_finite(bytes, v.numel());
      if (bad.count)
        fail("refusing to write ", dest, ": tensor '", t.key, "' holds ", describe(bad),
             "; the file on disk is left as it was");
      st.dtype = Dtype::F32;
      st.shape = v.shape();
      st.data.assign(bytes, static_cast<size_t>(v.numel()) * sizeof(float));
    }
    file.tensors.push_back(std::move(st));
  }
  return file;
}

void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<StateGroup>& groups,
                  const std::vector<std::string>& ignore_prefixes) {
  const std::vector<Target> targets = targets_of(groups, source);
  std::unordered_map<std::string, const SafeTensor*> in_file;
  for (const SafeTensor& t : file.tensors)
    if (!has_prefix(t.name, ignore_prefixes)) in_file.emplace(t.name, &t);

  // 1. The key sets must match exactly, as load_state_dict(strict=True).
  std::vector<std::string> missing, unexpected;
  std::unordered_set<std::string> wanted;
  for (const Target& t : targets) {
    wanted.insert(t.key);
    if (!in_file.count(t.key)) missing.push_back(t.key);
  }
  for (const SafeTensor& t : file.tensors)
    if (in_file.count(t.name) && !wanted.count(t.name)) unexpected.push_back(t.name);
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = source + ": the file does not match the model:";
    if (!missing.empty())
      msg += " missing " + std::to_string(missing.size()) + " tensor" +
             (missing.size() == 1 ? "" : "s") + " " + name_list(missing) + ";";
    if (!unexpected.empty())
      msg += " unexpected " + std::to_string(unexpected.size()) + " tensor" +
             (unexpected.size() == 1 ? "" : "s") + " " + name_list(unexpected) + ";";
    if (!missing.empty() && !unexpected.empty()) msg += another_model_hint(file).substr(1);
    if (msg.back() == ';') msg.pop_back();
    throw Error(msg);
  }

  // 2. Every tensor's dtype, shape and values, still without touching the model.
  for (const Target& t : targets) check_tensor(*in_file.at(t.key), t, file, source);

  // 3. Commit: sizes are verified, so these copies cannot fail half-way.
  for (const Target& t : targets) {
    const SafeTensor& st = *in_file.at(t.key);
    if (t.entry->count)
      std::memcpy(t.entry->count, st.data.data(), 8);
    else
      std::memcpy(t.entry->value->data(), st.data.data(), st.data.size());
  }
}

void save_model(const std::string& path, const std::vector<StateEntry<float>>& model,
                const Metadata& meta) {
  write_safetensors(path, pack_state({{"", model}}, meta, path));
}

void save_checkpoint(const std::string& path, const std::vector<StateEntry<float>>& model,
                     const std::vector<StateEntry<float>>& optimizer, const Metadata& meta) {
  write_safetensors(path, pack_state({{"", model}, {kOptimizerPrefix, optimizer}}, meta, path));
}

namespace {

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

Metadata load_model(const std::string& path, const std::vector<StateEntry<float>>& model) {
  const SafetensorsFile file = read_safetensors(path);
  check_version(file, path, false);
  unpack_state(file, path, {{"", model}}, {kOptimizerPrefix});
  return file.metadata;
}

Metadata load_checkpoint(const std::string& path, const std::vector<StateEntry<float>>& model,
                         const std::vector<StateEntry<float>>& optimizer) {
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
