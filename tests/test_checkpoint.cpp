// Checkpoints: bitwise round trips of a model with every layer kind under
// PyTorch's state_dict keys, strict all-or-nothing loading, and saves that refuse
// non-finite weights so a good checkpoint is never replaced by a broken one.
#include "normlab/checkpoint.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>

#include "ckpt_test_util.hpp"
#include "normlab/layers.hpp"
#include "normlab/optim.hpp"
#include "normlab/sequential.hpp"

namespace normlab {
namespace {

using testing::expect_error;
using testing::TempDir;

// Linear, BatchNorm1d, ReLU, LayerNorm, weight_norm(Linear) per row, ReLU,
// weight_norm(Linear, dim=None): every kind of state entry there is.
std::unique_ptr<Sequential<float>> small_model(uint64_t seed, int64_t hidden = 6) {
  Rng rng(seed);
  auto m = std::make_unique<Sequential<float>>();
  m->add(std::make_unique<Linear<float>>(4, hidden, true, rng));
  m->add(std::make_unique<BatchNorm1d<float>>(hidden));
  m->add(std::make_unique<ReLU<float>>());
  m->add(std::make_unique<LayerNorm<float>>(Shape{hidden}));
  m->add(std::make_unique<WeightNormLinear<float>>(hidden, 5, true, WeightNormDim::Rows, rng));
  m->add(std::make_unique<ReLU<float>>());
  m->add(std::make_unique<WeightNormLinear<float>>(5, 3, true, WeightNormDim::Whole, rng));
  // Values unlike any initialisation, so a round trip cannot pass by accident.
  Rng fill = rng.fork(99);
  for (auto& e : m->state()) {
    if (e.count) {
      *e.count = static_cast<int64_t>(seed) + 3;
    } else {
      const bool positive = e.name.find("running_var") != std::string::npos;
      fill.fill_uniform(e.value->data(), e.value->numel(), positive ? 0.5 : -1.0, 2.0);
    }
  }
  return m;
}

// The bytes of every entry, to prove a model did (not) change.
std::vector<std::string> snapshot(const std::vector<StateEntry<float>>& state) {
  std::vector<std::string> s;
  for (const auto& e : state)
    s.emplace_back(e.count ? reinterpret_cast<const char*>(e.count)
                           : reinterpret_cast<const char*>(e.value->data()),
                   e.count ? 8 : e.value->numel() * sizeof(float));
  return s;
}

// Stands in for Adam's state: two moments per parameter and a step count.
struct FakeOptimizerState {
  std::deque<Tensor<float>> tensors;  // deque: pointers stay valid while it grows
  std::vector<StateEntry<float>> entries;
  int64_t step = 0;

  FakeOptimizerState(const std::vector<StateEntry<float>>& params, uint64_t seed) {
    Rng rng(seed);
    for (const auto& p : params) {
      if (!p.is_param()) continue;
      for (const char* moment : {"exp_avg", "exp_avg_sq"}) {
        Tensor<float>& t = tensors.emplace_back(p.value->shape());
        rng.fill_uniform(t.data(), t.numel(), 0.0, 1.0);
        entries.push_back({p.name + "." + moment, &t});
      }
    }
    step = static_cast<int64_t>(seed) * 100;
    entries.push_back({"step", nullptr, nullptr, &step});
  }
};

Tensor<float> sample_input() {
  Tensor<float> x({5, 4});
  Rng(7).fill_uniform(x.data(), x.numel(), -2.0, 2.0);
  return x;
}

Tensor<float> eval_output(Sequential<float>& m) {
  m.set_training(false);
  const Tensor<float> x = sample_input();  // forward takes no temporaries (layer.hpp)
  return m.forward(x);
}

// Writes `file` after `edit` changed it: a damaged checkpoint made to order.
std::string write_edited(const TempDir& dir, const std::string& name,
                         const std::function<void(SafetensorsFile&)>& edit,
                         const std::vector<StateGroup>& groups) {
  const std::string path = dir.file(name);
  SafetensorsFile f = pack_state(groups, {{kModelSpecKey, "small-model"}}, path);
  edit(f);
  write_safetensors(path, f);
  return path;
}

SafeTensor& tensor(SafetensorsFile& f, const std::string& name) {
  for (auto& t : f.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("test bug: no tensor " + name);
}

TEST(Checkpoint, ModelFileHasPyTorchKeysDtypesAndShapes) {
  TempDir dir;
  auto m = small_model(1);
  save_model(dir.file("model.safetensors"), m->state(), {{kModelSpecKey, "small"}});
  const SafetensorsFile f = read_safetensors(dir.file("model.safetensors"));
  std::vector<std::string> keys;
  for (const auto& t : f.tensors) keys.push_back(t.name);
  // nn.Sequential(Linear, BatchNorm1d, ReLU, LayerNorm, weight_norm(Linear), ReLU,
  // weight_norm(Linear, dim=None)).state_dict().keys(), in order.
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                      "1.num_batches_tracked", "3.weight", "3.bias", "4.bias", "4.weight_g",
                      "4.weight_v", "6.bias", "6.weight_g", "6.weight_v"}));
  EXPECT_EQ(f.find("1.num_batches_tracked")->dtype, Dtype::I64);
  EXPECT_EQ(f.find("1.num_batches_tracked")->shape, Shape{});
  EXPECT_EQ(f.find("0.weight")->dtype, Dtype::F32);
  EXPECT_EQ(f.find("0.weight")->shape, (Shape{6, 4}));
  EXPECT_EQ(f.find("4.weight_g")->shape, (Shape{5, 1}));
  EXPECT_EQ(f.find("6.weight_g")->shape, Shape{});
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at(kFormatVersionKey), kFormatVersion);
  EXPECT_EQ(f.metadata.at(kModelSpecKey), "small");
}

TEST(Checkpoint, ModelRoundTripIsBitwise) {
  TempDir dir;
  auto a = small_model(1);
  auto b = small_model(2);
  ASSERT_NE(snapshot(a->state()), snapshot(b->state()));
  save_model(dir.file("model.safetensors"), a->state());
  load_model(dir.file("model.safetensors"), b->state());
  EXPECT_EQ(snapshot(a->state()), snapshot(b->state()));
  const Tensor<float> ya = eval_output(*a), yb = eval_output(*b);
  ASSERT_EQ(ya.shape(), yb.shape());
  EXPECT_EQ(std::memcmp(ya.data(), yb.data(), ya.numel() * sizeof(float)), 0);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
}

TEST(Checkpoint, ResumeCheckpointRoundTripsModelOptimizerAndMetadata) {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  auto a = small_model(1);
  FakeOptimizerState oa(a->state(), 1);
  save_checkpoint(path, a->state(), oa.entries,
                  {{kEpochKey, "3"}, {kStepKey, "1407"}, {kSeedKey, "42"}, {kModelSpecKey, "m"}});
  auto b = small_model(2);
  FakeOptimizerState ob(b->state(), 2);
  ASSERT_NE(snapshot(oa.entries), snapshot(ob.entries));
  const Metadata meta = load_checkpoint(path, b->state(), ob.entries);
  EXPECT_EQ(snapshot(a->state()), snapshot(b->state()));
  EXPECT_EQ(snapshot(oa.entries), snapshot(ob.entries));
  EXPECT_EQ(ob.step, 100);
  EXPECT_EQ(metadata_int(meta, kEpochKey, path), 3);
  EXPECT_EQ(metadata_int(meta, kStepKey, path), 1407);
  EXPECT_EQ(metadata_string(meta, kModelSpecKey, path), "m");
  EXPECT_NE(read_safetensors(path).find("optimizer.0.weight.exp_avg"), nullptr);
}

// Training steps on a fixed batch: loss = sum(y * g) for a fixed g, so dy = g.
void train_steps(Sequential<float>& m, Optimizer& opt, int steps) {
  m.set_training(true);
  const Tensor<float> x = sample_input();
  Tensor<float> g({5, 3});
  Rng(11).fill_uniform(g.data(), g.numel(), -1.0, 1.0);
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    m.forward(x);
    m.backward(g);
    opt.step();
  }
}

// The checkpoint holds everything a run's future depends on: stopping after
// step 3 and resuming into fresh objects ends bitwise where an unbroken run ends.
TEST(Checkpoint, ResumeWithAdamContinuesBitwise) {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  auto a = small_model(1);
  auto adam_a = make_optimizer("adam", {.lr = 1e-2}, a->state());
  train_steps(*a, *adam_a, 3);
  save_checkpoint(path, a->state(), adam_a->state(), {{kStepKey, "3"}});
  train_steps(*a, *adam_a, 2);

  auto b = small_model(2);
  auto adam_b = make_optimizer("adam", {.lr = 1e-2}, b->state());
  load_checkpoint(path, b->state(), adam_b->state());
  EXPECT_EQ(adam_b->steps(), 3);
  train_steps(*b, *adam_b, 2);
  EXPECT_EQ(snapshot(a->state()), snapshot(b->state()));
  EXPECT_EQ(snapshot(adam_a->state()), snapshot(adam_b->state()));
  EXPECT_EQ(adam_b->steps(), 5);
}

// `normlab eval` may be given either file of a run.
TEST(Checkpoint, LoadModelReadsTheResumeCheckpointToo) {
  TempDir dir;
  auto a = small_model(1);
  FakeOptimizerState oa(a->state(), 1);
  save_checkpoint(dir.file("checkpoint.safetensors"), a->state(), oa.entries, {});
  auto b = small_model(2);
  load_model(dir.file("checkpoint.safetensors"), b->state());
  EXPECT_EQ(snapshot(a->state()), snapshot(b->state()));
}

TEST(Checkpoint, ResumeFromTheModelFileIsRefusedWithAHint) {
  TempDir dir;
  auto a = small_model(1);
  save_model(dir.file("model.safetensors"), a->state());
  auto b = small_model(2);
  FakeOptimizerState ob(b->state(), 2);
  const auto before = snapshot(b->state());
  expect_error([&] { load_checkpoint(dir.file("model.safetensors"), b->state(), ob.entries); },
               {dir.file("model.safetensors"), "no optimizer state", "checkpoint.safetensors"});
  EXPECT_EQ(snapshot(b->state()), before);
}

struct BadCheckpoint {
  const char* what;
  std::function<void(SafetensorsFile&)> edit;
  std::vector<std::string> message;
};

void set_float(SafeTensor& t, size_t i, float v) {
  std::memcpy(t.data.data() + 4 * i, &v, 4);
}

std::vector<BadCheckpoint> bad_checkpoints() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  return {
      {"missing tensor",
       [](SafetensorsFile& f) {
         std::erase_if(f.tensors, [](const SafeTensor& t) { return t.name == "3.bias"; });
       },
       {"missing 1 key '3.bias'"}},
      {"unexpected tensor",
       [](SafetensorsFile& f) {
         f.tensors.push_back({"7.weight", Dtype::F32, {1}, std::string(4, '\0')});
       },
       {"unexpected 1 key '7.weight'"}},
      {"renamed tensors (another architecture)",
       [](SafetensorsFile& f) { tensor(f, "0.weight").name = "fc1.weight"; },
       {"missing 1 key '0.weight'", "unexpected 1 key 'fc1.weight'", "another model",
        "small-model"}},
      {"I32 weights",
       [](SafetensorsFile& f) { tensor(f, "0.weight").dtype = Dtype::I32; },
       {"'0.weight'", "dtype I32", "F32, F64, F16 or BF16"}},
      {"F64 weight beyond float's range",
       [](SafetensorsFile& f) {
         SafeTensor& t = tensor(f, "3.weight");
         std::string d;
         for (size_t i = 0; i < t.data.size() / 4; ++i) {
           double v = i == 2 ? 1e300 : 0.5;
           d.append(reinterpret_cast<const char*>(&v), 8);
         }
         t.dtype = Dtype::F64;
         t.data = d;
       },
       {"'3.weight'", "holds 1e+300 at flat index 2", "beyond the range of float"}},
      {"NaN in an F16 tensor",
       [](SafetensorsFile& f) {
         SafeTensor& t = tensor(f, "3.weight");
         t.dtype = Dtype::F16;
         t.data.assign(t.data.size() / 2, '\0');
         t.data[3] = '\x7E';  // element 1: 0x7E00, a NaN
       },
       {"'3.weight'", "1 non-finite value", "index 1"}},
      {"count as F32",
       [](SafetensorsFile& f) {
         SafeTensor& t = tensor(f, "1.num_batches_tracked");
         t.dtype = Dtype::F32;
         t.data.resize(4);
       },
       {"'1.num_batches_tracked'", "expected an I64 scalar"}},
      {"count with shape (2)",
       [](SafetensorsFile& f) {
         SafeTensor& t = tensor(f, "1.num_batches_tracked");
         t.shape = {2};
         t.data += t.data;
       },
       {"'1.num_batches_tracked' is I64 of shape (2)", "count of shape ()"}},
      {"negative count",
       [](SafetensorsFile& f) {
         const int64_t v = -5;
         std::memcpy(tensor(f, "1.num_batches_tracked").data.data(), &v, 8);
       },
       {"'1.num_batches_tracked'", "count -5"}},
      {"transposed weight",
       [](SafetensorsFile& f) {
         tensor(f, "0.weight").shape = {4, 6};
       },
       {"'0.weight' has shape (4, 6) in the file but (6, 4) in the model", "another model"}},
      {"weight_g per row instead of whole",
       [](SafetensorsFile& f) {
         SafeTensor& t = tensor(f, "6.weight_g");
         t.shape = {3, 1};
         t.data.resize(12);
       },
       {"'6.weight_g' has shape (3, 1) in the file but () in the model"}},
      {"NaN in the last tensor",
       [=](SafetensorsFile& f) { set_float(tensor(f, "6.weight_v"), 7, nan); },
       {"'6.weight_v'", "1 non-finite value", "index 7", "nan"}},
      {"inf in a running variance",
       [=](SafetensorsFile& f) {
         set_float(tensor(f, "1.running_var"), 0, inf);
         set_float(tensor(f, "1.running_var"), 2, -inf);
       },
       {"'1.running_var'", "2 non-finite values", "index 0"}},
      {"newer format version",
       [](SafetensorsFile& f) { f.metadata[kFormatVersionKey] = "2"; },
       {"format 2", "reads format 1"}},
  };
}

// Every damaged file is refused with a message naming the file and the key, and
// the model is left exactly as it was, even when the fault is in the last tensor.
TEST(Checkpoint, BadFilesAreRefusedAndLeaveTheModelUnchanged) {
  TempDir dir;
  auto source = small_model(1);
  for (const BadCheckpoint& bad : bad_checkpoints()) {
    SCOPED_TRACE(bad.what);
    const std::string path =
        write_edited(dir, "bad.safetensors", bad.edit, {{"", source->state()}});
    auto target = small_model(2);
    const auto before = snapshot(target->state());
    std::vector<std::string> parts = bad.message;
    parts.push_back(path);
    expect_error([&] { load_model(path, target->state()); }, parts);
    EXPECT_EQ(snapshot(target->state()), before);
  }
}

// What PyTorch's load_state_dict accepts, normlab accepts too (docs/checkpoints.md),
// and loads the right values.
TEST(Checkpoint, ConvertsF64F16AndBF16TensorsLikePyTorch) {
  TempDir dir;
  auto source = small_model(1);
  auto expected = small_model(1);
  // F64: every value of 0.weight at double precision, a hair off the float.
  const Tensor<float>& w0 = *source->state()[0].value;
  // F16 / BF16: values exact in both, incl. 2^-24 (a subnormal half) and -0.
  const std::vector<float> exact = {0.5f, -2.0f, 0x1p-24f, -0.0f, 65504.0f, 1.5f};
  const std::string path =
      write_edited(dir, "mixed.safetensors",
                   [&](SafetensorsFile& f) {
                     SafeTensor& t = tensor(f, "0.weight");
                     t.dtype = Dtype::F64;
                     t.data.clear();
                     for (int64_t i = 0; i < w0.numel(); ++i) {
                       const double v = static_cast<double>(w0[i]) + 1e-12;
                       t.data.append(reinterpret_cast<const char*>(&v), 8);
                     }
                     SafeTensor& h = tensor(f, "3.weight");  // LayerNorm weight (6)
                     h.dtype = Dtype::F16;
                     const uint16_t halves[] = {0x3800, 0xC000, 0x0001, 0x8000, 0x7BFF, 0x3E00};
                     h.data.assign(reinterpret_cast<const char*>(halves), sizeof halves);
                     SafeTensor& b = tensor(f, "3.bias");
                     b.dtype = Dtype::BF16;
                     const uint16_t bf[] = {0x3F00, 0xC000, 0x3380, 0x8000, 0x477F, 0x3FC0};
                     b.data.assign(reinterpret_cast<const char*>(bf), sizeof bf);
                   },
                   {{"", source->state()}});
  auto target = small_model(2);
  load_model(path, target->state());
  auto got = target->state();
  auto want = expected->state();
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(got[i].name);
    if (got[i].name == "3.weight" || got[i].name == "3.bias") {
      for (size_t k = 0; k < exact.size(); ++k) {
        const float v = (*got[i].value)[static_cast<int64_t>(k)];
        // BF16 has 8 mantissa bits: 0x477F is 65280, where the half 0x7BFF is 65504.
        const float e = got[i].name == "3.bias" && k == 4 ? 65280.0f : exact[k];
        EXPECT_EQ(v, e) << k;
        EXPECT_EQ(std::signbit(v), std::signbit(e)) << k;
      }
    } else if (got[i].count) {
      EXPECT_EQ(*got[i].count, *want[i].count);
    } else {  // 0.weight: double rounded to nearest float gives back the float
      for (int64_t k = 0; k < got[i].value->numel(); ++k)
        EXPECT_EQ((*got[i].value)[k], (*want[i].value)[k]);
    }
  }
}

TEST(Checkpoint, MissingNumBatchesTrackedKeepsTheModelsCountLikePyTorch) {
  // PyTorch < 0.4.1 wrote BatchNorm without num_batches_tracked; PyTorch 2.x
  // loads such a dict with strict=True and the module keeps its own count
  // (BatchNorm._load_from_state_dict, no version metadata in safetensors).
  TempDir dir;
  auto source = small_model(1);
  const std::string path = write_edited(dir, "old.safetensors",
                                        [](SafetensorsFile& f) {
                                          std::erase_if(f.tensors, [](const SafeTensor& t) {
                                            return t.name == "1.num_batches_tracked";
                                          });
                                        },
                                        {{"", source->state()}});
  auto target = small_model(2);  // its count is 2 + 3
  load_model(path, target->state());
  auto* bn = dynamic_cast<BatchNorm1d<float>*>(&(*target)[1]);
  ASSERT_NE(bn, nullptr);
  EXPECT_EQ(bn->num_batches_tracked, 5);
  // Everything else is the file's.
  auto* src_bn = dynamic_cast<BatchNorm1d<float>*>(&(*source)[1]);
  for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(bn->running_var[c], src_bn->running_var[c]);
  // A fresh BatchNorm has counted nothing: 0, what the old files get in PyTorch.
  Sequential<float> fresh;
  Rng rng(3);
  fresh.add(std::make_unique<Linear<float>>(4, 6, true, rng));
  fresh.add(std::make_unique<BatchNorm1d<float>>(6));
  StateDict<float> sd = state_dict(*source);
  StateDict<float> part;
  for (const auto& item : sd)
    if (item.key.rfind("0.", 0) == 0 || item.key.rfind("1.", 0) == 0)
      if (item.key != "1.num_batches_tracked") part.insert(item.key, item.value);
  const LoadResult r = load_state_dict(fresh, part);
  EXPECT_EQ(r.kept_counts, std::vector<std::string>{"1.num_batches_tracked"});
  EXPECT_EQ(dynamic_cast<BatchNorm1d<float>&>(fresh[1]).num_batches_tracked, 0);
}

TEST(Checkpoint, ShapeOneLoadsIntoScalarsLikePyTorch) {
  // Module._load_from_state_dict: a (1) tensor loads into a () one (PyTorch 0.3 files).
  TempDir dir;
  auto source = small_model(1);
  const std::string path = write_edited(
      dir, "s1.safetensors",
      [](SafetensorsFile& f) {
        tensor(f, "1.num_batches_tracked").shape = {1};
        tensor(f, "6.weight_g").shape = {1};  // weight norm over the whole matrix: g is ()
      },
      {{"", source->state()}});
  auto target = small_model(2);
  load_model(path, target->state());
  EXPECT_EQ(dynamic_cast<BatchNorm1d<float>&>((*target)[1]).num_batches_tracked, 1 + 3);
  auto& wn = dynamic_cast<WeightNormLinear<float>&>((*target)[6]);
  EXPECT_EQ(wn.weight_g.shape(), Shape{});
  EXPECT_EQ(wn.weight_g[0], dynamic_cast<WeightNormLinear<float>&>((*source)[6]).weight_g[0]);
}

TEST(Checkpoint, WeightNormKeysBothSpellingsRoundTrip) {
  TempDir dir;
  auto a = small_model(1);
  save_model(dir.file("p.safetensors"), a->state(), {},
             {.weight_norm_keys = WeightNormKeys::Parametrizations});
  const SafetensorsFile f = read_safetensors(dir.file("p.safetensors"));
  std::vector<std::string> names;
  for (const auto& t : f.tensors) names.push_back(t.name);
  // PyTorch's order for a parametrized Linear: bias, original0 (g), original1 (v).
  EXPECT_EQ(
      std::vector<std::string>(names.end() - 6, names.end()),
      (std::vector<std::string>{
          "4.bias", "4.parametrizations.weight.original0", "4.parametrizations.weight.original1",
          "6.bias", "6.parametrizations.weight.original0", "6.parametrizations.weight.original1"}));
  EXPECT_EQ(f.find("4.parametrizations.weight.original0")->shape, (Shape{5, 1}));
  EXPECT_EQ(f.find("6.parametrizations.weight.original0")->shape, Shape{});
  auto b = small_model(2);
  load_model(dir.file("p.safetensors"), b->state());
  EXPECT_EQ(snapshot(a->state()), snapshot(b->state()));
  // The checkpoint keeps normlab's own keys, whatever the model file uses.
  save_model(dir.file("l.safetensors"), a->state(), {},
             {.weight_norm_keys = WeightNormKeys::Legacy});
  EXPECT_NE(read_safetensors(dir.file("l.safetensors")).find("4.weight_g"), nullptr);
}

TEST(Checkpoint, MixedWeightNormSpellingsAreRefused) {
  // g under one spelling and v under the other: PyTorch's compat hook converts
  // only a complete pair, and so does normlab.
  TempDir dir;
  auto a = small_model(1);
  const std::string path = write_edited(dir, "mixed.safetensors",
                                        [](SafetensorsFile& f) {
                                          tensor(f, "4.weight_g").name =
                                              "4.parametrizations.weight.original0";
                                        },
                                        {{"", a->state()}});
  auto b = small_model(2);
  const auto before = snapshot(b->state());
  expect_error(
      [&] { load_model(path, b->state()); },
      {"missing 1 key '4.weight_g'", "unexpected 1 key '4.parametrizations.weight.original0'"});
  EXPECT_EQ(snapshot(b->state()), before);
}

TEST(Checkpoint, DoubleModelsSaveF64AndLoadF32Files) {
  TempDir dir;
  Rng rng(5);
  Sequential<double> d;
  d.add(std::make_unique<Linear<double>>(3, 2, true, rng));
  d.add(std::make_unique<BatchNorm1d<double>>(2));
  dynamic_cast<BatchNorm1d<double>&>(d[1]).num_batches_tracked = 9;
  save_model(dir.file("d.safetensors"), d.state());
  const SafetensorsFile f = read_safetensors(dir.file("d.safetensors"));
  EXPECT_EQ(f.find("0.weight")->dtype, Dtype::F64);
  EXPECT_EQ(f.find("1.num_batches_tracked")->dtype, Dtype::I64);
  Rng rng2(6);
  Sequential<double> e;
  e.add(std::make_unique<Linear<double>>(3, 2, true, rng2));
  e.add(std::make_unique<BatchNorm1d<double>>(2));
  load_model(dir.file("d.safetensors"), e.state());
  auto& l0 = dynamic_cast<Linear<double>&>(d[0]);
  auto& l1 = dynamic_cast<Linear<double>&>(e[0]);
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(l1.weight[i], l0.weight[i]);
  EXPECT_EQ(dynamic_cast<BatchNorm1d<double>&>(e[1]).num_batches_tracked, 9);
  // An F32 file (a float model's) widens exactly into a double model.
  auto m = small_model(1);
  save_model(dir.file("f.safetensors"), m->state());
  Rng rng3(1);
  Sequential<double> lin;
  lin.add(std::make_unique<Linear<double>>(4, 6, true, rng3));
  StateDict<double> sd =
      state_dict_from_safetensors<double>(read_safetensors(dir.file("f.safetensors")), "f");
  const LoadResult r = load_state_dict(lin, sd, {.strict = false});
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{});
  EXPECT_EQ(r.unexpected_keys.size(), sd.size() - 2);
  const auto& w = *m->state()[0].value;
  for (int64_t i = 0; i < w.numel(); ++i)
    EXPECT_EQ(dynamic_cast<Linear<double>&>(lin[0]).weight[i], static_cast<double>(w[i]));
}

TEST(Checkpoint, ShapesFromAnotherModelAreNamed) {
  TempDir dir;
  auto wide = small_model(1, /*hidden=*/8);
  save_model(dir.file("wide.safetensors"), wide->state(), {{kModelSpecKey, "wide-8"}});
  auto narrow = small_model(2, /*hidden=*/6);
  const auto before = snapshot(narrow->state());
  expect_error([&] { load_model(dir.file("wide.safetensors"), narrow->state()); },
               {dir.file("wide.safetensors"), "'0.weight'", "shape (8, 4) in the file",
                "(6, 4) in the model", "another model", "'wide-8'"});
  EXPECT_EQ(snapshot(narrow->state()), before);
}

TEST(Checkpoint, OptimizerStateIsCheckedToo) {
  TempDir dir;
  auto a = small_model(1);
  FakeOptimizerState oa(a->state(), 1);
  const std::vector<StateGroup> groups = {{"", a->state()}, {kOptimizerPrefix, oa.entries}};
  auto b = small_model(2);
  FakeOptimizerState ob(b->state(), 2);
  const auto model_before = snapshot(b->state());
  const auto opt_before = snapshot(ob.entries);

  std::string path = write_edited(
      dir, "c1.safetensors",
      [](SafetensorsFile& f) {
        set_float(tensor(f, "optimizer.6.weight_v.exp_avg_sq"), 0,
                  std::numeric_limits<float>::quiet_NaN());
      },
      groups);
  expect_error([&] { load_checkpoint(path, b->state(), ob.entries); },
               {path, "'optimizer.6.weight_v.exp_avg_sq'", "non-finite"});
  path = write_edited(
      dir, "c2.safetensors",
      [](SafetensorsFile& f) {
        std::erase_if(f.tensors, [](const SafeTensor& t) { return t.name == "optimizer.step"; });
      },
      groups);
  expect_error([&] { load_checkpoint(path, b->state(), ob.entries); },
               {path, "missing 1 key 'optimizer.step'"});
  path = write_edited(
      dir, "c3.safetensors", [](SafetensorsFile& f) { f.metadata.erase(kFormatVersionKey); },
      groups);
  expect_error([&] { load_checkpoint(path, b->state(), ob.entries); },
               {path, "not a normlab checkpoint"});
  EXPECT_EQ(snapshot(b->state()), model_before);
  EXPECT_EQ(snapshot(ob.entries), opt_before);
}

TEST(Checkpoint, DamagedFilesNameThePath) {
  TempDir dir;
  auto m = small_model(1);
  save_model(dir.file("good.safetensors"), m->state());
  const std::string good = testing::read_bytes(dir.file("good.safetensors"));
  const std::vector<std::pair<std::string, std::string>> files = {
      {"empty.safetensors", ""},
      {"header-cut.safetensors", good.substr(0, 100)},
      {"data-cut.safetensors", good.substr(0, good.size() - 1)},
      {"garbage.safetensors", std::string(300, 'x')},
  };
  const auto before = snapshot(m->state());
  for (const auto& [name, bytes] : files) {
    SCOPED_TRACE(name);
    const std::string path = dir.file(name);
    testing::write_bytes(path, bytes);
    expect_error([&] { load_model(path, m->state()); }, {path});
    EXPECT_EQ(snapshot(m->state()), before);
  }
  expect_error([&] { load_model(dir.file("absent.safetensors"), m->state()); },
               {dir.file("absent.safetensors"), "No such file"});
}

// A diverged run must not replace the last good checkpoint with NaN weights.
TEST(Checkpoint, SaveRefusesNonFiniteValuesAndKeepsTheGoodFile) {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  auto m = small_model(1);
  FakeOptimizerState opt(m->state(), 1);
  save_checkpoint(path, m->state(), opt.entries, {{kEpochKey, "1"}});
  const std::string good = testing::read_bytes(path);

  auto& lnw = static_cast<LayerNorm<float>&>((*m)[3]).weight;
  lnw[2] = std::numeric_limits<float>::quiet_NaN();
  expect_error(
      [&] {
        save_checkpoint(path, m->state(), opt.entries, {{kEpochKey, "2"}});
      },
      {"refusing to write", path, "'3.weight'", "non-finite", "index 2"});
  expect_error([&] { save_model(dir.file("model.safetensors"), m->state()); },
               {"'3.weight'", "non-finite"});
  lnw[2] = 1.0f;
  opt.tensors.back()[0] = -std::numeric_limits<float>::infinity();
  expect_error([&] { save_checkpoint(path, m->state(), opt.entries, {}); },
               {"'optimizer.6.weight_v.exp_avg_sq'", "-inf"});

  EXPECT_EQ(testing::read_bytes(path), good);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"checkpoint.safetensors"});
}

TEST(Checkpoint, CallerMistakesAreErrors) {
  TempDir dir;
  auto m = small_model(1);
  expect_error(
      [&] {
        save_model(dir.file("m.safetensors"), m->state(), {{"format", "x"}});
      },
      {"'format' is reserved"});
  std::vector<StateEntry<float>> bad = m->state();
  bad.push_back({"dangling"});
  expect_error([&] { save_model(dir.file("m.safetensors"), bad); },
               {"'dangling'", "exactly one of a tensor and a count"});
  bad = m->state();
  bad.push_back(bad.front());
  expect_error([&] { save_model(dir.file("m.safetensors"), bad); }, {"'0.weight' is given twice"});
  EXPECT_TRUE(dir.entries().empty());

  const Metadata meta = {{"epoch", "3x"}, {"step", ""}};
  expect_error([&] { metadata_int(meta, "epoch", "c.st"); }, {"c.st", "'epoch'", "'3x'"});
  expect_error([&] { metadata_int(meta, "step", "c.st"); }, {"'step'", "integer"});
  expect_error([&] { metadata_int(meta, "seed", "c.st"); }, {"c.st", "no 'seed'"});
}

// Writes model.safetensors and the input and outputs of a forward pass, for
// tests/torch/check_load_state_dict.py to load into PyTorch and compare. Always
// checks that the files load back here; writes into $NORMLAB_TORCH_EXPORT_DIR if set.
TEST(Checkpoint, ExportForPyTorch) {
  TempDir tmp;
  const char* env = std::getenv("NORMLAB_TORCH_EXPORT_DIR");
  const std::string dir = env && *env ? env : tmp.path();
  auto m = small_model(5);
  save_model(dir + "/model.safetensors", m->state(), {{kModelSpecKey, "small_model(5)"}});

  // What PyTorch must reproduce: eval output (running statistics), then a
  // training-mode output (batch statistics) and the running statistics it updates.
  const Tensor<float> x = sample_input();
  m->set_training(false);
  const Tensor<float> y_eval = m->forward(x);
  m->set_training(true);
  const Tensor<float> y_train = m->forward(x);
  auto& bn = static_cast<BatchNorm1d<float>&>((*m)[1]);
  auto pack = [](const std::string& name, const Tensor<float>& t) {
    return SafeTensor{name, Dtype::F32, t.shape(),
                      std::string(reinterpret_cast<const char*>(t.data()), t.numel() * 4)};
  };
  SafetensorsFile io;
  io.tensors = {pack("x", x), pack("y_eval", y_eval), pack("y_train", y_train),
                pack("running_mean_after", bn.running_mean),
                pack("running_var_after", bn.running_var)};
  io.tensors.push_back({"num_batches_tracked_after",
                        Dtype::I64,
                        {},
                        std::string(reinterpret_cast<const char*>(&bn.num_batches_tracked), 8)});
  write_safetensors(dir + "/io.safetensors", io);

  auto reloaded = small_model(6);
  load_model(dir + "/model.safetensors", reloaded->state());
  const Tensor<float> y = eval_output(*reloaded);
  EXPECT_EQ(std::memcmp(y.data(), y_eval.data(), y.numel() * 4), 0);
  EXPECT_EQ(read_safetensors(dir + "/io.safetensors").tensors.size(), 6u);
}

}  // namespace
}  // namespace normlab
