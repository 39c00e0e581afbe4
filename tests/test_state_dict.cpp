// The in-memory state dict: state_dict() and load_state_dict() on any Layer,
// float and double, with PyTorch's strict rules and clear errors.
#include "normlab/state_dict.hpp"

#include <gtest/gtest.h>

#include "ckpt_test_util.hpp"
#include "normlab/layers.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

using testing::expect_error;

template <typename T>
std::unique_ptr<Sequential<T>> net(uint64_t seed, int64_t hidden = 3) {
  Rng rng(seed);
  auto m = std::make_unique<Sequential<T>>();
  m->add(std::make_unique<Linear<T>>(2, hidden, true, rng));
  m->add(std::make_unique<BatchNorm1d<T>>(hidden));
  m->add(std::make_unique<ReLU<T>>());
  m->add(std::make_unique<WeightNormLinear<T>>(hidden, 2, false, WeightNormDim::Whole, rng));
  return m;
}

TEST(StateDict, HoldsTensorsAndCountsInOrder) {
  StateDict<float> sd;
  sd.insert("w", Tensor<float>::from({2}, {1, 2}));
  sd.insert("n", int64_t{4});
  sd.insert("b", Tensor<float>::from({}, {3}));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"w", "n", "b"}));
  EXPECT_EQ(sd.size(), 3u);
  EXPECT_TRUE(sd.contains("n"));
  EXPECT_FALSE(sd.contains("x"));
  EXPECT_EQ(sd.tensor("w")[1], 2.0f);
  EXPECT_EQ(sd.count("n"), 4);
  EXPECT_EQ(sd.find("x"), nullptr);
  sd.rename("w", "weight");
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"weight", "n", "b"}));
  EXPECT_TRUE(sd.erase("n"));
  EXPECT_FALSE(sd.erase("n"));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"weight", "b"}));
  EXPECT_EQ(sd.tensor("b")[0], 3.0f);  // positions follow the erase

  expect_error([&] { sd.insert("b", int64_t{1}); }, {"'b' is given twice"});
  expect_error([&] { sd.count("weight"); },
               {"'weight' is a tensor of shape (2), not an int64 count"});
  sd.insert("c", int64_t{1});
  expect_error([&] { sd.tensor("c"); }, {"'c' is an int64 count, not a tensor"});
  expect_error([&] { sd.tensor("zz"); }, {"no key 'zz'"});
  expect_error([&] { sd.rename("zz", "y"); }, {"cannot rename 'zz'"});
  expect_error([&] { sd.rename("c", "b"); }, {"'b': already present"});
}

TEST(StateDict, OfAModelHasPyTorchKeysKindsAndCopies) {
  auto m = net<float>(1);
  dynamic_cast<BatchNorm1d<float>&>((*m)[1]).num_batches_tracked = 11;
  StateDict<float> sd = state_dict(*m);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{
                           "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                           "1.running_var", "1.num_batches_tracked", "3.weight_g", "3.weight_v"}));
  EXPECT_EQ(sd.count("1.num_batches_tracked"), 11);
  EXPECT_EQ(sd.tensor("0.weight").shape(), (Shape{3, 2}));
  EXPECT_EQ(sd.tensor("3.weight_g").shape(), Shape{});
  // A copy: changing it leaves the model alone.
  const float before = dynamic_cast<Linear<float>&>((*m)[0]).weight[0];
  sd.tensor("0.weight")[0] = before + 1;
  EXPECT_EQ(dynamic_cast<Linear<float>&>((*m)[0]).weight[0], before);

  const StateDict<float> p = state_dict(*m, {.weight_norm_keys = WeightNormKeys::Parametrizations});
  EXPECT_EQ(p.keys().back(), "3.parametrizations.weight.original1");
  EXPECT_EQ(p.keys()[7], "3.parametrizations.weight.original0");
}

template <typename T>
void round_trip() {
  auto a = net<T>(1), b = net<T>(2);
  dynamic_cast<BatchNorm1d<T>&>((*a)[1]).num_batches_tracked = 6;
  const LoadResult r = load_state_dict(*b, state_dict(*a));
  EXPECT_TRUE(r.missing_keys.empty() && r.unexpected_keys.empty() && r.renamed_keys.empty() &&
              r.kept_counts.empty());
  const StateDict<T> sa = state_dict(*a), sb = state_dict(*b);
  ASSERT_EQ(sa.keys(), sb.keys());
  for (const auto& item : sa) {
    if (std::holds_alternative<int64_t>(item.value)) {
      EXPECT_EQ(sb.count(item.key), 6);
      continue;
    }
    const Tensor<T>& x = std::get<Tensor<T>>(item.value);
    for (int64_t i = 0; i < x.numel(); ++i) EXPECT_EQ(sb.tensor(item.key)[i], x[i]) << item.key;
  }
}

TEST(StateDict, RoundTripsFloatAndDouble) {
  round_trip<float>();
  round_trip<double>();
}

TEST(StateDict, ConvertsBetweenFloatAndDoubleModelsWithTensorCast) {
  auto f = net<float>(1);
  auto d = net<double>(2);
  StateDict<double> sd;
  for (const auto& item : state_dict(*f)) {
    if (const auto* t = std::get_if<Tensor<float>>(&item.value))
      sd.insert(item.key, tensor_cast<double>(*t));
    else
      sd.insert(item.key, std::get<int64_t>(item.value));
  }
  load_state_dict(*d, sd);
  EXPECT_EQ(dynamic_cast<Linear<double>&>((*d)[0]).weight[3],
            static_cast<double>(dynamic_cast<Linear<float>&>((*f)[0]).weight[3]));
}

TEST(StateDict, StrictErrorsNameMissingAndUnexpectedKeys) {
  auto a = net<float>(1);
  auto b = net<float>(2);
  const StateDict<float> before = state_dict(*b);
  StateDict<float> sd = state_dict(*a);
  sd.erase("0.bias");
  sd.erase("1.running_var");
  sd.insert("5.weight", Tensor<float>::from({1}, {0}));
  expect_error([&] { load_state_dict(*b, sd); },
               {"load_state_dict: the state dict does not match the model: missing 2 keys "
                "'0.bias', '1.running_var'; unexpected 1 key '5.weight'"});
  expect_error([&] { load_state_dict(*b, sd, {.source = "my.sd", .hint = "; try another model"}); },
               {"my.sd: ", "'5.weight'; try another model"});
  // Nothing was copied.
  const StateDict<float> after = state_dict(*b);
  for (const auto& item : before) {
    if (const auto* t = std::get_if<Tensor<float>>(&item.value)) {
      for (int64_t i = 0; i < t->numel(); ++i) EXPECT_EQ(after.tensor(item.key)[i], (*t)[i]);
    }
  }
}

TEST(StateDict, NonStrictLoadsWhatMatchesAndReportsTheRest) {
  auto a = net<float>(1);
  auto b = net<float>(2);
  StateDict<float> sd = state_dict(*a);
  sd.erase("0.bias");
  sd.insert("extra", int64_t{3});
  const float old_bias = dynamic_cast<Linear<float>&>((*b)[0]).bias[0];
  const LoadResult r = load_state_dict(*b, sd, {.strict = false});
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"0.bias"});
  EXPECT_EQ(r.unexpected_keys, std::vector<std::string>{"extra"});
  EXPECT_EQ(dynamic_cast<Linear<float>&>((*b)[0]).bias[0], old_bias);
  EXPECT_EQ(dynamic_cast<Linear<float>&>((*b)[0]).weight[0],
            dynamic_cast<Linear<float>&>((*a)[0]).weight[0]);
}

TEST(StateDict, ShapeAndKindMismatchesAreErrorsEvenWhenNotStrict) {
  auto wide = net<float>(1, 4);
  auto narrow = net<float>(2, 3);
  for (bool strict : {true, false}) {
    SCOPED_TRACE(strict);
    expect_error([&] { load_state_dict(*narrow, state_dict(*wide), {.strict = strict}); },
                 {"'0.weight' has shape (4, 2) in the state dict but (3, 2) in the model"});
  }
  StateDict<float> sd = state_dict(*narrow);
  sd.erase("1.num_batches_tracked");
  sd.insert("1.num_batches_tracked", Tensor<float>::from({}, {2}));
  expect_error([&] { load_state_dict(*narrow, sd); },
               {"'1.num_batches_tracked' is a tensor of shape () in the state dict, but an int64 "
                "count in the model"});
  sd = state_dict(*narrow);
  sd.erase("0.bias");
  sd.insert("0.bias", int64_t{1});
  expect_error([&] { load_state_dict(*narrow, sd); },
               {"'0.bias' is an int64 count in the state dict, but a tensor of shape (3)"});
}

TEST(StateDict, PyTorchDeviationsAreReportedAndCanBeSwitchedOff) {
  auto a = net<float>(1);
  StateDict<float> sd = state_dict(*a, {.weight_norm_keys = WeightNormKeys::Parametrizations});
  sd.erase("1.num_batches_tracked");
  Tensor<float> g = sd.tensor("3.parametrizations.weight.original0");
  g.reshape({1});
  sd.erase("3.parametrizations.weight.original0");
  sd.insert("3.parametrizations.weight.original0", g);

  auto b = net<float>(2);
  dynamic_cast<BatchNorm1d<float>&>((*b)[1]).num_batches_tracked = 9;
  const LoadResult r = load_state_dict(*b, sd);
  EXPECT_EQ(r.renamed_keys.size(), 2u);
  EXPECT_EQ(r.kept_counts, std::vector<std::string>{"1.num_batches_tracked"});
  EXPECT_EQ(r.scalars_from_shape_1, std::vector<std::string>{"3.weight_g"});
  EXPECT_EQ(dynamic_cast<BatchNorm1d<float>&>((*b)[1]).num_batches_tracked, 9);
  EXPECT_EQ(dynamic_cast<WeightNormLinear<float>&>((*b)[3]).weight_g[0], g[0]);

  auto c = net<float>(3);
  expect_error([&] { load_state_dict(*c, sd, {.pytorch_compat = false}); },
               {"missing 3 keys '1.num_batches_tracked', '3.weight_g', '3.weight_v'"});
}

}  // namespace
}  // namespace normlab
