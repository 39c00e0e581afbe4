// Checkpoints: a model's state (and an optimizer's) in safetensors files.
//
// A training run writes two files, each atomically (temporary + rename):
//   model.safetensors       the model's state_dict only, under PyTorch's keys:
//                           tensors as F32, counts (num_batches_tracked) as I64
//                           scalars of shape []. PyTorch loads it with
//                           model.load_state_dict(safetensors.torch.load_file(path)).
//   checkpoint.safetensors  the same model keys, plus the optimizer's state under
//                           "optimizer.", plus metadata (epoch, step, model spec,
//                           seed, ...): everything --resume needs.
// Both carry the metadata "format": "pt" (what safetensors.torch writes) and
// "normlab_format_version".
//
// Tensors are F32 for a float model and F64 for a double one.
//
// Loading reads the file into a StateDict (state_dict.hpp) and loads that with
// load_state_dict's rules: strict, with the deviations PyTorch accepts too
// (weight norm under parametrizations keys, a missing num_batches_tracked, shape
// (1) for a scalar; docs/checkpoints.md). Tensors stored as F32, F64, F16 or
// BF16 are converted to the model's type as PyTorch's load_state_dict does
// (a value beyond float's range is refused); counts must be I64. Every float
// must be finite and every count non-negative. All of it is checked before the
// first byte is copied into the model, so a failed load leaves the model (and
// optimizer) exactly as they were. Saving refuses non-finite values, so NaN
// weights never replace a good checkpoint.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "normlab/layer.hpp"
#include "normlab/safetensors.hpp"
#include "normlab/state_dict.hpp"

namespace normlab {

using Metadata = std::map<std::string, std::string>;

inline constexpr const char* kOptimizerPrefix = "optimizer.";
inline constexpr const char* kFormatVersionKey = "normlab_format_version";
inline constexpr const char* kFormatVersion = "1";
// Conventional metadata keys for the caller; the loader quotes kModelSpecKey in
// its hint when a file's shapes belong to another model.
inline constexpr const char* kModelSpecKey = "model";
inline constexpr const char* kEpochKey = "epoch";
inline constexpr const char* kStepKey = "step";
inline constexpr const char* kSeedKey = "seed";

// Entries stored under one key prefix: a model's state_dict ("") or an optimizer's
// state ("optimizer."). Each entry has `value` (a tensor) or `count` (int64).
template <typename T>
struct BasicStateGroup {
  std::string prefix;
  std::vector<StateEntry<T>> entries;
};
using StateGroup = BasicStateGroup<float>;

// A state dict as safetensors tensors: F32 (float) or F64 (double) tensors,
// counts as I64 scalars of shape (), in the dict's order, plus `meta` and the
// two format keys. Throws an Error naming `dest` and the tensor if a value is
// not finite.
template <typename T>
SafetensorsFile state_dict_to_safetensors(const StateDict<T>& sd, const Metadata& meta,
                                          const std::string& dest);
// The tensors of `file` as a state dict (keys starting with one of
// `ignore_prefixes` skipped): F32, F64, F16 and BF16 tensors converted to T,
// I64 tensors of shape () or (1) as counts. Throws an Error naming `source`
// and the tensor for other dtypes, non-finite values, values beyond T's range
// and negative counts.
template <typename T>
StateDict<T> state_dict_from_safetensors(const SafetensorsFile& file, const std::string& source,
                                         const std::vector<std::string>& ignore_prefixes = {});

// The groups as one safetensors file (each group's keys under its prefix).
SafetensorsFile pack_state(const std::vector<BasicStateGroup<float>>& groups, const Metadata& meta,
                           const std::string& dest, const StateDictOptions& options = {});
SafetensorsFile pack_state(const std::vector<BasicStateGroup<double>>& groups, const Metadata& meta,
                           const std::string& dest, const StateDictOptions& options = {});

// Loads `file` into the groups' entries, all or nothing (see above); keys starting
// with one of `ignore_prefixes` are skipped. `source` names the file. The
// PyTorch deviations apply to the group with prefix "" only.
void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<BasicStateGroup<float>>& groups,
                  const std::vector<std::string>& ignore_prefixes = {});
void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<BasicStateGroup<double>>& groups,
                  const std::vector<std::string>& ignore_prefixes = {});

// model.safetensors. `options` picks the weight-norm keys (legacy weight_g /
// weight_v, or PyTorch >= 2.1's parametrizations.weight.original0 / original1).
template <typename T>
void save_model(const std::string& path, const std::vector<StateEntry<T>>& model,
                const Metadata& meta = {}, const StateDictOptions& options = {});
// checkpoint.safetensors (always with normlab's own, legacy keys).
template <typename T>
void save_checkpoint(const std::string& path, const std::vector<StateEntry<T>>& model,
                     const std::vector<StateEntry<T>>& optimizer, const Metadata& meta);

// The model's weights from either file (a checkpoint's optimizer state is skipped),
// or from a state_dict PyTorch saved with safetensors. Returns the file's metadata.
template <typename T>
Metadata load_model(const std::string& path, const std::vector<StateEntry<T>>& model);
// Model and optimizer state from a checkpoint.safetensors; returns its metadata.
template <typename T>
Metadata load_checkpoint(const std::string& path, const std::vector<StateEntry<T>>& model,
                         const std::vector<StateEntry<T>>& optimizer);

// Metadata lookups whose errors name the file and the key.
const std::string& metadata_string(const Metadata& meta, const std::string& key,
                                   const std::string& source);
int64_t metadata_int(const Metadata& meta, const std::string& key, const std::string& source);

}  // namespace normlab
