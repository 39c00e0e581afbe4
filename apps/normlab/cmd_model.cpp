// normlab model SPEC: shows what a model spec or preset builds — its spec
// text, every layer with its input and output shape, and the state_dict keys
// with their shapes (--keys: only the keys, one "key<TAB>shape" per line, the
// form tests/torch/check_spec_keys.py compares with PyTorch).
#include <cstdio>
#include <iostream>
#include <sstream>

#include "commands.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/state_dict.hpp"

namespace normlab::cli {
namespace {

struct ModelArgs {
  std::string spec;
  std::string input = "784";
  bool keys_only = false;
  std::string weight_norm_keys = "legacy";
};

// "28x28" -> {28, 28}; every dimension a positive whole number.
Shape parse_dims(const std::string& text) {
  Shape dims;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, 'x')) {
    const bool digits = !part.empty() && part.size() <= 9 &&
                        part.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoll(part) == 0)
      fail("--input '", text, "': expected positive sizes separated by 'x', e.g. 28x28");
    dims.push_back(std::stoll(part));
  }
  // getline drops a trailing empty part: "28x" would read as 28.
  if (dims.empty() || text.back() == 'x')
    fail("--input '", text, "': expected sizes such as 784 or 28x28");
  return dims;
}

// (N, 512): shapes with the batch dimension written as N.
std::string batch_shape(const Shape& s) {
  std::string out = "(N";
  for (size_t i = 1; i < s.size(); ++i) out += ", " + std::to_string(s[i]);
  return out + ")";
}

std::string dims(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + ")";
}

void run(const ModelArgs& a) {
  Shape input{2};
  for (int64_t d : parse_dims(a.input)) input.push_back(d);
  const auto plan = plan_model(a.spec, input);
  Rng rng(0);
  auto model = build_model<float>(plan, rng);
  auto state = model->state();
  const auto wn = weight_norm_keys_from_name(a.weight_norm_keys);
  if (!wn)
    fail("--weight-norm-keys must be legacy or parametrizations, got '", a.weight_norm_keys, "'");
  // The keys as exported: renames keep every entry in its place.
  const std::vector<std::string> keys = state_dict(state, {.weight_norm_keys = *wn}).keys();
  for (size_t i = 0; i < state.size(); ++i) state[i].name = keys[i];
  if (a.keys_only) {
    for (const auto& e : state)
      std::cout << e.name << '\t' << (e.value ? dims(e.value->shape()) : "()") << '\n';
    return;
  }
  std::cout << "spec:  " << resolve_spec(a.spec) << "\ninput: " << batch_shape(input) << "\n\n";
  for (const auto& p : plan) {
    std::printf("  %-14s %-40s -> %s\n", p.child_path().c_str(), p.source.c_str(),
                batch_shape(p.out_shape).c_str());
  }
  int64_t params = 0;
  for (const auto& e : state)
    if (e.is_param()) params += e.value->numel();
  std::cout << "\nstate_dict (" << state.size() << " entries, " << params << " parameters):\n";
  for (const auto& e : state)
    std::printf("  %-30s %s%s\n", e.name.c_str(), e.value ? dims(e.value->shape()).c_str() : "()",
                e.is_param() ? "" : "  buffer");
}

}  // namespace

void add_model_command(CLI::App& app) {
  auto a = std::make_shared<ModelArgs>();
  auto* cmd =
      app.add_subcommand("model", "Show the layers and state_dict keys a model spec builds");
  cmd->footer("Presets:\n" + preset_help() + "\nSpec language: docs/model-spec.md");
  cmd->add_option("spec", a->spec,
                  "a model spec, e.g. 'flatten, linear(512), relu, linear(10)', or a preset")
      ->required();
  cmd->add_option("--input", a->input, "input features without the batch dimension, e.g. 28x28")
      ->capture_default_str();
  cmd->add_flag("--keys", a->keys_only, "print only the state_dict keys and shapes");
  cmd->add_option("--weight-norm-keys", a->weight_norm_keys,
                  "legacy (weight_g, weight_v) or parametrizations "
                  "(parametrizations.weight.original0/1, PyTorch >= 2.1)")
      ->capture_default_str();
  cmd->callback([a] { run(*a); });
}

}  // namespace normlab::cli
