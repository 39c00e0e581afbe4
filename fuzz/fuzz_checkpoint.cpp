// libFuzzer target: the safetensors reader on arbitrary bytes, and loading what
// it accepts into a small fixed model.
//
// What must hold for every input:
//   - parse_safetensors either returns or throws normlab::Error (any other
//     exception escapes and libFuzzer reports it as a crash);
//   - what it accepts re-serializes and parses back to the same content;
//   - a load either succeeds or throws Error and leaves the model untouched.
//
// Built as a libFuzzer target (clang -fsanitize=fuzzer). Compiled with
// -DNORMLAB_FUZZ_SEED_MAIN instead, it is a program that writes the seed corpus:
//   fuzz_checkpoint_seeds fuzz/corpus/checkpoint
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "normlab/checkpoint.hpp"
#include "normlab/error.hpp"
#include "normlab/layers.hpp"
#include "normlab/safetensors.hpp"
#include "normlab/sequential.hpp"

namespace {

using namespace normlab;

// Every kind of state entry in a few dozen bytes, so the fuzzer can reach valid files.
std::unique_ptr<Sequential<float>> fuzz_model(int64_t hidden = 3) {
  Rng rng(1);
  auto m = std::make_unique<Sequential<float>>();
  m->add(std::make_unique<Linear<float>>(2, hidden, true, rng));
  m->add(std::make_unique<BatchNorm1d<float>>(hidden));
  m->add(std::make_unique<LayerNorm<float>>(Shape{hidden}));
  m->add(std::make_unique<WeightNormLinear<float>>(hidden, 2, true, WeightNormDim::Rows, rng));
  m->add(std::make_unique<WeightNormLinear<float>>(2, 1, false, WeightNormDim::Whole, rng));
  return m;
}

std::string state_bytes(const std::vector<StateEntry<float>>& state) {
  std::string s;
  for (const auto& e : state)
    s.append(e.count ? reinterpret_cast<const char*>(e.count)
                     : reinterpret_cast<const char*>(e.value->data()),
             e.count ? 8 : e.value->numel() * sizeof(float));
  return s;
}

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz_checkpoint: invariant broken: %s\n", what);
  std::abort();
}

void check_round_trip(const SafetensorsFile& f) {
  std::string bytes;
  try {
    bytes = serialize_safetensors(f);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    broken("an accepted file does not serialize");
  }
  const SafetensorsFile g = parse_safetensors(bytes, "<re-serialized>");
  if (g.metadata != f.metadata || g.tensors.size() != f.tensors.size())
    broken("round trip changed the file");
  for (const SafeTensor& t : f.tensors) {
    const SafeTensor* u = g.find(t.name);
    if (!u || u->dtype != t.dtype || u->shape != t.shape || u->data != t.data)
      broken("round trip changed a tensor");
  }
}

void check_load(const SafetensorsFile& f) {
  static auto model = fuzz_model();
  const auto state = model->state();
  const std::string before = state_bytes(state);
  try {
    unpack_state(f, "<fuzz input>", {{"", state}}, {kOptimizerPrefix});
  } catch (const Error&) {
    if (state_bytes(state) != before) broken("a failed load changed the model");
  }
  for (const auto& [key, value] : f.metadata) {
    try {
      metadata_int(f.metadata, key, "<fuzz input>");
    } catch (const Error&) {
    }
  }
}

int fuzz_one(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  SafetensorsFile f;
  try {
    f = parse_safetensors(bytes, "<fuzz input>");
  } catch (const Error&) {
    return 0;  // refused cleanly
  }
  check_round_trip(f);
  check_load(f);
  return 0;
}

}  // namespace

#ifndef NORMLAB_FUZZ_SEED_MAIN

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fuzz_one(data, size);
}

#else  // the seed corpus: valid files for fuzz_model() and near misses

#include <fstream>
#include <iterator>

static std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  std::filesystem::create_directories(dir);
  auto model = fuzz_model();
  const auto state = model->state();
  const auto path = [&](const char* name) { return dir + "/" + name; };
  auto edited = [&](const char* name, auto edit) {
    SafetensorsFile f = pack_state({{"", state}}, {{kModelSpecKey, "fuzz"}}, name);
    edit(f);
    write_safetensors(path(name), f);
  };

  save_model(path("model.safetensors"), state, {{kModelSpecKey, "fuzz"}, {kEpochKey, "2"}});
  Tensor<float> moment({3, 2}, 0.5f);
  int64_t step = 7;
  save_checkpoint(path("checkpoint.safetensors"), state,
                  {{"0.weight.exp_avg", &moment}, {"step", nullptr, nullptr, &step}},
                  {{kStepKey, "7"}});
  auto wide = fuzz_model(4);
  save_model(path("other_model.safetensors"), wide->state(), {{kModelSpecKey, "wide"}});
  edited("f64.safetensors", [](SafetensorsFile& f) {
    f.tensors[0].dtype = Dtype::F64;
    f.tensors[0].data += f.tensors[0].data;
  });
  edited("nan.safetensors", [](SafetensorsFile& f) {
    const float nan = std::nanf("");
    std::memcpy(f.tensors.back().data.data(), &nan, 4);
  });
  edited("missing.safetensors", [](SafetensorsFile& f) { f.tensors.pop_back(); });
  edited("extra.safetensors", [](SafetensorsFile& f) {
    f.tensors.push_back({"9.weight", Dtype::F32, {0, 2}, ""});
  });
  // What PyTorch writes and normlab accepts (docs/checkpoints.md): weight norm
  // under parametrizations keys, BatchNorm without num_batches_tracked.
  save_model(path("parametrizations.safetensors"), state, {{kModelSpecKey, "fuzz"}},
             {.weight_norm_keys = WeightNormKeys::Parametrizations});
  edited("old_batchnorm.safetensors", [](SafetensorsFile& f) {
    std::erase_if(f.tensors, [](const SafeTensor& t) { return t.name == "1.num_batches_tracked"; });
  });
  write_safetensors(path("empty_header.safetensors"), SafetensorsFile{});
  // Every seed must pass the target's own checks.
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = read_bytes(entry.path());
    fuzz_one(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  }
  std::fprintf(stderr, "wrote the seed corpus to %s\n", dir.c_str());
  return 0;
}

#endif
