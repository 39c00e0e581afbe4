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
// Loading is strict and all-or-nothing: every expected key present, no unknown
// key, dtype and shape as in the model, every float finite. All of it is checked
// before the first byte is copied into the model, so a failed load leaves the
// model (and optimizer) exactly as they were. Saving refuses non-finite values,
// so NaN weights never replace a good checkpoint.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "normlab/layer.hpp"
#include "normlab/safetensors.hpp"

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
// state ("optimizer."). Each entry has `value` (an F32 tensor) or `count` (I64).
struct StateGroup {
  std::string prefix;
  std::vector<StateEntry<float>> entries;
};

// The groups as a safetensors file with `meta` plus the two format keys. Throws
// an Error naming `dest` and the tensor if a value is not finite.
SafetensorsFile pack_state(const std::vector<StateGroup>& groups, const Metadata& meta,
                           const std::string& dest);

// Copies `file` into the groups' entries after checking all of it (see above);
// keys starting with one of `ignore_prefixes` are skipped. `source` names the file.
void unpack_state(const SafetensorsFile& file, const std::string& source,
                  const std::vector<StateGroup>& groups,
                  const std::vector<std::string>& ignore_prefixes = {});

// model.safetensors.
void save_model(const std::string& path, const std::vector<StateEntry<float>>& model,
                const Metadata& meta = {});
// checkpoint.safetensors.
void save_checkpoint(const std::string& path, const std::vector<StateEntry<float>>& model,
                     const std::vector<StateEntry<float>>& optimizer, const Metadata& meta);

// The model's weights from either file (a checkpoint's optimizer state is skipped),
// or from a state_dict PyTorch saved with safetensors. Returns the file's metadata.
Metadata load_model(const std::string& path, const std::vector<StateEntry<float>>& model);
// Model and optimizer state from a checkpoint.safetensors; returns its metadata.
Metadata load_checkpoint(const std::string& path, const std::vector<StateEntry<float>>& model,
                         const std::vector<StateEntry<float>>& optimizer);

// Metadata lookups whose errors name the file and the key.
const std::string& metadata_string(const Metadata& meta, const std::string& key,
                                   const std::string& source);
int64_t metadata_int(const Metadata& meta, const std::string& key, const std::string& source);

}  // namespace normlab
