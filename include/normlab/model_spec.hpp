// Models written as a short spec string, and named presets.
//
//   flatten, wnlinear(512), relu, layernorm, wnlinear(512), relu, batchnorm, wnlinear(10)
//   p1: nb_wnlinear(512), relu, ln1: nb_layernorm, ...      (named children)
//   network: [flatten, linear(512, bias=false), relu, linear(100, bias=false)]   (a group)
//   bn-pre:depth=3,width=512                                   (a preset with parameters)
//
// Feature sizes are inferred from the input shape given to the planner/builder;
// sizes written in the spec (linear(784, 512), layernorm(512)) are checked
// against the inferred ones. The grammar, every layer and option, and the
// presets are described in docs/model-spec.md.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "normlab/layers.hpp"
#include "normlab/rng.hpp"
#include "normlab/sequential.hpp"

namespace normlab {

enum class LayerKind {
  Flatten,
  Linear,
  WeightNormLinear,
  BatchNorm,
  LayerNorm,
  ReLU,
  NotebookWeightNormLinear,
  NotebookBatchNorm,
  NotebookLayerNorm,
  RMSNorm,  // issue 10
  GroupNorm,
  InstanceNorm1d,
  Unflatten,
  MeanOnlyBatchNorm,  // BatchNorm variants (normlab/bn_family.hpp)
  BatchRenorm,
  GhostBatchNorm,
  SyncBatchNorm,  // issue 13 (normlab/syncbn.hpp): BatchNorm over the ranks of world()
  BatchNorm2d,    // the norms on (N, C, H, W) (normlab/norm2d.hpp); options in bn / inorm
  InstanceNorm2d,
  Conv2d,  // issue 11: convolution and pooling (normlab/conv.hpp, normlab/pool.hpp)
  MaxPool2d,
  AvgPool2d,
  AdaptiveAvgPool2d,
  Sigmoid,  // nn.Sigmoid (normlab/sigmoid.hpp), for the bn-paper study
  // issue 13: what --sync-bn makes of a batchrenorm (normlab/syncbn_family.hpp); no spec name
  SyncBatchRenorm,
};

// One layer of a model with its sizes resolved against an input shape.
struct LayerPlan {
  LayerKind kind = LayerKind::ReLU;
  std::vector<std::string> path;  // child names from the root, e.g. {"network", "1"}
  std::string source;             // the item as written, e.g. "linear(512, bias=false)"
  size_t column = 0;              // 1-based position of the item in the spec text
  int64_t in = 0, out = 0;        // features of linear kinds; channels / normalized size of norms
  bool bias = true;               // linear kinds
  WeightNormDim wn_dim = WeightNormDim::Rows;
  BatchNormOptions bn;
  LayerNormOptions ln;
  Shape in_shape, out_shape;  // including the batch dimension given to the planner
  // LayerNorm and RMSNorm: the normalized_shape (trailing dims of in_shape;
  // in = out = its element count). Empty in a hand-made plan: {in}.
  Shape norm_shape;
  RMSNormOptions rms;
  int64_t groups = 0;  // GroupNorm: num_groups (in = out = num_channels)
  GroupNormOptions gn;
  InstanceNormOptions inorm;
  Shape unflatten;  // Unflatten: the sizes dim 1 becomes
  // BatchNorm variants: mean_only_batchnorm, batchrenorm, ghostbatchnorm (their own
  // options; ghostbatchnorm takes bn's for the rest).
  MeanOnlyBatchNormOptions mean_only_bn;
  BatchRenormOptions renorm;
  int64_t virtual_batch_size = 32;
  // Conv2d (in/out: channels) and the pools: kernel_size (AdaptiveAvgPool2d:
  // output_size) and the other arguments.
  Pair kernel = 1;
  Conv2dOptions conv;
  Pool2dOptions pool;

  std::string child_path() const;  // "network.1": the prefix of this layer's state_dict keys
};

// Limits that make a spec "absurd" rather than merely big.
inline constexpr int64_t kMaxFeatures = int64_t(1) << 20;      // any single size in a spec
inline constexpr int64_t kMaxLayerWeights = int64_t(1) << 28;  // in * out of one linear layer
inline constexpr int64_t kMaxModelWeights = int64_t(1) << 30;  // all linear layers together

// Presets: "seed001", "seed001-notebook", and the seed-000 architectures "none",
// "bn-pre", "bn-post", "ln-pre", "ln-post" (parameters depth, width, out).
std::vector<std::string> preset_names();
// One line per preset: name, parameters and what it builds.
std::string preset_help();
// True if the text names a preset (its part before any ':' is a preset name).
bool is_preset(const std::string& spec_or_preset);
// The spec text of a preset, e.g. preset_spec("bn-pre:depth=2,width=64,out=10").
// Throws an Error naming the preset and parameter if either is unknown or out of range.
std::string preset_spec(const std::string& preset);
// A preset expanded to its spec text; any other text is returned unchanged.
std::string resolve_spec(const std::string& spec_or_preset);

// Parses a spec (or preset) and infers every layer's sizes from `input_shape`
// (batch dimension first). Throws an Error naming the item, its column and
// what was expected, or both layers and their sizes when shapes do not chain.
std::vector<LayerPlan> plan_model(const std::string& spec_or_preset, const Shape& input_shape);

// Builds the planned layers, initialised as PyTorch does, drawing from `rng`
// in layer order. Children are named as in the spec (index by default), so
// state() returns PyTorch's state_dict keys for the equivalent module
// (python/normlab_torch.py builds that module).
template <typename T>
std::unique_ptr<Sequential<T>> build_model(const std::vector<LayerPlan>& plan, Rng& rng);
template <typename T>
std::unique_ptr<Sequential<T>> build_model(const std::string& spec_or_preset,
                                           const Shape& input_shape, Rng& rng);

// issue 13 (docs/distributed.md): what `normlab train --sync-bn` does to a
// plan. batchnorm and batchnorm2d become SyncBatchNorm, batchrenorm becomes
// SyncBatchRenorm1d (normlab/syncbn_family.hpp); the state_dict keys stay. Ghost
// BatchNorm and mean-only BatchNorm are refused with an Error naming the item
// and its column (Ghost BN's statistics are per virtual batch by design;
// mean-only BN has no synchronised twin): `--sync-bn` never leaves
// a batch norm silently per-rank.
void sync_batch_norms(std::vector<LayerPlan>& plan);

}  // namespace normlab
