// SGD as torch/optim/sgd.py (1.13), _single_tensor_sgd, in PyTorch's order:
//   d = g + wd * p                                     (only if wd != 0)
//   buf = d on the first step, else buf * momentum + (1 - dampening) * d
//   d = nesterov ? d + momentum * buf : buf            (only if momentum != 0)
//   p = p - lr * d
// in one pass over the flat blocks of all parameters (optim.hpp).
// Each "x + a * y" is a madd as in PyTorch's kernels (see elementwise.hpp);
// compiled with -ffp-contract=off (CMakeLists.txt) so that nothing else is fused.
#include <sstream>

#include "normlab/error.hpp"
#include "normlab/optim.hpp"
#include "optim/elementwise.hpp"

namespace normlab {

namespace {

struct SgdScalars {
  float neg_lr, weight_decay, momentum, one_minus_dampening;
};

// The variants are template flags so that the loop has no branches and vectorises.
template <bool kDecay, bool kMomentum, bool kFirst, bool kNesterov>
void sgd_update(const SgdScalars& s, float* __restrict p, const float* __restrict grad,
                float* __restrict buf, int64_t begin, int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    float d = grad[j];
    if constexpr (kDecay) d = madd(s.weight_decay, p[j], d);
    if constexpr (kMomentum) {
      const float b = kFirst ? d : madd(s.one_minus_dampening, d, buf[j] * s.momentum);
      buf[j] = b;
      d = kNesterov ? madd(s.momentum, b, d) : b;
    }
    p[j] = madd(s.neg_lr, d, p[j]);
  }
}

using SgdUpdate = void (*)(const SgdScalars&, float*, const float*, float*, int64_t, int64_t);

template <bool kDecay>
SgdUpdate pick_momentum(bool momentum, bool first, bool nesterov) {
  if (!momentum) return sgd_update<kDecay, false, false, false>;
  if (first)
    return nesterov ? sgd_update<kDecay, true, true, true> : sgd_update<kDecay, true, true, false>;
  return nesterov ? sgd_update<kDecay, true, false, true> : sgd_update<kDecay, true, false, false>;
}

SgdUpdate pick_update(bool decay, bool momentum, bool first, bool nesterov) {
  return decay ? pick_momentum<true>(momentum, first, nesterov)
               : pick_momentum<false>(momentum, first, nesterov);
}

}  // namespace

Sgd::Sgd(const std::vector<StateEntry<float>>& entries, SgdOptions opt)
    : Optimizer("SGD", entries, opt.lr), opt_(opt) {
  if (!(opt.momentum >= 0.0)) fail("SGD: option momentum=", opt.momentum, " must be >= 0");
  if (!(opt.dampening >= 0.0 && opt.dampening <= 1.0))
    fail("SGD: option dampening=", opt.dampening, " is outside [0, 1]");
  if (!(opt.weight_decay >= 0.0))
    fail("SGD: option weight_decay=", opt.weight_decay, " must be >= 0");
  if (opt.nesterov && !(opt.momentum > 0.0))
    fail("SGD: option nesterov=true needs momentum > 0, got momentum=", opt.momentum);
  if (opt.nesterov && opt.dampening != 0.0)
    fail("SGD: option nesterov=true needs dampening=0, got dampening=", opt.dampening);
  if (opt.momentum != 0.0) momentum_buffer_ = flat_zeros();
}

std::string Sgd::name() const {
  std::ostringstream os;
  os << "SGD(lr=" << lr_ << ", momentum=" << opt_.momentum << ", dampening=" << opt_.dampening
     << ", weight_decay=" << opt_.weight_decay << (opt_.nesterov ? ", nesterov=true" : "") << ")";
  return os.str();
}

void Sgd::step() {
  check_bound();
  SgdScalars s;
  s.neg_lr = static_cast<float>(-lr_);
  s.weight_decay = static_cast<float>(opt_.weight_decay);
  s.momentum = static_cast<float>(opt_.momentum);
  s.one_minus_dampening = static_cast<float>(1.0 - opt_.dampening);
  const SgdUpdate update =
      pick_update(opt_.weight_decay != 0.0, opt_.momentum != 0.0, steps_ == 0, opt_.nesterov);
  // Indices relative to the shard's start (0 unsharded), as in Adam::step.
  const int64_t at = shard_begin_;
  float* p = values_.get() + at;
  const float* g = step_grads();
  float* buf = momentum_buffer_.data();  // null without momentum
  for_each_shard_range(
      [&](int64_t begin, int64_t end) { update(s, p, g, buf, begin - at, end - at); });
  ++steps_;
}

std::vector<std::pair<std::string, Optimizer::FlatState*>> Sgd::buffers() {
  if (!momentum_buffer_.block) return {};
  return {{"momentum_buffer", &momentum_buffer_}};
}

}  // namespace normlab
