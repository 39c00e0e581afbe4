// libFuzzer target: the model-spec language (parser, presets, planner) and the
// builder on what the planner accepts.
//
// Input: byte 0 picks the rank of the input shape (1 + b % 3 dims after the
// batch of 2), the next bytes its dims (1 + b % 64 each), the rest is the spec
// text, e.g. "\x00\x10flatten, linear(8), relu" (input (2, 17)).
//
// What must hold for every input:
//   - plan_model either returns or throws normlab::Error (anything else escapes
//     and libFuzzer reports it);
//   - an accepted plan chains: each layer's input shape is the previous one's
//     output, the batch stays 2, every size is within kMaxFeatures;
//   - a plan small enough to build and run (<= 2^20 parameters and activations:
//     the fuzzer's memory is bounded) builds, its state_dict keys are unique,
//     and a forward pass gives the planned output shape;
//   - planning is deterministic: the same text plans the same way twice.
//
// Seeds: fuzz/corpus/model_spec/ (valid and invalid specs and presets);
// dictionary: fuzz/fuzz_model_spec.dict.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>

#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"

namespace {

using namespace normlab;

[[noreturn]] void broken(const char* what, const std::string& spec) {
  std::fprintf(stderr, "fuzz_model_spec: invariant broken: %s\nspec: %s\n", what, spec.c_str());
  std::abort();
}

int64_t weights(const LayerPlan& p) {
  switch (p.kind) {
    case LayerKind::Linear:
    case LayerKind::WeightNormLinear:
    case LayerKind::NotebookWeightNormLinear:
      return 2 * (p.in * p.out + p.out);
    default:
      return 2 * p.in + 2;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t rank = 1 + data[0] % 3;
  if (size < 1 + rank) return 0;
  Shape input{2};
  for (size_t i = 0; i < rank; ++i) input.push_back(1 + data[1 + i] % 64);
  const std::string spec(reinterpret_cast<const char*>(data) + 1 + rank, size - 1 - rank);

  std::vector<LayerPlan> plan;
  try {
    plan = plan_model(spec, input);
  } catch (const Error&) {
    return 0;
  }

  Shape shape = input;
  int64_t total = 0;  // parameters and activations the build and a forward pass allocate
  for (const LayerPlan& p : plan) {
    if (p.in_shape != shape) broken("a layer's input is not the previous output", spec);
    if (p.out_shape.empty() || p.out_shape[0] != 2) broken("the batch dimension changed", spec);
    for (int64_t d : p.out_shape)
      if (d < 1 || d > kMaxFeatures) broken("a size outside 1..kMaxFeatures", spec);
    shape = p.out_shape;
    total += weights(p) + 2 * shape_numel(p.out_shape);
  }
  const std::vector<LayerPlan> again = plan_model(spec, input);
  if (again.size() != plan.size()) broken("planning twice differs", spec);
  for (size_t i = 0; i < plan.size(); ++i)
    if (again[i].out_shape != plan[i].out_shape || again[i].child_path() != plan[i].child_path())
      broken("planning twice differs", spec);

  if (plan.empty() || total > (int64_t(1) << 20)) return 0;
  Rng rng(0);
  auto model = build_model<float>(plan, rng);
  std::set<std::string> keys;
  for (const auto& e : model->state())
    if (!keys.insert(e.name).second) broken("a state_dict key repeats", spec);
  Tensor<float> x(input, 0.5f);
  for (int64_t i = 0; i < x.numel(); i += 3) x[i] = -1.0f;  // not constant: BatchNorm has a spread
  try {
    const Tensor<float>& y = model->forward(x);
    if (y.shape() != plan.back().out_shape) broken("the output shape is not the planned one", spec);
  } catch (const Error&) {
    // A legal refusal at run time, e.g. BatchNorm in training mode on one value per channel.
  }
  return 0;
}
