// The weight-norm data-dependent init (Salimans & Kingma 2016, section 3;
// include/normlab/weight_norm_init.hpp): every WN layer's pre-activations are
// standardised on the batch, v ~ N(0, 0.05^2), the PyTorch twin
// (python/normlab_torch.py, fixtures tests/fixtures/wn_init/ from
// tests/fixtures/generate_wn_init.py) gives the same g and b for the same v and
// batch, the result is deterministic, and bad input is refused leaving the model
// as it was.
#include "normlab/weight_norm_init.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ckpt_test_util.hpp"
#include "gradcheck.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/notebook_layers.hpp"
#include "normlab/state_dict.hpp"
#include "omp_threads.hpp"

namespace normlab {
namespace {

using nlohmann::json;
using testing::expect_error;

// Inputs like pixels: values in [0, 1) with a per-feature offset, so that the
// first layer's t has a clearly non-zero mean to remove.
template <typename T>
Tensor<T> pixel_batch(const Shape& shape, uint64_t seed) {
  Tensor<T> x(shape);
  Rng rng(seed);
  const int64_t D = shape.back();
  for (int64_t i = 0; i < x.numel(); ++i)
    x[i] = static_cast<T>(rng.uniform() * (0.5 + 0.5 * static_cast<double>(i % D) / D));
  return x;
}

struct Stats {
  double worst_mean = 0, worst_std = 0;  // max |mean| and max |std - 1| over the units
};

// Mean and biased std of every column of y (rows = all leading dims) in double.
template <typename T>
Stats column_stats(const Tensor<T>& y) {
  const int64_t O = y.shape().back(), R = y.numel() / O;
  Stats s;
  for (int64_t o = 0; o < O; ++o) {
    double m = 0, q = 0;
    for (int64_t r = 0; r < R; ++r) m += static_cast<double>(y[r * O + o]);
    m /= static_cast<double>(R);
    for (int64_t r = 0; r < R; ++r) {
      const double d = static_cast<double>(y[r * O + o]) - m;
      q += d * d;
    }
    s.worst_mean = std::max(s.worst_mean, std::abs(m));
    s.worst_std = std::max(s.worst_std, std::abs(std::sqrt(q / static_cast<double>(R)) - 1));
  }
  return s;
}

// Runs the model's children one by one (nested Sequentials too) and collects the
// output of every WeightNormLinear: its pre-activations, when its ReLU is a layer of its own.
template <typename T>
const Tensor<T>& walk(Layer<T>& layer, const Tensor<T>& x, std::vector<Stats>& out) {
  if (auto* seq = dynamic_cast<Sequential<T>*>(&layer)) {
    const Tensor<T>* h = &x;
    for (size_t i = 0; i < seq->size(); ++i) h = &walk((*seq)[i], *h, out);
    return *h;
  }
  const Tensor<T>& y = layer.forward(x);
  if (dynamic_cast<WeightNormLinear<T>*>(&layer)) out.push_back(column_stats(y));
  return y;
}

template <typename T>
std::vector<Stats> preactivation_stats(Sequential<T>& model, const Tensor<T>& x) {
  std::vector<Stats> out;
  walk<T>(model, x, out);
  return out;
}

const char* kSeed001 = "seed001";

template <typename T>
void expect_standardised(double tol) {
  Rng rng(7);
  auto model = build_model<T>(kSeed001, {256, 784}, rng);
  const Tensor<T> x = pixel_batch<T>({256, 784}, 8);
  // Before: PyTorch's init leaves the pre-activations far from (0, 1).
  const std::vector<Stats> before = preactivation_stats(*model, x);
  ASSERT_EQ(before.size(), 4u);
  EXPECT_GT(before[0].worst_std, 0.2);

  const WeightNormInitReport r = data_dependent_init(*model, x, rng);
  ASSERT_EQ(r.layers.size(), 4u);
  EXPECT_EQ(r.layers[0].path, "0");
  EXPECT_EQ(r.layers[3].path, "9");
  EXPECT_EQ(r.layers[0].rows, 256);
  EXPECT_EQ(r.layers[1].units, 512);
  EXPECT_EQ(r.summary(), "4 layers (0, 3, 6, 9)");

  const std::vector<Stats> after = preactivation_stats(*model, x);
  ASSERT_EQ(after.size(), 4u);
  for (size_t k = 0; k < after.size(); ++k) {
    SCOPED_TRACE("WN layer " + std::to_string(k));
    EXPECT_LT(after[k].worst_mean, tol);
    EXPECT_LT(after[k].worst_std, tol);
  }
}

TEST(WeightNormInit, PreActivationsHaveMeanZeroAndStdOneDouble) {
  expect_standardised<double>(1e-10);
}
TEST(WeightNormInit, PreActivationsHaveMeanZeroAndStdOneFloat) {
  expect_standardised<float>(1e-4);
}

// With fused ReLUs (as the Trainer runs a model) the init still standardises the
// pre-activations, not the rectified outputs: the same values as unfused.
TEST(WeightNormInit, FusedReLUsGiveTheSameInit) {
  Rng a(11), b(11);
  auto plain = build_model<double>(kSeed001, {64, 784}, a);
  auto fused = build_model<double>(kSeed001, {64, 784}, b);
  ASSERT_GT(fused->fuse_relus(), 0);
  const Tensor<double> x = pixel_batch<double>({64, 784}, 12);
  data_dependent_init(*plain, x, a);
  data_dependent_init(*fused, x, b);
  const StateDict<double> p = state_dict(*plain), f = state_dict(*fused);
  ASSERT_EQ(p.keys(), f.keys());
  for (size_t i = 0; i < p.size(); ++i)
    if (const auto* t = std::get_if<Tensor<double>>(&p[i].value)) {
      const Tensor<double>& u = std::get<Tensor<double>>(f[i].value);
      for (int64_t j = 0; j < t->numel(); ++j)
        ASSERT_EQ((*t)[j], u[j]) << p[i].key << "[" << j << "]";
    }
}

TEST(WeightNormInit, VIsNormalWithStd005) {
  Rng rng(21);
  WeightNormLinear<float> l(784, 512, true, WeightNormDim::Rows, rng);
  const Tensor<float> x = pixel_batch<float>({32, 784}, 22);
  data_dependent_init<float>(l, x, rng);
  const Tensor<float>& v = l.weight_v;
  double m = 0, q = 0, q4 = 0;
  for (int64_t i = 0; i < v.numel(); ++i) m += v[i];
  m /= static_cast<double>(v.numel());
  for (int64_t i = 0; i < v.numel(); ++i) {
    const double d = v[i] - m;
    q += d * d;
    q4 += d * d * d * d;
  }
  const double sd = std::sqrt(q / static_cast<double>(v.numel()));
  const double n = static_cast<double>(v.numel());  // 401408
  EXPECT_LT(std::abs(m), 5 * 0.05 / std::sqrt(n));  // 5 standard errors of the mean
  EXPECT_NEAR(sd, 0.05, 0.05 * 5 / std::sqrt(2 * n));
  // Normal, not uniform: kurtosis 3 (a uniform's is 1.8).
  EXPECT_NEAR(q4 / n / (sd * sd * sd * sd), 3.0, 0.05);
}

TEST(WeightNormInit, DeterministicForASeedAndAnyThreadCount) {
  auto run = [](uint64_t seed, int threads) {
    const Threads t(threads);
    Rng rng(seed);
    auto model = build_model<float>(kSeed001, {128, 784}, rng);
    const Tensor<float> x = pixel_batch<float>({128, 784}, 31);
    data_dependent_init(*model, x, rng);
    return state_dict(*model);
  };
  const StateDict<float> a = run(5, 1), b = run(5, 2), c = run(6, 2);
  ASSERT_EQ(a.keys(), b.keys());
  bool any_diff = false;
  for (size_t i = 0; i < a.size(); ++i)
    if (const auto* t = std::get_if<Tensor<float>>(&a[i].value)) {
      const Tensor<float>& u = std::get<Tensor<float>>(b[i].value);
      const Tensor<float>& w = std::get<Tensor<float>>(c[i].value);
      EXPECT_EQ(std::memcmp(t->data(), u.data(), t->numel() * sizeof(float)), 0) << a[i].key;
      any_diff |= std::memcmp(t->data(), w.data(), t->numel() * sizeof(float)) != 0;
    }
  EXPECT_TRUE(any_diff) << "another seed gave the same init";
}

TEST(WeightNormInit, BuffersOfOtherLayersAreLeftAsTheyWere) {
  Rng rng(41);
  auto model = build_model<double>("wnlinear(8), relu, batchnorm, wnlinear(3)", {16, 5}, rng);
  auto& bn = dynamic_cast<BatchNorm1d<double>&>((*model)[2]);
  bn.running_mean[3] = 0.25;
  bn.num_batches_tracked = 4;
  const Tensor<double> x = test::randn({16, 5}, 42, 0.3, 2.0);
  data_dependent_init(*model, x, rng);
  EXPECT_EQ(bn.running_mean[3], 0.25);
  EXPECT_EQ(bn.running_var[3], 1.0);
  EXPECT_EQ(bn.num_batches_tracked, 4);
  // The init pass used BatchNorm's batch statistics (training mode): the last
  // layer's pre-activations are standardised in that mode.
  const std::vector<Stats> s = preactivation_stats(*model, x);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_LT(s[1].worst_mean, 1e-10);
  EXPECT_LT(s[1].worst_std, 1e-10);
}

TEST(WeightNormInit, GradientsStillCheck) {
  Rng rng(51);
  // No ReLU: the standardised pre-activations put some inputs of a ReLU next to
  // its kink, where central differences are not a derivative.
  auto model = build_model<double>("wnlinear(6), layernorm, wnlinear(5), batchnorm, wnlinear(4)",
                                   {8, 5}, rng);
  const Tensor<double> x = test::randn({8, 5}, 52, 0.5, 1.0);
  data_dependent_init(*model, x, rng);
  EXPECT_GRADIENTS_OK(*model, Shape({8, 5}), 53);
}

// ---- the PyTorch twin ----
Tensor<double> json_tensor(const json& j) {
  Tensor<double> t(j.at("shape").get<Shape>());
  const bool f32 = j.value("f32", false);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double v = j.at("data")[i].get<double>();
    t[i] = f32 ? static_cast<double>(static_cast<float>(v)) : v;
  }
  return t;
}

template <typename T>
StateDict<T> json_state(const json& j) {
  StateDict<T> sd;
  for (const auto& [k, v] : j.items())
    if (v.value("dtype", "") == "int64")
      sd.insert(k, v.at("data")[0].template get<int64_t>());
    else
      sd.insert(k, tensor_cast<T>(json_tensor(v)));
  return sd;
}

template <typename T>
void run_twin(const std::string& name, double tol) {
  std::ifstream in(std::filesystem::path(NORMLAB_SOURCE_DIR) / "tests" / "fixtures" / "wn_init" /
                   (name + ".json"));
  ASSERT_TRUE(in) << name;
  const json fx = json::parse(in);
  Rng rng(0);
  auto model =
      build_model<T>(fx.at("spec").get<std::string>(), fx.at("input_shape").get<Shape>(), rng);
  load_state_dict(*model, json_state<T>(fx.at("initial_state")));
  const Tensor<T> x = tensor_cast<T>(json_tensor(fx.at("batch")));
  const WeightNormInitReport r = data_dependent_init(*model, x, rng, {.draw_v = false});
  std::vector<std::string> paths;
  for (const auto& l : r.layers) paths.push_back(l.path);
  EXPECT_EQ(paths, fx.at("initialised").get<std::vector<std::string>>());

  const StateDict<T> got = state_dict(*model);
  const StateDict<double> want = json_state<double>(fx.at("expected_state"));  // keys sorted
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& k = got[i].key;
    if (const int64_t* c = std::get_if<int64_t>(&got[i].value)) {
      EXPECT_EQ(*c, want.count(k)) << k;
      continue;
    }
    const Tensor<T>& g = std::get<Tensor<T>>(got[i].value);
    const Tensor<double>& w = want.tensor(k);
    ASSERT_EQ(g.shape(), w.shape()) << k;
    for (int64_t j = 0; j < g.numel(); ++j)
      EXPECT_NEAR(static_cast<double>(g[j]), w[j], tol * std::max(1.0, std::abs(w[j])))
          << name << ": " << k << "[" << j << "]";
  }
}

TEST(WeightNormInitTwin, MixedLayersDouble) {
  run_twin<double>("mixed", 1e-10);
}
TEST(WeightNormInitTwin, MixedLayersFloat) {
  run_twin<float>("mixed", 1e-4);
}
TEST(WeightNormInitTwin, RowsOf3dInputDouble) {
  run_twin<double>("rows_3d", 1e-10);
}
TEST(WeightNormInitTwin, RowsOf3dInputFloat) {
  run_twin<float>("rows_3d", 1e-4);
}
TEST(WeightNormInitTwin, Seed001ShapeDouble) {
  run_twin<double>("seed001_small", 1e-10);
}
TEST(WeightNormInitTwin, Seed001ShapeFloat) {
  run_twin<float>("seed001_small", 1e-4);
}

// ---- refused input: a clear Error, and the model exactly as it was ----
template <typename T>
std::vector<std::vector<T>> values_of(Layer<T>& m) {
  std::vector<std::vector<T>> out;
  for (const auto& e : m.state())
    if (e.value) out.emplace_back(e.value->data(), e.value->data() + e.value->numel());
  return out;
}

void expect_refused(const std::string& spec, const Shape& model_input, const Tensor<double>& x,
                    const std::vector<std::string>& parts) {
  SCOPED_TRACE(spec + " on " + shape_str(x.shape()));
  Rng rng(61);
  auto model = build_model<double>(spec, model_input, rng);
  const auto before = values_of<double>(*model);
  expect_error([&] { data_dependent_init(*model, x, rng); }, parts);
  EXPECT_EQ(values_of<double>(*model), before) << "a refused init changed the model";
}

TEST(WeightNormInitErrors, BadBatchShapes) {
  const Tensor<double> x = test::randn({4, 6}, 62);
  expect_refused("wnlinear(3)", {4, 5}, x,
                 {"weight-norm data-dependent init: the batch of shape (4, 6) does not fit the "
                  "model",
                  "expected input with last dimension 5"});
  expect_refused("wnlinear(3)", {4, 5}, test::randn({5}, 63),
                 {"the batch must have a batch dimension and features, got shape (5)"});
}

TEST(WeightNormInitErrors, BatchOfOneRowHasNoStandardDeviation) {
  expect_refused("wnlinear(4), relu, wnlinear(3)", {1, 5}, test::randn({1, 5}, 64),
                 {"layer 0 (WeightNormLinear(5, 4))",
                  "needs a batch of at least 2 rows to take a standard deviation, got 1"});
  expect_refused("wnlinear(4)", {1, 5}, Tensor<double>({0, 5}), {"got 0"});
  // BatchNorm before the first WN layer refuses the one-row batch itself.
  expect_refused(
      "batchnorm, wnlinear(3)", {1, 5}, test::randn({1, 5}, 65),
      {"weight-norm data-dependent init: the pass over the batch stopped", "BatchNorm1d"});
}

TEST(WeightNormInitErrors, IdenticalRowsHaveSigmaZero) {
  Tensor<double> x({6, 5});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = 0.1 * static_cast<double>(i % 5) + 0.3;
  expect_refused("wnlinear(4)", {6, 5}, x,
                 {"layer 0 (WeightNormLinear(5, 4))", "does not vary over the 6 rows",
                  "g = 1/sigma is undefined"});
  // A later layer: a ReLU that zeroes a whole unit of the layer before can't do it
  // (v is drawn afresh), but identical rows reach every layer identical.
  expect_refused("wnlinear(4), relu, layernorm, wnlinear(3)", {6, 5}, x, {"layer 0"});
}

TEST(WeightNormInitErrors, NonFiniteBatch) {
  Tensor<double> x = test::randn({4, 5}, 66);
  x[7] = NAN;
  expect_refused("wnlinear(4)", {4, 5}, x,
                 {"layer 0", "input on the batch holds nan (row 1, feature 2)"});
}

TEST(WeightNormInitErrors, LayersWithoutOneGPerUnit) {
  const Tensor<double> x = test::randn({4, 5}, 67);
  expect_refused("wnlinear(4), relu, wnlinear(3, dim=1)", {4, 5}, x,
                 {"layer 2 (WeightNormLinear(4, 3, dim=1))", "one norm per output row",
                  "weight_g has shape (1, 4)"});
  expect_refused("wnlinear(4, dim=none)", {4, 5}, x, {"layer 0", "weight_g has shape ()"});
  expect_refused("wnlinear(4, dim=-1)", {4, 5}, x, {"layer 0", "weight_g has shape ()"});
  expect_refused("blk: [wnlinear(4, bias=false)]", {4, 5}, x,
                 {"layer blk.0 (WeightNormLinear(5, 4, bias=false))", "has no bias"});
  expect_refused("p1: nb_wnlinear(4)", {4, 5}, x,
                 {"layer p1 (NotebookWeightNormLinear", "notebook's WeightNormalizedLinear"});
  expect_refused("linear(4), relu, batchnorm", {4, 5}, x,
                 {"the model has no WeightNormLinear (wnlinear) layer to initialise"});
}

TEST(WeightNormInitErrors, ZeroVWhenKept) {
  Rng rng(68);
  WeightNormLinear<double> l(5, 3, true, WeightNormDim::Rows, rng);
  for (int64_t i = 5; i < 10; ++i) l.weight_v[i] = 0;
  expect_error(
      [&] {
        data_dependent_init<double>(l, test::randn({4, 5}, 69), rng, {.draw_v = false});
      },
      {"layer (the model itself) (WeightNormLinear(5, 3))", "v of output unit 1 has norm 0"});
}

}  // namespace
}  // namespace normlab
