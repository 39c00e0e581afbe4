// A gradient checker for any Layer<double>, in one line of test code:
//
//   EXPECT_GRADIENTS_OK(layer, x, seed);  // x: a Tensor<double>, or a Shape for x ~ N(0,1)
//
// It compares the layer's backward with central differences of the scalar loss
//   L(x, params) = sum_i g_i * y_i,   g ~ N(0, 1) fixed by `seed`,
// so dL/dy = g and backward(g) must return dL/dx and accumulate dL/dparam. Every
// element of the input and of every parameter in state() (the entries with a grad)
// is perturbed, in training mode and then in eval mode.
//
// Step: h_i = 1e-5 * max(1, |x_i|). For a central difference the error is about
//   truncation h^2/6 * |L'''|  +  rounding eps * S / h,   S = sum |g_i y_i|, eps = 2^-52,
// balanced near h = cbrt(3 eps S / |L'''|) ~ 1e-5 for unit-scale values, where both
// terms are ~1e-10 relative. Measured on this suite: worst element 2e-8 for single
// layers, 1.4e-7 for a 12-layer Sequential (norms amplify rounding), against a
// tolerance of 1e-6; real bugs (a missing term, a wrong eps in backward, a
// transposed index) give 1e-5 to 1. The divisor is (x+h) - (x-h) as stored, not
// 2h, so rounding x+h to a double adds no error.
//
// Error per element: |a - n| / max(|a|, |n|, floor) with a the analytic and n the
// numeric value, floor = 1e-2 * the largest |n| over ALL tensors of the check. The
// rounding noise of a numeric derivative is an absolute amount, the same for every
// variable of one loss (~1e-11..1e-9 times the largest gradient here: normalization
// layers amplify the rounding of nearly cancelling sums). Normalization also makes
// many gradients exactly or nearly zero by symmetry (a Linear bias before BatchNorm,
// a beta before LayerNorm, the scale of anything followed by a norm); without a
// floor their noise would read as relative error 1. So: every gradient is checked
// to 1e-6 relative, or to 1e-8 of the largest gradient in the check, whichever is
// looser. The report also gives mlpack's ||a - n|| / max(||a||, ||n||) per tensor.
//
// Buffers: a training-mode forward updates buffers (BatchNorm's running_mean,
// running_var, num_batches_tracked). The checker snapshots every buffer (the
// state() entries without a grad) before it starts and restores them after EVERY
// forward, so each perturbed forward starts from the same state, the eval-mode check
// sees the running statistics the test set up, and the layer leaves the check as it
// entered. (Setting momentum to 0 would not do: momentum=None uses a factor
// 1/num_batches_tracked that changes with every call, and the trick does not reach
// layers nested in a Sequential.)
//
// Besides the numbers the checker asserts the contract of layer.hpp: the output has
// output_shape(x), forward is repeatable (same loss twice from the same state),
// parameter gradients accumulate (a second forward+backward doubles them) and dx is
// overwritten (it stays the same), and backward leaves the input untouched.
// NORMLAB_GRADCHECK_VERBOSE=1 prints every report, passing or not.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "normlab/layer.hpp"
#include "normlab/rng.hpp"
#include "normlab/tensor.hpp"

namespace normlab::test {

struct GradCheckOptions {
  double step = 1e-5;        // relative step, see above
  double tolerance = 1e-6;   // on the worst element's relative error
  double floor_frac = 1e-2;  // denominator floor: fraction of the largest gradient of the check
  bool both_modes = true;    // gradients_ok: training mode, then eval mode
};

// One tensor's comparison of analytic (backward) and numeric (central difference) gradients.
struct TensorGradError {
  std::string name;  // "input" or a parameter's state name ("weight", "0.weight_g")
  int64_t numel = 0;
  double max_rel_err = 0;            // worst element, with the floor described above
  int64_t worst = -1;                // its index
  double analytic = 0, numeric = 0;  // at that index
  double norm_rel_err = 0;           // ||a - n|| / max(||a||, ||n||)
};

struct GradCheckReport {
  std::string layer, mode;
  double floor = 0;  // the denominator floor used
  std::vector<TensorGradError> tensors;
  std::vector<std::string> problems;  // contract violations found on the way

  double worst() const {
    double w = 0;
    for (const auto& t : tensors) w = std::max(w, t.max_rel_err);
    return w;
  }
  bool ok(double tolerance) const {
    for (const auto& t : tensors)
      if (!(t.max_rel_err <= tolerance)) return false;  // NaN fails too
    return problems.empty();
  }
  std::string str() const {
    std::ostringstream os;
    os.precision(3);
    os << layer << " [" << mode << "], error floor " << floor << "\n";
    for (const auto& t : tensors)
      os << "  " << t.name << " (" << t.numel << "): max rel err " << t.max_rel_err << " at "
         << t.worst << " (analytic " << t.analytic << ", numeric " << t.numeric
         << "), norm rel err " << t.norm_rel_err << "\n";
    for (const auto& p : problems) os << "  PROBLEM: " << p << "\n";
    return os.str();
  }
};

namespace detail {

// sum(g * y) with an extended-precision accumulator, so summation adds no noise.
inline double dot_loss(const Tensor<double>& g, const Tensor<double>& y) {
  long double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<long double>(g[i]) * y[i];
  return static_cast<double>(s);
}

inline double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

inline double max_abs(const Tensor<double>& a) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::abs(a[i]));
  return m;
}

}  // namespace detail

// Central differences of loss() with respect to every element of `value`, which is
// perturbed in place and restored exactly. Usable without a layer (kernel-level checks).
inline Tensor<double> numeric_gradient(Tensor<double>& value, const std::function<double()>& loss,
                                       const GradCheckOptions& opt = {}) {
  Tensor<double> numeric(value.shape());
  for (int64_t i = 0; i < value.numel(); ++i) {
    const double x0 = value[i];
    const double h = opt.step * std::max(1.0, std::abs(x0));
    const double xp = x0 + h, xm = x0 - h;
    value[i] = xp;
    const double lp = loss();
    value[i] = xm;
    const double lm = loss();
    value[i] = x0;
    numeric[i] = (lp - lm) / (xp - xm);
  }
  return numeric;
}

// Compares analytic with numeric gradients element by element; `floor` is the
// smallest denominator (see the header comment).
inline TensorGradError compare_gradients(const std::string& name, const Tensor<double>& analytic,
                                         const Tensor<double>& numeric, double floor) {
  TensorGradError r;
  r.name = name;
  r.numel = numeric.numel();
  if (analytic.numel() != numeric.numel()) {
    r.max_rel_err = INFINITY;
    return r;
  }
  double diff2 = 0, a2 = 0, n2 = 0;
  for (int64_t i = 0; i < numeric.numel(); ++i) {
    const double a = analytic[i], n = numeric[i], d = std::abs(a - n);
    const double denom = std::max({std::abs(a), std::abs(n), floor});
    // 0/0 (both exactly zero) is agreement; NaN anywhere is the worst error.
    const double e = d == 0 ? 0.0 : (std::isnan(d) || denom == 0 ? INFINITY : d / denom);
    if (r.worst < 0 || e > r.max_rel_err) {
      r.max_rel_err = e;
      r.worst = i;
      r.analytic = a;
      r.numeric = n;
    }
    diff2 += d * d;
    a2 += a * a;
    n2 += n * n;
  }
  r.norm_rel_err = diff2 == 0 ? 0.0 : std::sqrt(diff2) / std::sqrt(std::max(a2, n2));
  if (std::isnan(r.norm_rel_err)) r.norm_rel_err = INFINITY;
  return r;
}

// The largest |value| over several gradients: the scale of the floor.
inline double gradient_scale(const std::vector<Tensor<double>>& numeric) {
  double m = 0;
  for (const auto& t : numeric) m = std::max(m, detail::max_abs(t));
  return m;
}

// Checks `layer` at input `x` in its current mode (training or eval).
inline GradCheckReport check_gradients(Layer<double>& layer, const Tensor<double>& x, uint64_t seed,
                                       const GradCheckOptions& opt = {}) {
  GradCheckReport rep;
  rep.layer = layer.name();
  rep.mode = layer.training() ? "train" : "eval";

  // Snapshot of every buffer; restored after every forward (see the header comment).
  std::vector<StateEntry<double>> state = layer.state();
  std::vector<Tensor<double>> saved_values;
  std::vector<int64_t> saved_counts;
  for (auto& e : state) {
    if (e.is_param()) continue;
    if (e.value) saved_values.push_back(*e.value);
    if (e.count) saved_counts.push_back(*e.count);
  }
  auto restore_buffers = [&] {
    size_t v = 0, c = 0;
    for (auto& e : state) {
      if (e.is_param()) continue;
      if (e.value) *e.value = saved_values[v++];
      if (e.count) *e.count = saved_counts[c++];
    }
  };
  Tensor<double> xin = x;  // the checker's own copy: perturbed in place below
  auto forward = [&]() -> const Tensor<double>& {
    const Tensor<double>& y = layer.forward(xin);
    restore_buffers();
    return y;
  };

  // Analytic gradients: one forward, one backward with dy = g, from zeroed grads.
  const Tensor<double>& y0 = forward();
  if (y0.shape() != layer.output_shape(x.shape()))
    rep.problems.push_back("output shape " + shape_str(y0.shape()) + " differs from output_shape " +
                           shape_str(layer.output_shape(x.shape())));
  Tensor<double> g(y0.shape());
  Rng rng(seed);
  rng.fill_normal(g.data(), g.numel());
  const double loss0 = detail::dot_loss(g, y0);
  layer.zero_grad();
  const bool want_dx = layer.input_grad();
  Tensor<double> dx = layer.backward(g);
  if (want_dx && dx.shape() != x.shape())
    rep.problems.push_back("dx has shape " + shape_str(dx.shape()) + ", input " +
                           shape_str(x.shape()));
  if (detail::max_abs_diff(xin, x) != 0)
    rep.problems.push_back("forward/backward changed the input");
  std::vector<Tensor<double>> grads;
  for (auto& e : state)
    if (e.is_param()) grads.push_back(*e.grad);

  // Contract: a second forward gives the same loss; a second backward adds the same grads again
  // and overwrites dx with the same values. (1e-12: room for a benign change of summation
  // order in a parallel kernel, none for state that drifts.)
  const double loss1 = detail::dot_loss(g, forward());
  if (!(std::abs(loss1 - loss0) <= 1e-12 * (1 + std::abs(loss0))))
    rep.problems.push_back("forward is not repeatable: loss " + std::to_string(loss0) + " then " +
                           std::to_string(loss1));
  const Tensor<double> dx2 = layer.backward(g);
  if (want_dx && dx2.shape() == dx.shape() &&
      !(detail::max_abs_diff(dx2, dx) <= 1e-12 * (1 + detail::max_abs(dx))))
    rep.problems.push_back("dx changed on a second backward (should be overwritten, not summed)");
  size_t k = 0;
  for (auto& e : state) {
    if (!e.is_param()) continue;
    Tensor<double> twice = grads[k];
    for (int64_t i = 0; i < twice.numel(); ++i) twice[i] *= 2;
    if (!(detail::max_abs_diff(*e.grad, twice) <= 1e-12 * (1 + detail::max_abs(twice))))
      rep.problems.push_back("gradient of " + e.name + " does not accumulate (+=)");
    ++k;
  }

  auto loss = [&] { return detail::dot_loss(g, forward()); };
  std::vector<std::string> names;
  std::vector<Tensor<double>> analytic, numeric;
  if (want_dx) {
    names.push_back("input");
    analytic.push_back(dx);
    numeric.push_back(numeric_gradient(xin, loss, opt));
  }
  k = 0;
  for (auto& e : state) {
    if (!e.is_param()) continue;
    names.push_back(e.name);
    analytic.push_back(grads[k++]);
    numeric.push_back(numeric_gradient(*e.value, loss, opt));
  }
  rep.floor = opt.floor_frac * gradient_scale(numeric);
  for (size_t t = 0; t < names.size(); ++t)
    rep.tensors.push_back(compare_gradients(names[t], analytic[t], numeric[t], rep.floor));
  layer.zero_grad();
  return rep;
}

// Training mode, then (if opt.both_modes) eval mode; the layer's mode is restored.
inline ::testing::AssertionResult gradients_ok(Layer<double>& layer, const Tensor<double>& x,
                                               uint64_t seed, const GradCheckOptions& opt = {}) {
  const bool was_training = layer.training();
  std::vector<bool> modes{true};
  if (opt.both_modes) modes.push_back(false);
  std::string all;
  bool ok = true;
  for (bool train : modes) {
    layer.set_training(train);
    const GradCheckReport r = check_gradients(layer, x, seed, opt);
    ok = ok && r.ok(opt.tolerance);
    all += r.str();
  }
  layer.set_training(was_training);
  if (std::getenv("NORMLAB_GRADCHECK_VERBOSE")) std::fputs(all.c_str(), stdout);
  return ok ? ::testing::AssertionSuccess() << all : ::testing::AssertionFailure() << all;
}

// An input of the given shape with N(0,1) values drawn from `seed`.
inline Tensor<double> randn(const Shape& shape, uint64_t seed, double mean = 0, double stddev = 1) {
  Tensor<double> t(shape);
  Rng(seed ^ 0x5eedULL).fill_normal(t.data(), t.numel(), mean, stddev);
  return t;
}

inline ::testing::AssertionResult gradients_ok(Layer<double>& layer, const Shape& input_shape,
                                               uint64_t seed, const GradCheckOptions& opt = {}) {
  return gradients_ok(layer, randn(input_shape, seed), seed, opt);
}

}  // namespace normlab::test

#define EXPECT_GRADIENTS_OK(layer, input, seed) \
  EXPECT_TRUE(::normlab::test::gradients_ok((layer), (input), (seed)))
