// Turns a plan into layers. Groups become nested Sequentials, so the state
// names carry the full child path ("network.1.weight") as PyTorch's do.
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/syncbn_family.hpp"

namespace normlab {
namespace {

template <typename T>
LayerPtr<T> make_layer(const LayerPlan& p, Rng& rng) {
  switch (p.kind) {
    case LayerKind::Flatten:
      return std::make_unique<Flatten<T>>();
    case LayerKind::Linear:
      return std::make_unique<Linear<T>>(p.in, p.out, p.bias, rng);
    case LayerKind::WeightNormLinear:
      return std::make_unique<WeightNormLinear<T>>(p.in, p.out, p.bias, p.wn_dim, rng);
    case LayerKind::BatchNorm:
      return std::make_unique<BatchNorm1d<T>>(p.in, p.bn);
    case LayerKind::LayerNorm:
      return std::make_unique<LayerNorm<T>>(p.norm_shape.empty() ? Shape{p.in} : p.norm_shape,
                                            p.ln);
    case LayerKind::ReLU:
      return std::make_unique<ReLU<T>>();
    case LayerKind::NotebookWeightNormLinear:
      return std::make_unique<NotebookWeightNormLinear<T>>(p.in, p.out, p.bias, rng);
    case LayerKind::NotebookBatchNorm:
      return std::make_unique<NotebookScalarNorm<T>>(NotebookScalarNorm<T>::Over::Tensor, rng);
    case LayerKind::NotebookLayerNorm:
      return std::make_unique<NotebookScalarNorm<T>>(NotebookScalarNorm<T>::Over::Rows, rng);
    case LayerKind::RMSNorm:
      return std::make_unique<RMSNorm<T>>(p.norm_shape.empty() ? Shape{p.in} : p.norm_shape, p.rms);
    case LayerKind::GroupNorm:
      return std::make_unique<GroupNorm<T>>(p.groups, p.in, p.gn);
    case LayerKind::InstanceNorm1d:
      return std::make_unique<InstanceNorm1d<T>>(p.in, p.inorm);
    case LayerKind::Unflatten:
      return std::make_unique<Unflatten<T>>(p.unflatten);
    case LayerKind::MeanOnlyBatchNorm:
      return std::make_unique<MeanOnlyBatchNorm1d<T>>(p.in, p.mean_only_bn);
    case LayerKind::BatchRenorm:
      return std::make_unique<BatchRenorm1d<T>>(p.in, p.renorm);
    case LayerKind::GhostBatchNorm:
      return std::make_unique<GhostBatchNorm1d<T>>(p.in, p.virtual_batch_size, p.bn);
    case LayerKind::SyncBatchNorm:
      return std::make_unique<SyncBatchNorm<T>>(p.in, p.bn);
    case LayerKind::BatchNorm2d:
      return std::make_unique<BatchNorm2d<T>>(p.in, p.bn);
    case LayerKind::InstanceNorm2d:
      return std::make_unique<InstanceNorm2d<T>>(p.in, p.inorm);
    case LayerKind::Conv2d:
      return std::make_unique<Conv2d<T>>(p.in, p.out, p.kernel, p.conv, rng);
    case LayerKind::MaxPool2d:
      return std::make_unique<MaxPool2d<T>>(p.kernel, p.pool);
    case LayerKind::AvgPool2d:
      return std::make_unique<AvgPool2d<T>>(p.kernel, p.pool);
    case LayerKind::AdaptiveAvgPool2d:
      return std::make_unique<AdaptiveAvgPool2d<T>>(p.kernel);
    case LayerKind::Sigmoid:
      return std::make_unique<Sigmoid<T>>();
    case LayerKind::SyncBatchRenorm:
      return std::make_unique<SyncBatchRenorm1d<T>>(p.in, p.renorm);
  }
  fail("build_model: unhandled layer kind in ", p.source);
}

}  // namespace

template <typename T>
std::unique_ptr<Sequential<T>> build_model(const std::vector<LayerPlan>& plan, Rng& rng) {
  auto root = std::make_unique<Sequential<T>>();
  // Open groups from the root down; a leaf whose path leaves a group closes it
  // into its parent. Groups are contiguous in a spec, so each opens once.
  std::vector<std::pair<std::string, std::unique_ptr<Sequential<T>>>> open;
  auto top = [&]() -> Sequential<T>& { return open.empty() ? *root : *open.back().second; };
  auto close_to = [&](size_t depth) {
    while (open.size() > depth) {
      auto [name, group] = std::move(open.back());
      open.pop_back();
      top().add(std::move(group), name);
    }
  };
  for (const LayerPlan& p : plan) {
    const size_t groups = p.path.size() - 1;
    size_t common = 0;
    while (common < open.size() && common < groups && open[common].first == p.path[common])
      ++common;
    close_to(common);
    for (size_t i = common; i < groups; ++i)
      open.emplace_back(p.path[i], std::make_unique<Sequential<T>>());
    top().add(make_layer<T>(p, rng), p.path.back());
  }
  close_to(0);
  return root;
}

template <typename T>
std::unique_ptr<Sequential<T>> build_model(const std::string& spec_or_preset,
                                           const Shape& input_shape, Rng& rng) {
  return build_model<T>(plan_model(spec_or_preset, input_shape), rng);
}

template std::unique_ptr<Sequential<float>> build_model<float>(const std::vector<LayerPlan>&, Rng&);
template std::unique_ptr<Sequential<double>> build_model<double>(const std::vector<LayerPlan>&,
                                                                 Rng&);
template std::unique_ptr<Sequential<float>> build_model<float>(const std::string&, const Shape&,
                                                               Rng&);
template std::unique_ptr<Sequential<double>> build_model<double>(const std::string&, const Shape&,
                                                                 Rng&);

}  // namespace normlab
