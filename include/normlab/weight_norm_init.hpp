// The data-dependent initialisation of weight-normalized layers (Salimans &
// Kingma 2016, "Weight Normalization", section 3 "Data-Dependent
// Initialization of Parameters"; docs/weight-norm-init.md):
//
//   for every WeightNormLinear of the model, in forward order:
//     v ~ N(0, 0.05^2) elementwise                  (drawn from `rng`, row-major)
//     t = v_o . x / ||v_o||  per output unit o and row x of the layer's input
//                          (the input the layer sees on `batch` once the layers
//                          before it are initialised: one pass through the model)
//     g_o = 1 / sigma[t_o],  b_o = -mu[t_o] / sigma[t_o]
//
// mu and sigma are the mean and the biased (population, 1/n) standard
// deviation over the rows of the batch (every row of an (N, ..., in) input),
// as the paper's code computes them (openai/weightnorm: the square root of the
// mean square of t - mu). Afterwards every pre-activation y_o = g_o v_o.x/||v_o|| + b_o
// has mean 0 and standard deviation 1 over the batch.
//
//   Rng rng(seed);
//   auto model = build_model<float>("seed001", {B, 784}, rng);
//   WeightNormInitReport r = data_dependent_init(*model, batch, rng);   // batch (B, 784)
//
// The pass runs in the model's mode (training for a new model: BatchNorm then
// uses the batch statistics, as the paper's init pass does); every other
// layer's state is left as it was (BatchNorm's running statistics and count are
// put back after the pass), so the init changes only the WN layers' v, g, bias.
//
// Only per-output-row norms (dim=0 / -2, weight_g (out, 1)) have one g per
// output unit; layers with dim=1, -1 or none, layers without a bias (no b to set)
// and the notebook's nb_wnlinear (a full (out, in) g with per-column norms) are
// refused with an Error naming the layer, as are: a model with no
// WeightNormLinear, a batch whose shape the model does not take, fewer than 2
// rows at a layer, non-finite values, and a unit whose t does not vary over the
// batch (sigma = 0, or below 1e-12 of max |t|: g = 1/sigma would be infinite
// or pure rounding noise) or whose g or b is not a finite T. On any Error the
// model is left exactly as it was (no NaN weights).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "normlab/layer.hpp"
#include "normlab/rng.hpp"

namespace normlab {

struct WeightNormInitOptions {
  // Draw v ~ N(0, v_std^2) (the paper). Without, each layer keeps its v (its
  // direction fixes t; a test or a PyTorch twin can then supply v).
  bool draw_v = true;
  double v_std = 0.05;
};

struct WeightNormInitLayer {
  std::string path;  // child path, the prefix of its state_dict keys ("0", "network.3")
  std::string name;  // "WeightNormLinear(784, 512)"
  int64_t rows = 0;  // rows of the batch the statistics were taken over
  int64_t units = 0;
};

struct WeightNormInitReport {
  std::vector<WeightNormInitLayer> layers;  // in forward order
  std::string summary() const;              // "4 layers (0, 3, 6, 9)"
};

// Initialises every WeightNormLinear of `model` (a Sequential, nested ones too,
// or a single layer) from `batch` as described above. `batch` has the shape of
// one model input, batch dimension first. Deterministic: the same model, batch
// and rng give the same values for any thread count.
template <typename T>
WeightNormInitReport data_dependent_init(Layer<T>& model, const Tensor<T>& batch, Rng& rng,
                                         const WeightNormInitOptions& options = {});

}  // namespace normlab
