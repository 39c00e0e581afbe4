// The seed-000 experiment: the norm of a freshly initialised MLP's output
// against its depth, without normalization and with BatchNorm or LayerNorm
// before or after each Linear (the presets none, bn-pre, bn-post, ln-pre,
// ln-post of model_spec.hpp). Each (draw, architecture, depth) gets a fresh
// network from its own random stream, so results do not depend on the number
// of threads. What it shows and the figures: docs/depth.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "normlab/rng.hpp"
#include "normlab/tensor.hpp"

namespace normlab {

// none, bn-pre, bn-post, ln-pre, ln-post: the notebook's order.
const std::vector<std::string>& depth_architectures();

struct DepthConfig {
  std::vector<std::string> archs;  // empty: all five
  int min_depth = 0, max_depth = 29;
  int64_t width = 512, batch = 5, outputs = 100;
  Shape input = {28, 28};  // one example's shape; values N(0, 1)
  int seeds = 1;           // independent draws of inputs and networks
  uint64_t seed = 0;       // draw k uses stream k of this seed
  int threads = 0;         // 0: OpenMP's default
};

// Limits beyond which a setting is absurd rather than big.
inline constexpr int kMaxDepth = 1000;
inline constexpr int kMaxSeeds = 100000;
inline constexpr int kMaxThreads = 1024;

// Throws an Error naming the setting and its value if it is out of range,
// or an architecture is unknown.
void check_depth_config(const DepthConfig& config);

struct DepthPoint {
  std::string arch;
  int depth = 0;
  double mean = 0, sd = 0;    // over the draws; sd (n-1) is NaN for a single draw
  std::vector<double> norms;  // one per draw
};

struct DepthResult {
  DepthConfig config;
  std::vector<DepthPoint> points;  // architecture-major, depths ascending
  double seconds = 0;              // the sweep itself, without writing anything
  double weights = 0;              // random parameters drawn (linear weights and biases)
  int threads = 1;
};

DepthResult run_depth(const DepthConfig& config);

// ---- The pieces of one draw, exposed so tests can rebuild a network with build_model ----
// The spec of `arch` at `depth` with the configured width and outputs.
std::string depth_spec(const DepthConfig& config, const std::string& arch, int depth);
// Draw k's inputs (batch, input...), shared by every architecture and depth.
Tensor<float> depth_inputs(const DepthConfig& config, int k);
// The stream that initialises the network of (arch, depth) in draw k.
Rng depth_network_rng(const DepthConfig& config, const std::string& arch, int depth, int k);
// The output norm of that network on draw k's inputs, in training mode. Computed
// layer by layer without keeping the weights; equal to running
// build_model<float>(depth_spec(...), ..., depth_network_rng(...)) on depth_inputs(...).
double depth_output_norm(const DepthConfig& config, const std::string& arch, int depth, int k);

// ---- Reports ----
// kind,depth,mean_norm,sd_norm,seeds (the columns of PyTorch's depth_torch.csv, plus seeds).
std::string depth_csv(const DepthResult& result);
// A table for people: one row per depth, one column per architecture.
std::string depth_table(const DepthResult& result);
// Log-scale norm against depth, one line per architecture, error bars for several draws.
void plot_depth(const DepthResult& result, const std::string& png_path);

// ---- Agreement with a reference (PyTorch's figures in the same CSV form) ----
struct DepthRow {
  std::string arch;
  int depth = 0;
  double mean = 0, sd = 0;
  int seeds = 0;
};
std::vector<DepthRow> depth_rows(const DepthResult& result);
// Reads kind,depth,mean_norm,sd_norm[,seeds]; rows without a seeds column get `default_seeds`.
// Throws an Error naming the file and line of anything malformed.
std::vector<DepthRow> read_depth_csv(const std::string& path, int default_seeds = 20);

struct DepthCheck {
  std::string arch, what;  // "mean norm, depths 2-29", "largest gap (depth 7)", ...
  double ours = 0, reference = 0;
  double measure = 0, limit = 0;  // relative difference or standard errors, and its bound
  std::string unit;               // "%" or "SE"
  bool ok = false;
};
struct DepthAgreement {
  std::vector<DepthCheck> checks;
  bool ok = false;
  std::string report;  // a table of the checks
};
// For each normalized architecture: the average norm over depths 2-29 within 3 %
// of the reference, and every depth within 4 standard errors
// (sqrt(sd_a^2/n_a + sd_b^2/n_b)); for none, the per-layer decay factor of a
// log-linear fit over depths 1-29 within 5 %. Only architectures and depths
// present in both are compared; an architecture missing its range fails.
DepthAgreement compare_depth(const std::vector<DepthRow>& ours,
                             const std::vector<DepthRow>& reference);

}  // namespace normlab
