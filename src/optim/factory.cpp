#include "normlab/error.hpp"
#include "normlab/optim.hpp"

namespace normlab {

namespace {

// An option the chosen optimizer does not have is refused, so a typo'd
// recipe (e.g. --momentum with adam) fails loudly instead of training differently.
template <typename V>
void refuse(const std::string& optimizer, const char* option, const std::optional<V>& value) {
  if (value)
    fail("optimizer ", optimizer, ": option ", option, "=", std::boolalpha, *value,
         " does not apply to ", optimizer);
}

}  // namespace

std::unique_ptr<Optimizer> make_optimizer(const std::string& name, const OptimizerOptions& o,
                                          const std::vector<StateEntry<float>>& entries) {
  if (name == "adam" || name == "adamw") {
    refuse(name, "momentum", o.momentum);
    refuse(name, "dampening", o.dampening);
    refuse(name, "nesterov", o.nesterov);
    AdamOptions a;
    if (name == "adamw") a.weight_decay = kAdamWDefaultWeightDecay;
    a.lr = o.lr.value_or(a.lr);
    a.beta1 = o.beta1.value_or(a.beta1);
    a.beta2 = o.beta2.value_or(a.beta2);
    a.eps = o.eps.value_or(a.eps);
    a.weight_decay = o.weight_decay.value_or(a.weight_decay);
    a.amsgrad = o.amsgrad.value_or(a.amsgrad);
    if (name == "adam") return std::make_unique<Adam>(entries, a);
    return std::make_unique<AdamW>(entries, a);
  }
  if (name == "sgd") {
    refuse(name, "beta1", o.beta1);
    refuse(name, "beta2", o.beta2);
    refuse(name, "eps", o.eps);
    refuse(name, "amsgrad", o.amsgrad);
    if (!o.lr) fail("optimizer sgd: option lr has no default (as in PyTorch); give one");
    SgdOptions s;
    s.lr = *o.lr;
    s.momentum = o.momentum.value_or(s.momentum);
    s.dampening = o.dampening.value_or(s.dampening);
    s.weight_decay = o.weight_decay.value_or(s.weight_decay);
    s.nesterov = o.nesterov.value_or(s.nesterov);
    return std::make_unique<Sgd>(entries, s);
  }
  fail("unknown optimizer \"", name, "\": expected adam, adamw or sgd");
}

}  // namespace normlab
