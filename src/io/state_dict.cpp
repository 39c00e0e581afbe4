#include "normlab/state_dict.hpp"

#include <algorithm>
#include <cstring>

#include "normlab/error.hpp"

namespace normlab {
namespace {

constexpr std::string_view kWeightG = "weight_g", kWeightV = "weight_v";
constexpr std::string_view kOriginal0 = "parametrizations.weight.original0";
constexpr std::string_view kOriginal1 = "parametrizations.weight.original1";
constexpr std::string_view kNumBatchesTracked = "num_batches_tracked";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// "P." for a key "P.<suffix>" (or "" for the key "<suffix>"), if the key is one of those.
std::optional<std::string> module_prefix(std::string_view key, std::string_view suffix) {
  if (key == suffix) return std::string();
  if (ends_with(key, suffix) && key[key.size() - suffix.size() - 1] == '.')
    return std::string(key.substr(0, key.size() - suffix.size()));
  return std::nullopt;
}

// "'a', 'b', 'c' and 4 more"
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 6;
  std::string s;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > kShown) s += " and " + std::to_string(names.size() - kShown) + " more";
  return s;
}

std::string keys_phrase(const char* what, const std::vector<std::string>& keys) {
  return std::string(" ") + what + " " + std::to_string(keys.size()) + " key" +
         (keys.size() == 1 ? "" : "s") + " " + name_list(keys) + ";";
}

template <typename T>
const char* kind_of(const StateValue<T>& v) {
  return std::holds_alternative<int64_t>(v) ? "an int64 count" : "a tensor";
}

}  // namespace

// ---------------------------------------------------------------- StateDict

template <typename T>
void StateDict<T>::insert(std::string key, StateValue<T> value) {
  if (contains(key)) fail("state dict: key '", key, "' is given twice");
  index_.emplace(key, items_.size());
  items_.push_back({std::move(key), std::move(value)});
}

template <typename T>
const StateValue<T>* StateDict<T>::find(std::string_view key) const {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].value;
}

template <typename T>
StateValue<T>* StateDict<T>::find(std::string_view key) {
  const auto it = index_.find(key);
  return it == index_.end() ? nullptr : &items_[it->second].value;
}

template <typename T>
const Tensor<T>& StateDict<T>::tensor(std::string_view key) const {
  const StateValue<T>* v = find(key);
  if (!v) fail("state dict: no key '", key, "'");
  if (!std::holds_alternative<Tensor<T>>(*v))
    fail("state dict: '", key, "' is an int64 count, not a tensor");
  return std::get<Tensor<T>>(*v);
}

template <typename T>
Tensor<T>& StateDict<T>::tensor(std::string_view key) {
  return const_cast<Tensor<T>&>(std::as_const(*this).tensor(key));
}

template <typename T>
int64_t StateDict<T>::count(std::string_view key) const {
  const StateValue<T>* v = find(key);
  if (!v) fail("state dict: no key '", key, "'");
  if (!std::holds_alternative<int64_t>(*v))
    fail("state dict: '", key, "' is a tensor of shape ",
         shape_str(std::get<Tensor<T>>(*v).shape()), ", not an int64 count");
  return std::get<int64_t>(*v);
}

template <typename T>
bool StateDict<T>::erase(std::string_view key) {
  const auto it = index_.find(key);
  if (it == index_.end()) return false;
  const size_t at = it->second;
  index_.erase(it);
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(at));
  for (auto& [k, i] : index_)
    if (i > at) --i;
  return true;
}

template <typename T>
void StateDict<T>::rename(std::string_view from, std::string to) {
  const auto it = index_.find(from);
  if (it == index_.end()) fail("state dict: cannot rename '", from, "': no such key");
  if (contains(to)) fail("state dict: cannot rename '", from, "' to '", to, "': already present");
  const size_t at = it->second;
  index_.erase(it);
  index_.emplace(to, at);
  items_[at].key = std::move(to);
}

template <typename T>
std::vector<std::string> StateDict<T>::keys() const {
  std::vector<std::string> k;
  k.reserve(items_.size());
  for (const Item& i : items_) k.push_back(i.key);
  return k;
}

// ---------------------------------------------------------------- names

const char* weight_norm_keys_name(WeightNormKeys keys) {
  return keys == WeightNormKeys::Legacy ? "legacy" : "parametrizations";
}

std::optional<WeightNormKeys> weight_norm_keys_from_name(std::string_view name) {
  if (name == "legacy") return WeightNormKeys::Legacy;
  if (name == "parametrizations") return WeightNormKeys::Parametrizations;
  return std::nullopt;
}

// ---------------------------------------------------------------- state_dict()

template <typename T>
StateDict<T> state_dict(const std::vector<StateEntry<T>>& entries,
                        const StateDictOptions& options) {
  StateDict<T> sd;
  for (const StateEntry<T>& e : entries) {
    if ((e.value == nullptr) == (e.count == nullptr))
      fail("state_dict: entry '", e.name, "' must have exactly one of a tensor and a count");
    if (e.count)
      sd.insert(e.name, *e.count);
    else
      sd.insert(e.name, *e.value);  // an owning copy, also of a tensor bound to a block
  }
  if (options.weight_norm_keys == WeightNormKeys::Parametrizations) {
    for (const std::string& key : sd.keys()) {
      const auto p = module_prefix(key, kWeightG);
      if (!p || !sd.contains(*p + std::string(kWeightV))) continue;
      sd.rename(key, *p + std::string(kOriginal0));
      sd.rename(*p + std::string(kWeightV), *p + std::string(kOriginal1));
    }
  }
  return sd;
}

template <typename T>
StateDict<T> state_dict(Layer<T>& model, const StateDictOptions& options) {
  return state_dict(model.state(), options);
}

// ---------------------------------------------------------------- loading

template <typename T>
LoadResult check_state_dict(const std::vector<StateEntry<T>>& target, StateDict<T>& sd,
                            const LoadOptions& options) {
  LoadResult result;
  std::map<std::string, const StateEntry<T>*, std::less<>> wanted;
  for (const StateEntry<T>& e : target) {
    if ((e.value == nullptr) == (e.count == nullptr))
      fail(options.source, ": model entry '", e.name,
           "' must have exactly one of a tensor and a count");
    if (!wanted.emplace(e.name, &e).second)
      fail(options.source, ": the model has the key '", e.name, "' twice");
  }

  // 0. The deviations PyTorch accepts too (state_dict.hpp, docs/checkpoints.md).
  if (options.pytorch_compat) {
    for (const StateEntry<T>& e : target) {
      // Weight norm under torch.nn.utils.parametrizations' names: both or neither,
      // as PyTorch's own _weight_norm_compat_hook converts the other way.
      if (const auto p = module_prefix(e.name, kWeightG)) {
        const std::string g = *p + std::string(kWeightG), v = *p + std::string(kWeightV);
        const std::string o0 = *p + std::string(kOriginal0), o1 = *p + std::string(kOriginal1);
        if (wanted.count(v) && !sd.contains(g) && !sd.contains(v) && sd.contains(o0) &&
            sd.contains(o1) && !wanted.count(o0) && !wanted.count(o1)) {
          sd.rename(o0, g);
          sd.rename(o1, v);
          result.renamed_keys.push_back({o0, g});
          result.renamed_keys.push_back({o1, v});
        }
      }
      // BatchNorm's _load_from_state_dict: without the count (no version-2
      // metadata, which a safetensors file never has) it keeps its own.
      if (e.count && module_prefix(e.name, kNumBatchesTracked) && !sd.contains(e.name)) {
        sd.insert(e.name, *e.count);
        result.kept_counts.push_back(e.name);
      }
      // Module._load_from_state_dict: "loading 1-dim tensor from 0.3.* to version 0.4+".
      if (e.value && e.value->rank() == 0)
        if (StateValue<T>* v = sd.find(e.name); v && std::holds_alternative<Tensor<T>>(*v)) {
          Tensor<T>& t = std::get<Tensor<T>>(*v);
          if (t.shape() == Shape{1}) {
            t.reshape({});
            result.scalars_from_shape_1.push_back(e.name);
          }
        }
    }
  }

  // 1. The key sets, as load_state_dict(strict=True).
  std::vector<std::string> missing, unexpected;
  for (const StateEntry<T>& e : target)
    if (!sd.contains(e.name)) missing.push_back(e.name);
  for (const auto& item : sd)
    if (!wanted.count(item.key)) unexpected.push_back(item.key);
  if (options.strict && (!missing.empty() || !unexpected.empty())) {
    std::string msg = options.source + ": " + options.subject + " does not match the model:";
    if (!missing.empty()) msg += keys_phrase("missing", missing);
    if (!unexpected.empty()) msg += keys_phrase("unexpected", unexpected);
    if (!missing.empty() && !unexpected.empty() && !options.hint.empty())
      msg += options.hint.substr(options.hint[0] == ';' ? 1 : 0);
    if (msg.back() == ';') msg.pop_back();
    throw Error(msg);
  }
  if (!options.strict) {
    result.missing_keys = std::move(missing);
    result.unexpected_keys = std::move(unexpected);
  }

  // 2. Kinds and shapes of the keys both have (PyTorch checks shapes even when not strict).
  for (const StateEntry<T>& e : target) {
    const StateValue<T>* v = sd.find(e.name);
    if (!v) continue;
    const std::string at = options.source + ": '" + e.name + "'";
    if (e.count) {
      if (!std::holds_alternative<int64_t>(*v))
        fail(at, " is a tensor of shape ", shape_str(std::get<Tensor<T>>(*v).shape()), " in ",
             options.subject,
             ", but an int64 count in the model (expected an I64 scalar of shape ())");
      continue;
    }
    if (!std::holds_alternative<Tensor<T>>(*v))
      fail(at, " is an int64 count in ", options.subject, ", but a tensor of shape ",
           shape_str(e.value->shape()), " in the model");
    const Shape& have = std::get<Tensor<T>>(*v).shape();
    if (have != e.value->shape())
      fail(at, " has shape ", shape_str(have), " in ", options.subject, " but ",
           shape_str(e.value->shape()), " in the model", options.hint);
  }
  return result;
}

template <typename T>
void copy_state_dict(const std::vector<StateEntry<T>>& target, const StateDict<T>& sd) {
  for (const StateEntry<T>& e : target) {
    const StateValue<T>* v = sd.find(e.name);
    if (!v) continue;
    if (e.count) {
      *e.count = std::get<int64_t>(*v);
    } else {
      const Tensor<T>& t = std::get<Tensor<T>>(*v);
      std::copy(t.data(), t.data() + t.numel(), e.value->data());  // checked: same shape
    }
  }
}

template <typename T>
LoadResult load_state_dict(const std::vector<StateEntry<T>>& target, StateDict<T> sd,
                           const LoadOptions& options) {
  LoadResult r = check_state_dict(target, sd, options);
  copy_state_dict(target, sd);
  return r;
}

template <typename T>
LoadResult load_state_dict(Layer<T>& model, StateDict<T> sd, const LoadOptions& options) {
  return load_state_dict(model.state(), std::move(sd), options);
}

#define NORMLAB_STATE_DICT(T)                                                                   \
  template class StateDict<T>;                                                                  \
  template StateDict<T> state_dict(const std::vector<StateEntry<T>>&, const StateDictOptions&); \
  template StateDict<T> state_dict(Layer<T>&, const StateDictOptions&);                         \
  template LoadResult check_state_dict(const std::vector<StateEntry<T>>&, StateDict<T>&,        \
                                       const LoadOptions&);                                     \
  template void copy_state_dict(const std::vector<StateEntry<T>>&, const StateDict<T>&);        \
  template LoadResult load_state_dict(const std::vector<StateEntry<T>>&, StateDict<T>,          \
                                      const LoadOptions&);                                      \
  template LoadResult load_state_dict(Layer<T>&, StateDict<T>, const LoadOptions&);

NORMLAB_STATE_DICT(float)
NORMLAB_STATE_DICT(double)

}  // namespace normlab
