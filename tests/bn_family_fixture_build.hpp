// The BatchNorm variants in the layer fixtures (tests/fixtures/generate_layers.py's
// build(), twins from python/normlab_torch.py): tests/test_torch_fixtures.cpp
// asks here for the kinds it does not know. nullptr: not a BatchNorm variant.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "normlab/bn_family.hpp"

namespace normlab::test {

template <typename T>
LayerPtr<T> build_bn_family(const std::string& kind, const nlohmann::json& c) {
  const auto momentum = [&]() {
    return c["momentum"].is_null() ? std::nullopt : std::optional<double>(c["momentum"]);
  };
  if (kind == "MeanOnlyBatchNorm1d") {
    MeanOnlyBatchNormOptions o;
    o.momentum = momentum();
    o.affine = c["affine"];
    o.track_running_stats = c["track_running_stats"];
    return std::make_unique<MeanOnlyBatchNorm1d<T>>(c["num_features"], o);
  }
  if (kind == "BatchRenorm1d") {
    BatchRenormOptions o;
    o.eps = c["eps"];
    o.momentum = momentum();
    o.affine = c["affine"];
    o.rmax = c["rmax"];
    o.dmax = c["dmax"];
    o.warmup = c["warmup"];
    o.rmax_ramp = c["rmax_ramp"];
    o.dmax_ramp = c["dmax_ramp"];
    return std::make_unique<BatchRenorm1d<T>>(c["num_features"], o);
  }
  if (kind == "GhostBatchNorm1d") {
    BatchNormOptions o;
    o.eps = c["eps"];
    o.momentum = momentum();
    o.affine = c["affine"];
    o.track_running_stats = c["track_running_stats"];
    return std::make_unique<GhostBatchNorm1d<T>>(c["num_features"], c["virtual_batch_size"], o);
  }
  return nullptr;
}

}  // namespace normlab::test
