// State dicts written by real PyTorch modules (tests/fixtures/state_dicts/, made
// by tests/fixtures/generate_state_dicts.py with PyTorch 2.15 and safetensors):
// both weight-norm spellings and a BatchNorm without num_batches_tracked load,
// give PyTorch's output, and normlab exports PyTorch's keys in PyTorch's order.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "ckpt_test_util.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/layers.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& name) {
  return (fs::path(NORMLAB_SOURCE_DIR) / "tests" / "fixtures" / "state_dicts" / name).string();
}

// The generator's network.
template <typename T>
std::unique_ptr<Sequential<T>> fixture_net(uint64_t seed = 1) {
  Rng rng(seed);
  auto m = std::make_unique<Sequential<T>>();
  m->add(std::make_unique<Linear<T>>(4, 6, true, rng));
  m->add(std::make_unique<BatchNorm1d<T>>(6));
  m->add(std::make_unique<ReLU<T>>());
  m->add(std::make_unique<LayerNorm<T>>(Shape{6}));
  m->add(std::make_unique<WeightNormLinear<T>>(6, 5, true, WeightNormDim::Rows, rng));
  m->add(std::make_unique<ReLU<T>>());
  m->add(std::make_unique<WeightNormLinear<T>>(5, 3, true, WeightNormDim::Whole, rng));
  return m;
}

struct Io {
  Tensor<float> x, y;
  int64_t count;
};

Io io() {
  const StateDict<float> sd =
      state_dict_from_safetensors<float>(read_safetensors(fixture("net_io.safetensors")), "io");
  return {sd.tensor("x"), sd.tensor("y"), sd.count("num_batches_tracked")};
}

template <typename T>
void expect_pytorch_output(Sequential<T>& m, double tol) {
  const Io d = io();
  m.set_training(false);
  const Tensor<T> x = tensor_cast<T>(d.x);  // forward keeps a pointer to its input
  const Tensor<T>& y = m.forward(x);
  ASSERT_EQ(y.shape(), d.y.shape());
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(static_cast<double>(y[i]), static_cast<double>(d.y[i]), tol) << "y[" << i << "]";
}

int64_t count_of(Sequential<float>& m) {
  return dynamic_cast<BatchNorm1d<float>&>(m[1]).num_batches_tracked;
}

TEST(StateDictFixtures, LegacyWeightNormKeysLoad) {
  auto m = fixture_net<float>();
  const Metadata meta = load_model(fixture("net_legacy.safetensors"), m->state());
  EXPECT_EQ(meta.at("torch").rfind("2.", 0), 0u) << meta.at("torch");
  EXPECT_EQ(count_of(*m), io().count);
  EXPECT_EQ(io().count, 3);
  expect_pytorch_output(*m, 1e-5);
}

TEST(StateDictFixtures, ParametrizationsWeightNormKeysLoad) {
  auto legacy = fixture_net<float>();
  load_model(fixture("net_legacy.safetensors"), legacy->state());
  auto m = fixture_net<float>(2);
  load_model(fixture("net_parametrizations.safetensors"), m->state());
  // original0 is g and original1 is v: the very values of the legacy file.
  auto& a = dynamic_cast<WeightNormLinear<float>&>((*legacy)[4]);
  auto& b = dynamic_cast<WeightNormLinear<float>&>((*m)[4]);
  ASSERT_EQ(b.weight_g.shape(), (Shape{5, 1}));
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(b.weight_g[i], a.weight_g[i]);
  for (int64_t i = 0; i < 30; ++i) EXPECT_EQ(b.weight_v[i], a.weight_v[i]);
  auto& c = dynamic_cast<WeightNormLinear<float>&>((*legacy)[6]);
  auto& d = dynamic_cast<WeightNormLinear<float>&>((*m)[6]);
  EXPECT_EQ(d.weight_g.shape(), Shape{});
  EXPECT_EQ(d.weight_g[0], c.weight_g[0]);
  expect_pytorch_output(*m, 1e-5);

  // In memory, the renames are reported.
  auto n = fixture_net<float>(3);
  const LoadResult r =
      load_state_dict(*n, state_dict_from_safetensors<float>(
                              read_safetensors(fixture("net_parametrizations.safetensors")), "p"));
  EXPECT_EQ(r.renamed_keys, (std::vector<std::pair<std::string, std::string>>{
                                {"4.parametrizations.weight.original0", "4.weight_g"},
                                {"4.parametrizations.weight.original1", "4.weight_v"},
                                {"6.parametrizations.weight.original0", "6.weight_g"},
                                {"6.parametrizations.weight.original1", "6.weight_v"}}));
  EXPECT_TRUE(r.kept_counts.empty());
}

TEST(StateDictFixtures, BatchNormWithoutCountLoadsAndKeepsTheCountLikePyTorch) {
  const SafetensorsFile f = read_safetensors(fixture("net_old_batchnorm.safetensors"));
  EXPECT_EQ(f.find("1.num_batches_tracked"), nullptr);
  // What PyTorch 2.15 did with this very file (recorded by the generator).
  EXPECT_EQ(f.metadata.at("count_after_load_fresh"), "0");
  EXPECT_EQ(f.metadata.at("count_after_load_7"), "7");

  auto fresh = fixture_net<float>();
  load_model(fixture("net_old_batchnorm.safetensors"), fresh->state());
  EXPECT_EQ(count_of(*fresh), 0);
  expect_pytorch_output(*fresh, 1e-5);

  auto seven = fixture_net<float>();
  dynamic_cast<BatchNorm1d<float>&>((*seven)[1]).num_batches_tracked = 7;
  const LoadResult r =
      load_state_dict(*seven, state_dict_from_safetensors<float>(f, "old-batchnorm"));
  EXPECT_EQ(r.kept_counts, std::vector<std::string>{"1.num_batches_tracked"});
  EXPECT_EQ(count_of(*seven), 7);

  // Without the PyTorch deviations, the key is missing like any other.
  auto strict = fixture_net<float>();
  testing::expect_error(
      [&] {
        load_state_dict(*strict, state_dict_from_safetensors<float>(f, "old-batchnorm"),
                        {.pytorch_compat = false});
      },
      {"the state dict does not match the model: missing 5 keys '1.num_batches_tracked', "
       "'4.weight_g'",
       "unexpected 4 keys '4.parametrizations.weight.original0'"});
}

TEST(StateDictFixtures, DoubleModelsLoadThemToo) {
  for (const char* name : {"net_legacy.safetensors", "net_parametrizations.safetensors",
                           "net_old_batchnorm.safetensors"}) {
    SCOPED_TRACE(name);
    auto m = fixture_net<double>();
    load_model(fixture(name), m->state());
    expect_pytorch_output(*m, 1e-5);
  }
}

TEST(StateDictFixtures, ExportMatchesPyTorchKeysOrderShapesAndValues) {
  for (const auto& [keys, file] :
       {std::pair{WeightNormKeys::Legacy, "net_legacy.safetensors"},
        std::pair{WeightNormKeys::Parametrizations, "net_parametrizations.safetensors"}}) {
    SCOPED_TRACE(file);
    auto m = fixture_net<float>();
    load_model(fixture("net_legacy.safetensors"), m->state());
    const StateDict<float> ours = state_dict(*m, {.weight_norm_keys = keys});
    const SafetensorsFile theirs = read_safetensors(fixture(file));
    // The reader returns tensors in data order, which safetensors.torch sorts;
    // compare against the key order PyTorch's state_dict() has: the legacy
    // file's order with the parametrizations names.
    std::vector<std::string> want;
    for (const char* k : {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias", "4.bias",
                          "4.weight_g", "4.weight_v", "6.bias", "6.weight_g", "6.weight_v"}) {
      std::string s = k;
      if (keys == WeightNormKeys::Parametrizations) {
        if (s.ends_with("weight_g"))
          s.replace(s.size() - 8, 8, "parametrizations.weight.original0");
        if (s.ends_with("weight_v"))
          s.replace(s.size() - 8, 8, "parametrizations.weight.original1");
      }
      want.push_back(s);
    }
    EXPECT_EQ(ours.keys(), want);
    ASSERT_EQ(ours.size(), theirs.tensors.size());
    for (const auto& item : ours) {
      const SafeTensor* t = theirs.find(item.key);
      ASSERT_NE(t, nullptr) << item.key;
      if (const int64_t* c = std::get_if<int64_t>(&item.value)) {
        EXPECT_EQ(t->dtype, Dtype::I64);
        EXPECT_EQ(*c, 3);
        continue;
      }
      const Tensor<float>& v = std::get<Tensor<float>>(item.value);
      EXPECT_EQ(v.shape(), t->shape) << item.key;
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(v.data()), v.numel() * 4), t->data)
          << item.key;
    }
  }
}

}  // namespace
}  // namespace normlab
