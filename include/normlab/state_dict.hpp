// A model's state in memory: PyTorch's state_dict (an ordered map from key to
// value), for float and double models, and loading one back with PyTorch's
// load_state_dict rules.
//
//   StateDict<float> sd = state_dict(model);          // copies of every parameter and buffer
//   sd.tensor("0.weight")                             // Tensor<float> of shape (out, in)
//   sd.count("1.num_batches_tracked")                 // int64_t
//   load_state_dict(other_model, sd);                 // strict: the keys must match
//   LoadResult r = load_state_dict(m, sd, {.strict = false});  // r.missing_keys, r.unexpected_keys
//
// A value is a Tensor<T> or an int64 count: PyTorch's int64 scalar buffers
// (BatchNorm's num_batches_tracked, an optimizer's step). Checkpoint files are
// read into and written from a StateDict (checkpoint.hpp).
//
// Loading is all-or-nothing: everything is checked before the first value is
// copied, so a refused state dict leaves the model exactly as it was. Errors
// are normlab::Error naming the keys and printing the shapes.
//
// What load_state_dict accepts besides an exact match (options.pytorch_compat,
// on by default; docs/checkpoints.md "Accepted deviations" is the full list,
// each one something PyTorch's load_state_dict accepts too):
//   1. weight norm written by torch.nn.utils.parametrizations.weight_norm
//      (PyTorch >= 2.1): "P.parametrizations.weight.original0" / "original1"
//      load into normlab's "P.weight_g" / "P.weight_v" (both or neither).
//   2. a missing "P.num_batches_tracked" (BatchNorm state dicts of PyTorch
//      < 0.4.1): the model keeps its count, as PyTorch 2.x does (0 in a new model).
//   3. a tensor of shape (1) for a value of shape () (PyTorch 0.3 scalars).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "normlab/layer.hpp"

namespace normlab {

// One value of a state dict: a tensor, or an int64 count.
template <typename T>
using StateValue = std::variant<Tensor<T>, int64_t>;

// Keys in insertion order (PyTorch's order when made by state_dict()), each once.
template <typename T>
class StateDict {
 public:
  struct Item {
    std::string key;
    StateValue<T> value;
  };

  // Appends `key`; an Error if the key is already there.
  void insert(std::string key, StateValue<T> value);
  bool contains(std::string_view key) const { return index_.find(key) != index_.end(); }
  const StateValue<T>* find(std::string_view key) const;  // nullptr if absent
  StateValue<T>* find(std::string_view key);
  // The tensor / count under `key`; an Error naming the key if it is absent or the other kind.
  const Tensor<T>& tensor(std::string_view key) const;
  Tensor<T>& tensor(std::string_view key);
  int64_t count(std::string_view key) const;
  // Removes `key`; false if it was not there.
  bool erase(std::string_view key);
  // Gives the value under `from` the key `to`, keeping its place; an Error if
  // `from` is absent or `to` present.
  void rename(std::string_view from, std::string to);

  std::vector<std::string> keys() const;
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  const Item& operator[](size_t i) const { return items_[i]; }
  typename std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  typename std::vector<Item>::const_iterator end() const { return items_.end(); }

 private:
  std::vector<Item> items_;
  std::map<std::string, size_t, std::less<>> index_;  // key -> position in items_
};

// Which keys a weight-normalized layer's g and v get in an exported state dict.
enum class WeightNormKeys {
  Legacy,            // "weight_g", "weight_v": torch.nn.utils.weight_norm (every PyTorch version)
  Parametrizations,  // "parametrizations.weight.original0" / "original1":
                     // torch.nn.utils.parametrizations.weight_norm (PyTorch >= 2.1 writes these)
};
const char* weight_norm_keys_name(WeightNormKeys keys);  // "legacy", "parametrizations"
// "legacy" / "parametrizations"; nullopt for anything else.
std::optional<WeightNormKeys> weight_norm_keys_from_name(std::string_view name);

struct StateDictOptions {
  WeightNormKeys weight_norm_keys = WeightNormKeys::Legacy;
};

// Copies of the entries' values under their names (model.state(), or an
// optimizer's state()). With WeightNormKeys::Parametrizations every pair
// "P.weight_g", "P.weight_v" becomes "P.parametrizations.weight.original0",
// "...original1" in the same places (PyTorch's order for such a module too).
template <typename T>
StateDict<T> state_dict(const std::vector<StateEntry<T>>& entries,
                        const StateDictOptions& options = {});
template <typename T>
StateDict<T> state_dict(Layer<T>& model, const StateDictOptions& options = {});

struct LoadOptions {
  // Missing and unexpected keys are an Error (PyTorch's strict=True). Without,
  // they are returned in LoadResult and the keys present are loaded. Shape and
  // kind mismatches are always an Error, as in PyTorch.
  bool strict = true;
  // The accepted deviations listed at the top of this file.
  bool pytorch_compat = true;
  // For messages: "<source>: <subject> does not match the model: ...".
  std::string source = "load_state_dict";
  std::string subject = "the state dict";
  // Appended to shape errors and to key errors with both missing and unexpected
  // keys (the checkpoint loader says which model the file was written for).
  std::string hint = {};
};

struct LoadResult {
  std::vector<std::string> missing_keys;     // strict = false only
  std::vector<std::string> unexpected_keys;  // strict = false only
  // The deviations applied: (key in the state dict, key in the model) ...
  std::vector<std::pair<std::string, std::string>> renamed_keys;
  // ... counts the state dict lacked, which kept the model's value (num_batches_tracked) ...
  std::vector<std::string> kept_counts;
  // ... and keys whose shape (1) value was read as a scalar.
  std::vector<std::string> scalars_from_shape_1;
};

// Loads `sd` into the values `target` points to (model.state()), all or nothing.
template <typename T>
LoadResult load_state_dict(const std::vector<StateEntry<T>>& target, StateDict<T> sd,
                           const LoadOptions& options = {});
template <typename T>
LoadResult load_state_dict(Layer<T>& model, StateDict<T> sd, const LoadOptions& options = {});

// The two halves of load_state_dict, for loading several state dicts all or
// nothing (a checkpoint's model and optimizer): check_state_dict applies the
// deviations to `sd` (so afterwards its keys are the model's), checks keys,
// kinds and shapes, and throws or returns; it touches nothing of the target.
// copy_state_dict then copies every target key present in `sd` and cannot fail.
template <typename T>
LoadResult check_state_dict(const std::vector<StateEntry<T>>& target, StateDict<T>& sd,
                            const LoadOptions& options = {});
template <typename T>
void copy_state_dict(const std::vector<StateEntry<T>>& target, const StateDict<T>& sd);

}  // namespace normlab
