// The data-dependent initialisation of weight norm (Salimans & Kingma 2016,
// section 3): include/normlab/weight_norm_init.hpp has the contract,
// docs/weight-norm-init.md the definition and its choices.
#include "normlab/weight_norm_init.hpp"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

// A unit whose t spreads less than this fraction of its largest |t| does not
// vary over the batch: its sigma is zero or rounding noise, and 1/sigma is no
// scale (t of identical rows differs by a few ulps when at all).
constexpr double kMinRelativeSpread = 1e-12;

std::string join(const std::string& path, const std::string& child) {
  return path.empty() ? child : path + "." + child;
}

template <typename T>
std::string where(const std::string& path, const Layer<T>& layer) {
  return "layer " + (path.empty() ? std::string("(the model itself)") : path) + " (" +
         layer.name() + ")";
}

constexpr const char* kWhat = "weight-norm data-dependent init";

template <typename T>
class InitPass {
 public:
  InitPass(Rng& rng, const WeightNormInitOptions& options) : rng_(rng), opt_(options) {}

  // Checks every layer the pass will meet before anything changes; returns the
  // number of WeightNormLinear layers.
  int64_t check(Layer<T>& layer, const std::string& path) {
    if (auto* seq = dynamic_cast<Sequential<T>*>(&layer)) {
      int64_t n = 0;
      for (size_t i = 0; i < seq->size(); ++i)
        n += check((*seq)[i], join(path, seq->child_name(i)));
      return n;
    }
    if (auto* wn = dynamic_cast<WeightNormLinear<T>*>(&layer)) {
      if (wn->dim() != WeightNormDim::Rows)
        fail(kWhat, ": ", where(path, layer),
             ": needs one norm per output row (weight_norm dim=0 or -2, weight_g of shape (out, "
             "1)); this layer's weight_g has shape ",
             shape_str(wn->weight_g.shape()),
             " (dim=1 or none), which has no g per output unit to set to 1/sigma");
      if (wn->bias.numel() == 0)
        fail(kWhat, ": ", where(path, layer),
             ": has no bias, and the init sets the bias of each output unit to -mu/sigma");
      return 1;
    }
    if (dynamic_cast<NotebookWeightNormLinear<T>*>(&layer))
      fail(kWhat, ": ", where(path, layer),
           ": the notebook's WeightNormalizedLinear has a full (out, in) g and a norm per input "
           "column, not one g per output unit; the paper's init applies to wnlinear (weight_norm "
           "dim=0) only");
    return 0;
  }

  // The pass: forward through the model, initialising each WeightNormLinear
  // from its input just before running it.
  const Tensor<T>& run(Layer<T>& layer, const std::string& path, const Tensor<T>& x) {
    if (auto* seq = dynamic_cast<Sequential<T>*>(&layer)) {
      const Tensor<T>* h = &x;
      for (size_t i = 0; i < seq->size(); ++i)
        h = &run((*seq)[i], join(path, seq->child_name(i)), *h);
      return *h;
    }
    if (auto* wn = dynamic_cast<WeightNormLinear<T>*>(&layer)) init(*wn, path, x);
    return layer.forward(x);
  }

  WeightNormInitReport report;

 private:
  void init(WeightNormLinear<T>& l, const std::string& path, const Tensor<T>& x) {
    const int64_t O = l.weight_v.dim(0), I = l.weight_v.dim(1);
    const int64_t R = x.numel() / I;  // output_shape() checked the last dim
    if (R < 2)
      fail(kWhat, ": ", where(path, l), ": needs a batch of at least 2 rows to take a standard ",
           "deviation, got ", R, " (input shape ", shape_str(x.shape()), ")");
    for (int64_t i = 0; i < x.numel(); ++i)
      if (!std::isfinite(static_cast<double>(x[i])))
        fail(kWhat, ": ", where(path, l), ": its input on the batch holds ",
             static_cast<double>(x[i]), " (row ", i / I, ", feature ", i % I, ")");
    if (opt_.draw_v) rng_.fill_normal(l.weight_v.data(), O * I, 0.0, opt_.v_std);

    std::vector<double> mu(static_cast<size_t>(O)), sigma(static_cast<size_t>(O)),
        vnorm(static_cast<size_t>(O)), tmax(static_cast<size_t>(O));
    const T* v = l.weight_v.data();
    const T* xs = x.data();
    // One unit per iteration, each computed alone: the same result for any thread count.
#pragma omp parallel for schedule(static) if (R * I * O > (1 << 18))
    for (int64_t o = 0; o < O; ++o) {
      const T* vo = v + o * I;
      double ss = 0;
      for (int64_t i = 0; i < I; ++i) ss += static_cast<double>(vo[i]) * vo[i];
      const double n = std::sqrt(ss);
      // Welford's mean and sum of squared deviations of t = v.x / ||v|| over the rows.
      double mean = 0, m2 = 0, amax = 0;
      auto add = [&](int64_t r, double dot) {
        const double t = dot / n;
        const double d = t - mean;
        mean += d / static_cast<double>(r + 1);
        m2 += d * (t - mean);
        amax = std::max(amax, std::abs(t));
      };
      // Four rows at a time: four independent sums (in double, each in order)
      // instead of one chain of dependent additions.
      int64_t r = 0;
      for (; r + 4 <= R; r += 4) {
        const T *x0 = xs + r * I, *x1 = x0 + I, *x2 = x1 + I, *x3 = x2 + I;
        double d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        for (int64_t i = 0; i < I; ++i) {
          const double vi = static_cast<double>(vo[i]);
          d0 += vi * x0[i], d1 += vi * x1[i], d2 += vi * x2[i], d3 += vi * x3[i];
        }
        add(r, d0), add(r + 1, d1), add(r + 2, d2), add(r + 3, d3);
      }
      for (; r < R; ++r) {
        const T* xr = xs + r * I;
        double dot = 0;
        for (int64_t i = 0; i < I; ++i) dot += static_cast<double>(vo[i]) * xr[i];
        add(r, dot);
      }
      vnorm[o] = n;
      mu[o] = mean;
      sigma[o] = std::sqrt(m2 / static_cast<double>(R));  // biased, as the paper's code
      tmax[o] = amax;
    }

    // Everything checked before the first value is written.
    for (int64_t o = 0; o < O; ++o) {
      if (!(vnorm[o] > 0) || !std::isfinite(vnorm[o]))
        fail(kWhat, ": ", where(path, l), ": v of output unit ", o, " has norm ", vnorm[o],
             ", so t = v.x/||v|| is undefined");
      if (!std::isfinite(mu[o]) || !std::isfinite(sigma[o]))
        fail(kWhat, ": ", where(path, l), ": t = v.x/||v|| of output unit ", o,
             " overflows on the batch (mean ", mu[o], ", standard deviation ", sigma[o], ")");
      if (!(sigma[o] > kMinRelativeSpread * tmax[o]))
        fail(kWhat, ": ", where(path, l), ": t = v.x/||v|| of output unit ", o,
             " does not vary over the ", R, " rows of the batch (mean ", mu[o],
             ", standard deviation ", sigma[o],
             "), so g = 1/sigma is undefined; use a batch of different rows");
      const T g = static_cast<T>(1.0 / sigma[o]), b = static_cast<T>(-mu[o] / sigma[o]);
      if (!std::isfinite(static_cast<double>(g)) || !std::isfinite(static_cast<double>(b)))
        fail(kWhat, ": ", where(path, l), ": output unit ", o, " has standard deviation ", sigma[o],
             " and mean ", mu[o], " on the batch: g = 1/sigma = ", 1.0 / sigma[o],
             " or b = -mu/sigma = ", -mu[o] / sigma[o],
             " is not a finite number in this precision");
    }
    for (int64_t o = 0; o < O; ++o) {
      l.weight_g[o] = static_cast<T>(1.0 / sigma[o]);
      l.bias[o] = static_cast<T>(-mu[o] / sigma[o]);
    }
    report.layers.push_back({path, l.name(), R, O});
  }

  Rng& rng_;
  const WeightNormInitOptions& opt_;
};

}  // namespace

std::string WeightNormInitReport::summary() const {
  std::string s = std::to_string(layers.size()) + (layers.size() == 1 ? " layer (" : " layers (");
  for (size_t i = 0; i < layers.size(); ++i) s += (i ? ", " : "") + layers[i].path;
  return s + ")";
}

template <typename T>
WeightNormInitReport data_dependent_init(Layer<T>& model, const Tensor<T>& batch, Rng& rng,
                                         const WeightNormInitOptions& options) {
  if (!(options.v_std > 0) || !std::isfinite(options.v_std))
    fail(kWhat, ": the standard deviation of v must be positive and finite, got ", options.v_std);
  if (batch.rank() < 2)
    fail(kWhat, ": the batch must have a batch dimension and features, got shape ",
         shape_str(batch.shape()));
  try {
    model.output_shape(batch.shape());
  } catch (const Error& e) {
    fail(kWhat, ": the batch of shape ", shape_str(batch.shape()),
         " does not fit the model: ", e.what());
  }
  InitPass<T> pass(rng, options);
  if (pass.check(model, "") == 0)
    fail(kWhat, ": the model has no WeightNormLinear (wnlinear) layer to initialise");

  // All or nothing: a refused init leaves every parameter as it was, and a
  // successful one every buffer (running statistics the pass moved).
  std::vector<StateEntry<T>> state = model.state();
  std::vector<Tensor<T>> values;
  std::vector<int64_t> counts;
  for (const auto& e : state) {
    if (e.value) values.push_back(*e.value);
    if (e.count) counts.push_back(*e.count);
  }
  auto restore = [&](bool params) {
    size_t vi = 0, ci = 0;
    for (auto& e : state) {
      if (e.value) {
        const Tensor<T>& saved = values[vi++];
        if (params || !e.is_param())
          std::copy(saved.data(), saved.data() + saved.numel(), e.value->data());
      }
      if (e.count) *e.count = counts[ci++];
    }
  };
  try {
    pass.run(model, "", batch);
  } catch (const Error& e) {
    restore(true);
    if (std::string_view(e.what()).starts_with(kWhat)) throw;
    fail(kWhat, ": the pass over the batch stopped: ", e.what());  // e.g. BatchNorm, one row
  } catch (...) {
    restore(true);
    throw;
  }
  restore(false);
  return pass.report;
}

template WeightNormInitReport data_dependent_init<float>(Layer<float>&, const Tensor<float>&, Rng&,
                                                         const WeightNormInitOptions&);
template WeightNormInitReport data_dependent_init<double>(Layer<double>&, const Tensor<double>&,
                                                          Rng&, const WeightNormInitOptions&);

}  // namespace normlab
