// Adam and AdamW as torch/optim/adam.py and adamw.py (1.13), _single_tensor_*
// without capturable/differentiable: the per-step scalars are computed in
// double as Python does, then every tensor op in float in PyTorch's order:
//   Adam:  g += wd * p                      (L2, only if wd != 0)
//   AdamW: p *= 1 - lr * wd                 (decoupled, always)
//   m = m * b1 + (1 - b1) * g
//   v = v * b2 + (1 - b2) * g * g
//   vmax = max(vmax, v)                     (amsgrad; then used for v below)
//   p += (-lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// fused into one pass over the flat blocks of all parameters (optim.hpp);
// each "x + a * y" is a madd as in PyTorch's kernels (see elementwise.hpp).
// This file is compiled with -ffp-contract=off (no other fused multiply-adds,
// as in PyTorch) and -fno-math-errno (so that the loop with sqrt is
// vectorised): CMakeLists.txt.
// Why the rounding matches PyTorch: docs/loss.md.
#include <cmath>
#include <sstream>

#include "normlab/error.hpp"
#include "normlab/optim.hpp"
#include "optim/elementwise.hpp"

namespace normlab {

namespace {

void check_adam_options(const std::string& kind, const AdamOptions& o) {
  if (!(o.lr > 0.0)) fail(kind, ": option lr=", o.lr, " must be > 0");
  if (!(o.beta1 >= 0.0 && o.beta1 < 1.0))
    fail(kind, ": option beta1=", o.beta1, " is outside [0, 1)");
  if (!(o.beta2 >= 0.0 && o.beta2 < 1.0))
    fail(kind, ": option beta2=", o.beta2, " is outside [0, 1)");
  if (!(o.eps >= 0.0)) fail(kind, ": option eps=", o.eps, " must be >= 0");
  if (!(o.weight_decay >= 0.0))
    fail(kind, ": option weight_decay=", o.weight_decay, " must be >= 0");
}

// One step's scalars, rounded to float as PyTorch rounds Python numbers
// when they meet a float tensor.
struct AdamScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float neg_step_size;  // -lr / (1 - beta1^t)
  float bc2_sqrt;       // sqrt(1 - beta2^t)
  float eps, weight_decay;
  float decay;  // 1 - lr * weight_decay (AdamW)
};

// The variants are template flags so that the loop has no branches and vectorises.
template <bool kDecoupled, bool kL2, bool kAmsgrad>
void adam_update(const AdamScalars& s, float* __restrict p, const float* __restrict grad,
                 float* __restrict m, float* __restrict v, float* __restrict vmax, int64_t begin,
                 int64_t end) {
  for (int64_t j = begin; j < end; ++j) {
    float g = grad[j];
    float pj = p[j];
    if constexpr (kDecoupled) pj = pj * s.decay;
    if constexpr (kL2) g = madd(s.weight_decay, pj, g);
    const float mj = madd(s.one_minus_beta1, g, m[j] * s.beta1);
    float vj = madd(s.one_minus_beta2 * g, g, v[j] * s.beta2);
    m[j] = mj;
    v[j] = vj;
    if constexpr (kAmsgrad) {
      vj = vmax[j] > vj ? vmax[j] : vj;
      vmax[j] = vj;
    }
    p[j] = pj + s.neg_step_size * mj / (std::sqrt(vj) / s.bc2_sqrt + s.eps);
  }
}

using AdamUpdate = void (*)(const AdamScalars&, float*, const float*, float*, float*, float*,
                            int64_t, int64_t);

AdamUpdate pick_update(bool decoupled, bool l2, bool amsgrad) {
  if (decoupled) return amsgrad ? adam_update<true, false, true> : adam_update<true, false, false>;
  if (l2) return amsgrad ? adam_update<false, true, true> : adam_update<false, true, false>;
  return amsgrad ? adam_update<false, false, true> : adam_update<false, false, false>;
}

}  // namespace

Adam::Adam(const std::vector<StateEntry<float>>& entries, AdamOptions opt)
    : Adam("Adam", entries, opt, false) {}

Adam::Adam(const std::string& kind, const std::vector<StateEntry<float>>& entries, AdamOptions opt,
           bool decoupled)
    : Optimizer(kind, entries, opt.lr), opt_(opt), decoupled_(decoupled) {
  check_adam_options(kind, opt);
  exp_avg_ = flat_zeros();
  exp_avg_sq_ = flat_zeros();
  if (opt.amsgrad) max_exp_avg_sq_ = flat_zeros();
}

AdamW::AdamW(const std::vector<StateEntry<float>>& entries, AdamOptions opt)
    : Adam("AdamW", entries, opt, true) {}

std::string Adam::name() const {
  std::ostringstream os;
  os << kind_ << "(lr=" << lr_ << ", betas=(" << opt_.beta1 << ", " << opt_.beta2
     << "), eps=" << opt_.eps << ", weight_decay=" << opt_.weight_decay
     << (opt_.amsgrad ? ", amsgrad=true" : "") << ")";
  return os.str();
}

void Adam::step() {
  check_bound();
  const double t = static_cast<double>(steps_ + 1);
  const double bias_correction1 = 1.0 - std::pow(opt_.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(opt_.beta2, t);
  AdamScalars s;
  s.beta1 = static_cast<float>(opt_.beta1);
  s.one_minus_beta1 = static_cast<float>(1.0 - opt_.beta1);
  s.beta2 = static_cast<float>(opt_.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - opt_.beta2);
  s.neg_step_size = static_cast<float>(-(lr_ / bias_correction1));
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(opt_.eps);
  s.weight_decay = static_cast<float>(opt_.weight_decay);
  s.decay = static_cast<float>(1.0 - lr_ * opt_.weight_decay);
  const AdamUpdate update =
      pick_update(decoupled_, !decoupled_ && opt_.weight_decay != 0.0, opt_.amsgrad);

  // Indices relative to the shard's start (0 unsharded): the gradients and the
  // state hold the shard's positions only.
  const int64_t at = shard_begin_;
  float* p = values_.get() + at;
  const float* g = step_grads();
  float* m = exp_avg_.data();
  float* v = exp_avg_sq_.data();
  float* vmax = max_exp_avg_sq_.data();  // null without amsgrad
  for_each_shard_range(
      [&](int64_t begin, int64_t end) { update(s, p, g, m, v, vmax, begin - at, end - at); });
  ++steps_;
}

std::vector<std::pair<std::string, Optimizer::FlatState*>> Adam::buffers() {
  std::vector<std::pair<std::string, FlatState*>> b{{"exp_avg", &exp_avg_},
                                                    {"exp_avg_sq", &exp_avg_sq_}};
  if (opt_.amsgrad) b.push_back({"max_exp_avg_sq", &max_exp_avg_sq_});
  return b;
}

}  // namespace normlab
