// Named models: the seed-001 network (standard layers and the notebook's own)
// and the five seed-000 architectures of the depth experiment. Each preset is
// just spec text, so `normlab model <preset>` shows exactly what it builds.
#include <algorithm>
#include <cctype>
#include <functional>
#include <map>

#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"

namespace normlab {
namespace {

struct Param {
  const char* name;
  int64_t fallback, lo, hi;
  // A parameter with named values (cnn's norm=gn): the value is the index of
  // its name here, and lo/hi are ignored.
  std::vector<const char*> choices = {};
};

struct Preset {
  const char* name;
  std::vector<Param> params;
  const char* what;
  std::function<std::string(const std::map<std::string, int64_t>&)> spec;
};

// seed-000: Flatten, then `depth` blocks of width `width`, then Linear(., out, bias=False),
// all inside a child "network" as in the notebook's MLP classes (keys network.<i>.*).
std::string seed000(const std::string& block, const std::map<std::string, int64_t>& p) {
  std::string s = "network: [flatten";
  for (int64_t i = 0; i < p.at("depth"); ++i) s += ", " + block;
  return s + ", linear(" + std::to_string(p.at("out")) + ", bias=false)]";
}

std::function<std::string(const std::map<std::string, int64_t>&)> seed000_block(
    const std::string& pattern) {
  return [pattern](const std::map<std::string, int64_t>& p) {
    std::string block = pattern;
    const std::string w = std::to_string(p.at("width"));
    for (size_t at; (at = block.find('W')) != std::string::npos;) block.replace(at, 1, w);
    return seed000(block, p);
  };
}

const std::vector<Param> kSeed000Params = {
    {"depth", 3, 0, 1000}, {"width", 512, 1, kMaxFeatures}, {"out", 10, 1, kMaxFeatures}};

// The cnn preset: the (N, 784) batch becomes (N, 1, 28, 28); norm picks the
// 2-D norm after each conv and its 1-D counterpart after linear(128):
// bn: BatchNorm2d / BatchNorm1d, gn: GroupNorm(8) / GroupNorm(8),
// in: InstanceNorm2d / LayerNorm (one instance = the sample's features),
// ln: LayerNorm over (C, H, W) / LayerNorm(128).
std::string cnn_spec(const std::map<std::string, int64_t>& p) {
  const int64_t k = p.at("norm");
  auto norm2d = [k](int64_t c) -> std::string {
    const std::string C = std::to_string(c);
    switch (k) {
      case 1:
        return "batchnorm2d(" + C + "), ";
      case 2:
        return "groupnorm(8), ";
      case 3:
        return "instancenorm2d(" + C + "), ";
      case 4:
        return "layernorm(dims=3), ";
      default:
        return "";
    }
  };
  static const char* const norm1d[] = {"", "batchnorm(128), ", "groupnorm(8), ", "layernorm(128), ",
                                       "layernorm(128), "};
  auto block = [&](int64_t c) {
    return "conv2d(" + std::to_string(c) + ", 3), " + norm2d(c) + "relu, maxpool2d(2), ";
  };
  return "unflatten(1, 28, 28), " + block(32) + block(64) + "flatten, linear(128), " + norm1d[k] +
         "relu, linear(10)";
}

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = {
      {"seed001",
       {},
       "the seed-001 notebook's network from standard layers (inputs (N, 784))",
       [](const auto&) {
         return std::string(
             "wnlinear(784, 512), relu, layernorm(512), wnlinear(512, 512), relu, batchnorm(512), "
             "wnlinear(512, 256), relu, layernorm(256), wnlinear(256, 10)");
       }},
      {"seed001-notebook",
       {},
       "the seed-001 notebook's Net as written, children p1, ln1, p2, bn2, p3, ln3, p4",
       [](const auto&) {
         return std::string(
             "p1: nb_wnlinear(784, 512), relu, ln1: nb_layernorm, p2: nb_wnlinear(512, 512), "
             "relu, bn2: nb_batchnorm, p3: nb_wnlinear(512, 256), relu, ln3: nb_layernorm, "
             "p4: nb_wnlinear(256, 10)");
       }},
      {"none", kSeed000Params, "seed-000: Linear(bias=False), ReLU per block",
       seed000_block("linear(W, bias=false), relu")},
      {"bn-pre", kSeed000Params, "seed-000: BatchNorm(affine=False), Linear, ReLU per block",
       seed000_block("batchnorm(affine=false), linear(W), relu")},
      {"bn-post", kSeed000Params, "seed-000: Linear(bias=False), BatchNorm, ReLU per block",
       seed000_block("linear(W, bias=false), batchnorm, relu")},
      {"ln-pre", kSeed000Params, "seed-000: LayerNorm(bias=False), Linear, ReLU per block",
       seed000_block("layernorm(bias=false), linear(W), relu")},
      {"ln-post", kSeed000Params, "seed-000: Linear(bias=False), LayerNorm, ReLU per block",
       seed000_block("linear(W, bias=false), layernorm, relu")},
      {"cnn",
       {{"norm", 0, 0, 0, {"none", "bn", "gn", "in", "ln"}}},
       "a small classic CNN on (N, 784) images: conv(32,3)-norm-relu-pool, "
       "conv(64,3)-norm-relu-pool, linear(128)-norm-relu, linear(10)",
       cnn_spec},
  };
  return table;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

const Preset* find_preset(const std::string& text) {
  const std::string name = trim(text.substr(0, text.find(':')));
  for (const auto& p : presets())
    if (name == p.name) return &p;
  return nullptr;
}

// "none|bn|gn" for a parameter with named choices.
std::string choice_list(const Param& q) {
  std::string s;
  for (size_t i = 0; i < q.choices.size(); ++i) {
    if (i) s += '|';
    s += q.choices[i];
  }
  return s;
}

std::string param_list(const Preset& p) {
  std::string s;
  for (const auto& q : p.params) {
    if (!s.empty()) s += ',';
    s += q.name;
    s += '=';
    if (q.choices.empty()) {
      s += std::to_string(q.fallback);
      continue;
    }
    s += q.choices[q.fallback];
    s += " (";
    s += choice_list(q);
    s += ')';
  }
  return s;
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& p : presets()) names.push_back(p.name);
  return names;
}

std::string preset_help() {
  std::string s;
  for (const auto& p : presets()) {
    std::string head = p.name;
    if (!p.params.empty()) {
      head += ':';
      head += param_list(p);
    }
    head.resize(std::max<size_t>(head.size() + 2, 34), ' ');
    s += "  " + head + p.what + "\n";
  }
  return s;
}

bool is_preset(const std::string& spec_or_preset) {
  return find_preset(spec_or_preset) != nullptr;
}

std::string preset_spec(const std::string& text) {
  const Preset* p = find_preset(text);
  if (!p) {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    fail("unknown preset '", trim(text), "'; known presets: ", names);
  }
  std::map<std::string, int64_t> values;
  for (const auto& q : p->params) values[q.name] = q.fallback;
  const size_t colon = text.find(':');
  if (colon != std::string::npos) {
    const std::string rest = text.substr(colon + 1);
    if (p->params.empty()) fail("preset ", p->name, " takes no parameters, got '", trim(rest), "'");
    size_t start = 0;
    while (start <= rest.size()) {
      const size_t comma = std::min(rest.find(',', start), rest.size());
      const std::string item = trim(rest.substr(start, comma - start));
      const size_t eq = item.find('=');
      const std::string key = trim(item.substr(0, eq));
      const auto q = std::find_if(p->params.begin(), p->params.end(),
                                  [&](const Param& x) { return key == x.name; });
      if (eq == std::string::npos || q == p->params.end())
        fail("preset ", p->name, ": expected key=value with a key among ", param_list(*p),
             ", got '", item, "'");
      const std::string value = trim(item.substr(eq + 1));
      if (!q->choices.empty()) {
        const auto c = std::find_if(q->choices.begin(), q->choices.end(),
                                    [&](const char* x) { return value == x; });
        if (c == q->choices.end())
          fail("preset ", p->name, ": ", key, " must be one of ", choice_list(*q), ", got '", value,
               "'");
        values[key] = c - q->choices.begin();
        start = comma + 1;
        continue;
      }
      const bool digits = !value.empty() && value.size() <= 12 &&
                          std::all_of(value.begin(), value.end(), [](char c) {
                            return std::isdigit(static_cast<unsigned char>(c));
                          });
      const int64_t v = digits ? std::stoll(value) : -1;
      if (!digits || v < q->lo || v > q->hi)
        fail("preset ", p->name, ": ", key, " must be a whole number in ", q->lo, "..", q->hi,
             ", got '", value, "'");
      values[key] = v;
      start = comma + 1;
    }
  }
  return p->spec(values);
}

std::string resolve_spec(const std::string& spec_or_preset) {
  return is_preset(spec_or_preset) ? preset_spec(spec_or_preset) : spec_or_preset;
}

}  // namespace normlab
