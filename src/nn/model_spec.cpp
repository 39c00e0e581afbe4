// The model-spec language: lexer, recursive-descent parser and the planner
// that infers every layer's sizes from the input shape. Grammar and layer
// table: docs/model-spec.md.
#include "normlab/model_spec.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>

#include "normlab/error.hpp"

namespace normlab {

std::string LayerPlan::child_path() const {
  std::string s;
  for (size_t i = 0; i < path.size(); ++i) s += (i ? "." : "") + path[i];
  return s;
}

namespace {

// ---------------------------------------------------------------- the layer table

struct LayerInfo {
  const char* name;
  const char* alias;  // or nullptr
  LayerKind kind;
  int min_sizes, max_sizes;       // positional sizes: OUT, or IN and OUT; C or D for norms
  std::vector<const char*> keys;  // accepted keyword options
  const char* usage;
};

const std::vector<LayerInfo>& layer_table() {
  static const std::vector<LayerInfo> table = {
      {"flatten", nullptr, LayerKind::Flatten, 0, 0, {}, "flatten"},
      {"linear", nullptr, LayerKind::Linear, 1, 2, {"bias"}, "linear([IN,] OUT[, bias=false])"},
      {"wnlinear",
       nullptr,
       LayerKind::WeightNormLinear,
       1,
       2,
       {"bias", "dim"},
       "wnlinear([IN,] OUT[, bias=false][, dim=0|1|none])"},
      {"batchnorm",
       "bn",
       LayerKind::BatchNorm,
       0,
       1,
       {"affine", "momentum", "eps", "track_running_stats"},
       "batchnorm([C][, affine=false][, momentum=none|F][, eps=F][, track_running_stats=false])"},
      {"layernorm",
       "ln",
       LayerKind::LayerNorm,
       0,
       1,
       {"elementwise_affine", "bias", "eps", "dims", "shape"},
       "layernorm([D | dims=K | shape=AxB...][, elementwise_affine=false][, bias=false][, eps=F])"},
      {"relu", nullptr, LayerKind::ReLU, 0, 0, {}, "relu"},
      {"nb_wnlinear",
       nullptr,
       LayerKind::NotebookWeightNormLinear,
       1,
       2,
       {"bias"},
       "nb_wnlinear([IN,] OUT[, bias=false])"},
      {"nb_batchnorm", nullptr, LayerKind::NotebookBatchNorm, 0, 0, {}, "nb_batchnorm"},
      {"nb_layernorm", nullptr, LayerKind::NotebookLayerNorm, 0, 0, {}, "nb_layernorm"},
      {"rmsnorm",
       nullptr,
       LayerKind::RMSNorm,
       0,
       1,
       {"elementwise_affine", "eps", "dims", "shape"},
       "rmsnorm([D | dims=K | shape=AxB...][, elementwise_affine=false][, eps=F|none])"},
      {"groupnorm",
       "gn",
       LayerKind::GroupNorm,
       1,
       2,
       {"eps", "affine"},
       "groupnorm(G[, C][, eps=F][, affine=false])"},
      {"instancenorm1d",
       "in",
       LayerKind::InstanceNorm1d,
       0,
       1,
       {"eps", "momentum", "affine", "track_running_stats"},
       "instancenorm1d([C][, eps=F][, momentum=none|F][, affine=true][, "
       "track_running_stats=true])"},
      {"unflatten", nullptr, LayerKind::Unflatten, 1, 8, {}, "unflatten(D1, D2[, ...])"},
      {"mean_only_batchnorm",
       "meanonlybn",
       LayerKind::MeanOnlyBatchNorm,
       0,
       1,
       {"affine", "momentum", "track_running_stats"},
       "mean_only_batchnorm([C][, affine=false][, momentum=none|F][, track_running_stats=false])"},
      {"batchrenorm",
       "brn",
       LayerKind::BatchRenorm,
       0,
       1,
       {"affine", "momentum", "eps", "rmax", "dmax", "schedule", "warmup", "rmax_ramp",
        "dmax_ramp"},
       "batchrenorm([C][, rmax=F>=1][, dmax=F>=0][, schedule=paper|none][, warmup=STEPS]"
       "[, rmax_ramp=STEPS][, dmax_ramp=STEPS][, affine=false][, momentum=none|F][, eps=F])"},
      {"ghostbatchnorm",
       "gbn",
       LayerKind::GhostBatchNorm,
       0,
       1,
       {"virtual_batch_size", "affine", "momentum", "eps", "track_running_stats"},
       "ghostbatchnorm([C][, virtual_batch_size=K][, affine=false][, momentum=none|F][, eps=F]"
       "[, track_running_stats=false])"},
      {"syncbatchnorm",
       "syncbn",
       LayerKind::SyncBatchNorm,
       0,
       1,
       {"affine", "momentum", "eps", "track_running_stats"},
       "syncbatchnorm([C][, affine=false][, momentum=none|F][, eps=F][, "
       "track_running_stats=false])"},
      {"batchnorm2d",
       "bn2d",
       LayerKind::BatchNorm2d,
       0,
       1,
       {"affine", "momentum", "eps", "track_running_stats"},
       "batchnorm2d([C][, affine=false][, momentum=none|F][, eps=F][, track_running_stats=false])"},
      {"instancenorm2d",
       "in2d",
       LayerKind::InstanceNorm2d,
       0,
       1,
       {"eps", "momentum", "affine", "track_running_stats"},
       "instancenorm2d([C][, eps=F][, momentum=none|F][, affine=true][, "
       "track_running_stats=true])"},
      {"conv2d",
       nullptr,
       LayerKind::Conv2d,
       2,
       2,
       {"stride", "padding", "dilation", "groups", "bias"},
       "conv2d(OUT, K | KHxKW[, stride=S][, padding=P][, dilation=D][, groups=G][, bias=false])"},
      {"maxpool2d",
       nullptr,
       LayerKind::MaxPool2d,
       1,
       1,
       {"stride", "padding", "dilation"},
       "maxpool2d(K | KHxKW[, stride=S][, padding=P][, dilation=D])"},
      {"avgpool2d",
       nullptr,
       LayerKind::AvgPool2d,
       1,
       1,
       {"stride", "padding", "count_include_pad"},
       "avgpool2d(K | KHxKW[, stride=S][, padding=P][, count_include_pad=false])"},
      {"adaptiveavgpool2d",
       nullptr,
       LayerKind::AdaptiveAvgPool2d,
       1,
       1,
       {},
       "adaptiveavgpool2d(S | HxW)"},
      {"sigmoid", nullptr, LayerKind::Sigmoid, 0, 0, {}, "sigmoid"},
  };
  return table;
}

std::string known_layers() {
  std::string s;
  for (const auto& l : layer_table()) {
    s += (s.empty() ? "" : ", ") + std::string(l.name);
    if (l.alias) s += std::string(" (") + l.alias + ")";
  }
  return s;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// ---------------------------------------------------------------- errors with a caret

// "model spec, column 12: <what>" and, on the next lines, the spec with a caret
// under the column (a window around it for long specs).
[[noreturn]] void fail_at(const std::string& spec, size_t pos, const std::string& what) {
  const size_t window = 60;
  size_t begin = pos > window ? pos - window : 0;
  size_t end = std::min(spec.size(), pos + window);
  std::string excerpt = spec.substr(begin, end - begin);
  size_t caret = pos - begin;
  if (begin > 0) {
    excerpt = "..." + excerpt;
    caret += 3;
  }
  if (end < spec.size()) excerpt += "...";
  fail("model spec, column ", pos + 1, ": ", what, "\n    ", excerpt, "\n    ",
       std::string(caret, ' '), "^");
}

// ---------------------------------------------------------------- lexer

struct Token {
  enum Kind { Ident, Number, LParen, RParen, LBracket, RBracket, Comma, Colon, Equals, End };
  Kind kind;
  std::string text;
  size_t pos;
};

std::string describe(const Token& t) {
  if (t.kind == Token::End) return "the end of the spec";
  return "'" + t.text + "'";
}

std::vector<Token> lex(const std::string& spec) {
  std::vector<Token> out;
  size_t i = 0;
  auto is_ident_start = [](char c) {
    return std::isalpha(static_cast<unsigned char>(c)) || c == '_';
  };
  auto is_ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  while (i < spec.size()) {
    const char c = spec[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    const size_t start = i;
    Token::Kind k;
    switch (c) {
      case '(':
        k = Token::LParen;
        break;
      case ')':
        k = Token::RParen;
        break;
      case '[':
        k = Token::LBracket;
        break;
      case ']':
        k = Token::RBracket;
        break;
      case ',':
        k = Token::Comma;
        break;
      case ':':
        k = Token::Colon;
        break;
      case '=':
        k = Token::Equals;
        break;
      default:
        if (is_ident_start(c)) {
          while (i < spec.size() && is_ident(spec[i])) ++i;
          out.push_back({Token::Ident, spec.substr(start, i - start), start});
          continue;
        }
        if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+' || c == '.') {
          // A number as written; its form is checked where a value is expected.
          ++i;
          while (i < spec.size() && (is_ident(spec[i]) || spec[i] == '.' ||
                                     ((spec[i] == '-' || spec[i] == '+') &&
                                      (spec[i - 1] == 'e' || spec[i - 1] == 'E'))))
            ++i;
          out.push_back({Token::Number, spec.substr(start, i - start), start});
          continue;
        }
        fail_at(spec, i, std::string("unexpected character '") + c + "'");
    }
    out.push_back({k, std::string(1, c), start});
    ++i;
  }
  out.push_back({Token::End, "", spec.size()});
  return out;
}

// ---------------------------------------------------------------- parse tree

struct Arg {
  std::string key;  // empty for a positional size
  Token value;
  size_t pos;
};

struct Node {
  std::string name;  // explicit child name, or empty
  size_t name_pos = 0;
  size_t pos = 0;      // where the layer or group starts
  std::string source;  // the item as written
  bool is_group = false;
  std::vector<Node> children;       // group
  const LayerInfo* info = nullptr;  // layer
  std::vector<Arg> args;
};

class Parser {
 public:
  static constexpr int kMaxGroupDepth = 32;

  explicit Parser(const std::string& spec) : spec_(spec), toks_(lex(spec)) {}

  std::vector<Node> parse() {
    auto items = parse_list(Token::End);
    return items;
  }

 private:
  const Token& peek(size_t ahead = 0) const {
    return toks_[std::min(i_ + ahead, toks_.size() - 1)];
  }
  Token take() { return toks_[std::min(i_++, toks_.size() - 1)]; }
  [[noreturn]] void expected(const std::string& what) {
    fail_at(spec_, peek().pos, "expected " + what + ", found " + describe(peek()));
  }

  std::vector<Node> parse_list(Token::Kind closing) {
    std::vector<Node> items;
    if (peek().kind == closing)
      expected(closing == Token::End ? "a layer (the spec is empty)" : "a layer inside '[ ]'");
    while (true) {
      items.push_back(parse_item());
      if (peek().kind == Token::Comma) {
        take();
        if (peek().kind == closing) expected("a layer after ','");
        continue;
      }
      if (peek().kind == closing) return items;
      expected(closing == Token::End ? "',' or the end of the spec" : "',' or ']'");
    }
  }

  Node parse_item() {
    Node n;
    if ((peek().kind == Token::Ident || peek().kind == Token::Number) &&
        peek(1).kind == Token::Colon) {
      const Token name = take();
      take();  // ':'
      if (name.kind == Token::Number && !std::all_of(name.text.begin(), name.text.end(), ::isdigit))
        fail_at(spec_, name.pos, "child name '" + name.text + "' must be a name or a whole number");
      n.name = name.text;
      n.name_pos = name.pos;
    }
    n.pos = peek().pos;
    if (peek().kind == Token::LBracket) {
      // The parser recurses per group: a bound keeps "[[[[..." (found by
      // fuzz_model_spec: 3758 brackets overflowed the stack) an error.
      if (++depth_ > kMaxGroupDepth)
        fail_at(spec_, peek().pos,
                "groups nested more than " + std::to_string(kMaxGroupDepth) + " deep");
      take();
      n.is_group = true;
      n.children = parse_list(Token::RBracket);
      take();  // ']'
      --depth_;
    } else if (peek().kind == Token::Ident) {
      parse_layer(n);
    } else {
      expected("a layer name or '[' (known layers: " + known_layers() + ")");
    }
    n.source = trim(spec_.substr(n.pos, toks_[i_ - 1].pos + toks_[i_ - 1].text.size() - n.pos));
    return n;
  }

  void parse_layer(Node& n) {
    const Token name = take();
    const std::string lname = lower(name.text);
    for (const auto& l : layer_table())
      if (lname == l.name || (l.alias && lname == l.alias)) n.info = &l;
    if (!n.info) {
      // A lone word is more likely a misspelt preset than a layer.
      std::string presets;
      if (spec_.find_first_of(",([") == std::string::npos)
        for (const auto& p : preset_names()) presets += (presets.empty() ? "" : ", ") + p;
      fail_at(spec_, name.pos,
              "unknown layer '" + name.text + "'; known layers: " + known_layers() +
                  (presets.empty() ? "" : "; known presets: " + presets));
    }
    if (peek().kind != Token::LParen) return;
    take();
    if (peek().kind == Token::RParen) {
      take();
      return;
    }
    while (true) {
      Arg a;
      a.pos = peek().pos;
      if (peek().kind == Token::Ident && peek(1).kind == Token::Equals) {
        a.key = lower(take().text);
        take();  // '='
        if (peek().kind != Token::Ident && peek().kind != Token::Number)
          expected("a value for " + a.key + " (usage: " + n.info->usage + ")");
      } else if (peek().kind != Token::Number) {
        expected(std::string("a size or key=value inside ") + n.info->name +
                 "(...) (usage: " + n.info->usage + ")");
      }
      a.value = take();
      n.args.push_back(a);
      if (peek().kind == Token::Comma) {
        take();
        continue;
      }
      if (peek().kind == Token::RParen) {
        take();
        return;
      }
      expected(std::string("',' or ')' to close ") + n.info->name + "(...)");
    }
  }

  static std::string trim(const std::string& s) {
    size_t b = s.find_first_not_of(" \t\n\r"), e = s.find_last_not_of(" \t\n\r");
    return b == std::string::npos ? "" : s.substr(b, e - b + 1);
  }

  const std::string& spec_;
  std::vector<Token> toks_;
  size_t i_ = 0;
  int depth_ = 0;  // groups open at the current token
};

// ---------------------------------------------------------------- option values

struct Options {
  std::vector<std::pair<int64_t, size_t>> sizes;  // value, position
  bool bias = true, affine = true, track = true, elementwise_affine = true;
  WeightNormDim wn_dim = WeightNormDim::Rows;
  std::optional<double> momentum = 0.1;
  std::optional<double> eps;
  // layernorm, rmsnorm: the normalized_shape as the last `dims` dims of the
  // input, or given as `shape` (which must end the input's shape).
  std::optional<int64_t> dims;
  std::optional<Shape> shape;
  bool affine_given = false, track_given = false;  // instancenorm1d's defaults are false
  // BatchNorm variants
  std::optional<double> rmax, dmax;
  std::optional<int64_t> warmup, rmax_ramp, dmax_ramp, virtual_batch_size;
  bool paper_schedule = false;
  // conv2d and the pools: each positional size as a pair (K or KHxKW), and
  // stride, padding, dilation, groups, count_include_pad
  std::vector<Pair> size_pairs;
  std::optional<Pair> stride, padding, dilation;
  int64_t groups = 1;
  bool count_include_pad = true;
};

class OptionReader {
 public:
  OptionReader(const std::string& spec, const Node& n) : spec_(spec), n_(n) {}

  Options read() {
    Options o;
    std::map<std::string, size_t> seen;
    for (const Arg& a : n_.args) {
      if (a.key.empty()) {
        if (!seen.empty()) bad(a.pos, "a size cannot follow key=value options");
        if (static_cast<int>(o.sizes.size()) >= n_.info->max_sizes)
          bad(a.pos, n_.info->max_sizes == 0 ? std::string(n_.info->name) + " takes no sizes"
                                             : "too many sizes for " + std::string(n_.info->name));
        if (takes_pairs() && lower(a.value.text).find('x') != std::string::npos) {
          const Pair pr = pair(a, 1);
          o.sizes.push_back({pr.h, a.pos});
          o.size_pairs.push_back(pr);
          continue;
        }
        o.sizes.push_back({size(a), a.pos});
        o.size_pairs.push_back(Pair(o.sizes.back().first));
        continue;
      }
      const auto& keys = n_.info->keys;
      if (std::find_if(keys.begin(), keys.end(), [&](const char* k) { return a.key == k; }) ==
          keys.end()) {
        std::string known;
        for (const char* k : keys) known += (known.empty() ? "" : ", ") + std::string(k);
        bad(a.pos, "unknown option '" + a.key + "' for " + n_.info->name +
                       (known.empty() ? " (it takes no options)" : "; expected one of: " + known));
      }
      if (!seen.emplace(a.key, a.pos).second) bad(a.pos, "option '" + a.key + "' is given twice");
      if (a.key == "bias") o.bias = boolean(a);
      if (a.key == "affine") o.affine = boolean(a);
      if (a.key == "track_running_stats") o.track = boolean(a);
      if (a.key == "elementwise_affine") o.elementwise_affine = boolean(a);
      if (a.key == "dim") o.wn_dim = dim(a);
      if (a.key == "momentum") o.momentum = momentum(a);
      if (a.key == "eps" && !(n_.info->kind == LayerKind::RMSNorm && lower(a.value.text) == "none"))
        o.eps = eps(a);
      if (a.key == "dims") o.dims = size(a);
      if (a.key == "shape") o.shape = shape(a);
      if (a.key == "affine") o.affine_given = true;
      if (a.key == "track_running_stats") o.track_given = true;
      if (a.key == "rmax") o.rmax = bounded(a, 1, "a finite number >= 1");
      if (a.key == "dmax") o.dmax = bounded(a, 0, "a finite number >= 0");
      if (a.key == "schedule") o.paper_schedule = schedule(a);
      if (a.key == "warmup") o.warmup = steps(a);
      if (a.key == "rmax_ramp") o.rmax_ramp = steps(a);
      if (a.key == "dmax_ramp") o.dmax_ramp = steps(a);
      if (a.key == "virtual_batch_size") o.virtual_batch_size = size(a);
      if (a.key == "stride") o.stride = pair(a, 1);
      if (a.key == "padding") o.padding = pair(a, 0);
      if (a.key == "dilation") o.dilation = pair(a, 1);
      if (a.key == "groups") o.groups = size(a);
      if (a.key == "count_include_pad") o.count_include_pad = boolean(a);
    }
    if (o.dims && o.shape) bad(seen["shape"], "give dims= or shape=, not both");
    if (!o.sizes.empty() && (o.dims || o.shape))
      bad(o.sizes[0].second, "give the size D (the last dim) or dims= / shape=, not both");
    if (static_cast<int>(o.sizes.size()) < n_.info->min_sizes &&
        n_.info->kind == LayerKind::GroupNorm)
      bad(n_.pos, "groupnorm needs its number of groups, e.g. groupnorm(32)");
    if (static_cast<int>(o.sizes.size()) < n_.info->min_sizes && takes_pairs())
      bad(n_.pos, std::string(n_.info->name) + " needs " +
                      (n_.info->kind == LayerKind::Conv2d ? "its output channels and kernel size"
                       : n_.info->kind == LayerKind::AdaptiveAvgPool2d ? "its output size"
                                                                       : "its kernel size"));
    if (static_cast<int>(o.sizes.size()) < n_.info->min_sizes)
      bad(n_.pos,
          std::string(n_.info->name) + " needs its output size, e.g. " + n_.info->name + "(512)");
    return o;
  }

 private:
  [[noreturn]] void bad(size_t pos, const std::string& what) {
    fail_at(spec_, pos, "in '" + n_.source + "': " + what + " (usage: " + n_.info->usage + ")");
  }

  int64_t size(const Arg& a) {
    const std::string& t = a.value.text;
    const size_t sign = !t.empty() && (t[0] == '-' || t[0] == '+');
    const bool whole = t.size() > sign && std::all_of(t.begin() + sign, t.end(), [](char c) {
                         return std::isdigit(static_cast<unsigned char>(c));
                       });
    if (!whole) bad(a.pos, "size '" + t + "' is not a whole number");
    errno = 0;
    const long long v = std::strtoll(t.c_str(), nullptr, 10);
    if (errno == ERANGE || v > kMaxFeatures)
      bad(a.pos,
          "size " + t + " is absurdly large (the limit is " + std::to_string(kMaxFeatures) + ")");
    if (v <= 0) bad(a.pos, "size must be positive, got " + t);
    return v;
  }

  bool takes_pairs() const {
    const LayerKind k = n_.info->kind;
    return k == LayerKind::Conv2d || k == LayerKind::MaxPool2d || k == LayerKind::AvgPool2d ||
           k == LayerKind::AdaptiveAvgPool2d;
  }

  // PyTorch's int-or-pair arguments: "3" (both) or "3x5" (height x width),
  // each a whole number >= lo (0 for padding, else 1).
  Pair pair(const Arg& a, int64_t lo) {
    const std::string t = lower(a.value.text);
    const size_t x = t.find('x');
    auto part = [&](const std::string& s) {
      const bool whole = !s.empty() && s.size() <= 7 && std::all_of(s.begin(), s.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      });
      const int64_t v = whole ? std::stoll(s) : -1;
      if (!whole || v < lo || v > kMaxFeatures)
        bad(a.pos, (a.key.empty() ? std::string("size") : a.key) + " must be a whole number " +
                       (lo == 0 ? ">= 0" : ">= 1") + " or HxW, got '" + a.value.text + "'");
      return v;
    };
    if (x == std::string::npos) return Pair(part(t));
    return Pair(part(t.substr(0, x)), part(t.substr(x + 1)));
  }

  // "28x28" (or "784"): positive whole sizes separated by 'x'.
  Shape shape(const Arg& a) {
    const std::string t = lower(a.value.text);
    Shape s;
    size_t b = 0;
    while (true) {
      const size_t e = t.find('x', b);
      const std::string part = t.substr(b, e == std::string::npos ? std::string::npos : e - b);
      const bool whole = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) {
        return std::isdigit(static_cast<unsigned char>(c));
      });
      if (!whole)
        bad(a.pos,
            "shape must be sizes separated by 'x' (e.g. shape=28x28), got '" + a.value.text + "'");
      errno = 0;
      const long long v = std::strtoll(part.c_str(), nullptr, 10);
      if (errno == ERANGE || v > kMaxFeatures || v <= 0)
        bad(a.pos, "shape " + a.value.text + ": each size must be in 1.." +
                       std::to_string(kMaxFeatures) + ", got " + part);
      s.push_back(v);
      if (e == std::string::npos) return s;
      b = e + 1;
    }
  }

  bool boolean(const Arg& a) {
    const std::string v = lower(a.value.text);
    if (v == "true") return true;
    if (v == "false") return false;
    bad(a.pos, a.key + " must be true or false, got '" + a.value.text + "'");
  }

  // PyTorch's weight_norm dim for a Linear weight: 0 (or -2) per output row,
  // 1 per input column, none (or -1: weight_norm takes -1 as the whole tensor).
  WeightNormDim dim(const Arg& a) {
    const std::string v = lower(a.value.text);
    if (v == "0" || v == "-2") return WeightNormDim::Rows;
    if (v == "1") return WeightNormDim::Columns;
    if (v == "none" || v == "-1") return WeightNormDim::Whole;
    bad(a.pos,
        "dim must be 0 or -2 (one norm per output row), 1 (one per input column), or none or -1 "
        "(one norm for the whole matrix, as PyTorch's weight_norm takes -1), got '" +
            a.value.text + "'");
  }

  std::optional<double> number(const Arg& a) {
    if (a.value.kind != Token::Number) return std::nullopt;
    const std::string& t = a.value.text;
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(t.c_str(), &end);
    if (end != t.c_str() + t.size() || errno == ERANGE || !std::isfinite(v)) return std::nullopt;
    return v;
  }

  // PyTorch takes any momentum (outside [0, 1] its formula extrapolates) and any
  // eps; only values that can do nothing but write NaN are refused here: a
  // non-finite momentum, a negative eps (docs/edge-semantics.md). BatchNorm with
  // eps = 0 refuses training itself, as PyTorch does, and works in eval.
  std::optional<double> momentum(const Arg& a) {
    if (lower(a.value.text) == "none") return std::nullopt;
    const auto v = number(a);
    if (!v) bad(a.pos, "momentum must be none or a finite number, got '" + a.value.text + "'");
    return v;
  }

  double eps(const Arg& a) {
    const auto v = number(a);
    if (!v || *v < 0) bad(a.pos, "eps must be a finite number >= 0, got '" + a.value.text + "'");
    return *v;
  }

  // A number >= lo (rmax, dmax).
  double bounded(const Arg& a, double lo, const char* what) {
    const auto v = number(a);
    if (!v || *v < lo) bad(a.pos, a.key + " must be " + what + ", got '" + a.value.text + "'");
    return *v;
  }

  // A count of training steps: a whole number >= 0.
  int64_t steps(const Arg& a) {
    const std::string& t = a.value.text;
    if (t.empty() ||
        !std::all_of(t.begin(), t.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }) ||
        t.size() > 15)
      bad(a.pos, a.key + " must be a whole number of steps >= 0 (below 1e15), got '" + t + "'");
    return std::stoll(t);
  }

  // Batch Renormalization's schedule: paper (warmup 5000, rmax_ramp 35000,
  // dmax_ramp 20000) or none.
  bool schedule(const Arg& a) {
    const std::string v = lower(a.value.text);
    if (v == "paper") return true;
    if (v == "none") return false;
    bad(a.pos,
        "schedule must be paper (plain BatchNorm for 5000 steps, rmax reached at 40000 "
        "and dmax at 25000) or none, got '" +
            a.value.text + "'");
  }

  const std::string& spec_;
  const Node& n_;
};

// ---------------------------------------------------------------- planner

class Planner {
 public:
  Planner(const std::string& spec, const Shape& input) : spec_(spec), shape_(input) {}

  std::vector<LayerPlan> plan(const std::vector<Node>& items) {
    walk(items, {});
    return std::move(plans_);
  }

 private:
  // Names children as nn.Sequential does (their index) unless named in the spec.
  void walk(const std::vector<Node>& items, const std::vector<std::string>& prefix) {
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < items.size(); ++i) {
      const Node& n = items[i];
      const std::string name = n.name.empty() ? std::to_string(i) : n.name;
      const size_t pos = n.name.empty() ? n.pos : n.name_pos;
      if (auto [it, fresh] = names.emplace(name, pos); !fresh)
        fail_at(spec_, pos,
                "child name '" + name + "' is used twice (first at column " +
                    std::to_string(it->second + 1) + "); unnamed items are named by their index");
      auto path = prefix;
      path.push_back(name);
      if (n.is_group)
        walk(n.children, path);
      else
        plans_.push_back(layer(n, path));
    }
  }

  std::string from() const { return producer_.empty() ? "the model's input" : producer_; }

  [[noreturn]] void mismatch(const Node& n, const std::string& what) {
    fail_at(spec_, n.pos,
            n.source + " " + what + ", but its input has shape " + shape_str(shape_) + " (from " +
                from() + ")");
  }

  LayerPlan layer(const Node& n, std::vector<std::string> path) {
    const Options o = OptionReader(spec_, n).read();
    LayerPlan p;
    p.kind = n.info->kind;
    p.path = std::move(path);
    p.source = n.source;
    p.column = n.pos + 1;
    p.in_shape = shape_;
    p.bias = o.bias;
    p.wn_dim = o.wn_dim;
    p.bn.affine = o.affine;
    p.bn.track_running_stats = o.track;
    p.bn.momentum = o.momentum;
    if (o.eps) p.bn.eps = p.ln.eps = *o.eps;
    p.ln.elementwise_affine = o.elementwise_affine;
    p.ln.bias = o.bias;
    p.mean_only_bn.affine = o.affine;
    p.mean_only_bn.momentum = o.momentum;
    p.mean_only_bn.track_running_stats = o.track;
    p.renorm.affine = o.affine;
    p.renorm.momentum = o.momentum;
    if (o.eps) p.renorm.eps = *o.eps;
    if (o.rmax) p.renorm.rmax = *o.rmax;
    if (o.dmax) p.renorm.dmax = *o.dmax;
    if (o.paper_schedule) {
      p.renorm.warmup = 5000;
      p.renorm.rmax_ramp = 35000;
      p.renorm.dmax_ramp = 20000;
    }
    if (o.warmup) p.renorm.warmup = *o.warmup;
    if (o.rmax_ramp) p.renorm.rmax_ramp = *o.rmax_ramp;
    if (o.dmax_ramp) p.renorm.dmax_ramp = *o.dmax_ramp;
    if (o.virtual_batch_size) p.virtual_batch_size = *o.virtual_batch_size;
    const int64_t last = shape_.back();
    switch (p.kind) {
      case LayerKind::Flatten: {
        int64_t rest = 1;  // stops growing past the limit, so it cannot overflow
        for (size_t i = 1; i < shape_.size() && rest <= kMaxFeatures; ++i) rest *= shape_[i];
        if (rest > kMaxFeatures)
          mismatch(n, "would give more than " + std::to_string(kMaxFeatures) + " features");
        shape_ = {shape_[0], rest};
        break;
      }
      case LayerKind::Linear:
      case LayerKind::WeightNormLinear:
      case LayerKind::NotebookWeightNormLinear: {
        const bool both = o.sizes.size() == 2;
        p.in = last;
        p.out = o.sizes.back().first;
        if (both && o.sizes[0].first != last)
          mismatch(n, "expects " + std::to_string(o.sizes[0].first) + " input features");
        if (p.in * p.out > kMaxLayerWeights)
          fail_at(spec_, n.pos,
                  n.source + " after " + std::to_string(p.in) + " features would hold " +
                      std::to_string(p.in * p.out) + " weights, more than the limit " +
                      std::to_string(kMaxLayerWeights));
        total_weights_ += p.in * p.out;
        if (total_weights_ > kMaxModelWeights)
          fail_at(spec_, n.pos,
                  n.source + " brings the model to " + std::to_string(total_weights_) +
                      " weights, more than the limit " + std::to_string(kMaxModelWeights));
        shape_.back() = p.out;
        break;
      }
      case LayerKind::BatchNorm:
      case LayerKind::MeanOnlyBatchNorm:
      case LayerKind::BatchRenorm:
      case LayerKind::GhostBatchNorm:
      case LayerKind::SyncBatchNorm:
      case LayerKind::SyncBatchRenorm:
        // The BatchNorm variants take (N, C, H, W) too (per channel over N*H*W);
        // SyncBatchNorm too, as PyTorch's, which takes any (N, C, *): it is
        // what --sync-bn makes of a batchnorm2d. (SyncBatchRenorm has no name in
        // the grammar, --sync-bn makes it of a batchrenorm; listed for the switch.)
        if (shape_.size() != 2 && shape_.size() != 3 &&
            !(shape_.size() == 4 && p.kind != LayerKind::BatchNorm))
          mismatch(n, p.kind == LayerKind::BatchNorm
                          ? "needs a 2-D (N, C) or 3-D (N, C, L) input (batchnorm2d takes "
                            "(N, C, H, W))"
                          : "needs a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) input");
        p.in = p.out = shape_[1];
        if (!o.sizes.empty() && o.sizes[0].first != p.in)
          mismatch(n, "expects " + std::to_string(o.sizes[0].first) + " channels");
        break;
      case LayerKind::LayerNorm:
      case LayerKind::RMSNorm: {
        // normalized_shape: the last dim (default, or the size D), the last
        // `dims` dims, or `shape`; never the batch dim.
        const size_t features = shape_.size() - 1;
        Shape ns;
        if (o.shape) {
          ns = *o.shape;
          if (ns.size() > features || !std::equal(ns.rbegin(), ns.rend(), shape_.rbegin()))
            mismatch(n, "normalizes over trailing dims " + shape_str(ns));
        } else {
          const int64_t k = o.dims.value_or(1);
          if (k > static_cast<int64_t>(features))
            mismatch(n, "normalizes over the last " + std::to_string(k) +
                            " dims (the batch dim is never normalized)");
          ns.assign(shape_.end() - k, shape_.end());
        }
        int64_t count = 1;  // stops growing past the limit, so it cannot overflow
        for (size_t i = 0; i < ns.size() && count <= kMaxFeatures; ++i) count *= ns[i];
        if (count > kMaxFeatures)
          mismatch(n, "would normalize over more than " + std::to_string(kMaxFeatures) +
                          " values per row");
        p.norm_shape = ns;
        p.in = p.out = count;
        p.rms.eps = o.eps;
        p.rms.elementwise_affine = o.elementwise_affine;
        if (!o.sizes.empty() && o.sizes[0].first != last)
          mismatch(n, "normalizes over " + std::to_string(o.sizes[0].first) + " features");
        break;
      }
      case LayerKind::ReLU:
      case LayerKind::Sigmoid:
        break;
      case LayerKind::NotebookBatchNorm:
      case LayerKind::NotebookLayerNorm:
        if (shape_.size() != 2) mismatch(n, "needs a 2-D (N, D) input (put flatten before it)");
        p.in = p.out = last;
        break;
      case LayerKind::GroupNorm: {
        if (shape_.size() < 2) mismatch(n, "needs an input (N, C, *) with at least 2 dimensions");
        const int64_t G = o.sizes[0].first;
        p.in = p.out = shape_[1];
        p.groups = G;
        if (o.sizes.size() == 2 && o.sizes[1].first != p.in)
          mismatch(n, "expects " + std::to_string(o.sizes[1].first) + " channels");
        if (p.in % G != 0)
          mismatch(n, "needs channels divisible by its " + std::to_string(G) + " groups (" +
                          std::to_string(p.in) + " % " + std::to_string(G) + " = " +
                          std::to_string(p.in % G) + ")");
        p.gn.affine = o.affine;
        if (o.eps) p.gn.eps = *o.eps;
        break;
      }
      case LayerKind::InstanceNorm1d:
        // PyTorch takes a 2-D input as one unbatched (C, L) sample: in a model
        // that would normalize across the batch. A model gives (N, C, L).
        if (shape_.size() != 3)
          mismatch(n,
                   "needs a 3-D (N, C, L) input (PyTorch would take a 2-D (N, C) batch as one "
                   "(C, L) sample; give --input CxL, e.g. 28x28, or unflatten(C, L) before it)");
        if (shape_[2] < 2)
          mismatch(n, "needs more than 1 value per channel (L > 1) to normalize in training");
        p.in = p.out = shape_[1];
        if (!o.sizes.empty() && o.sizes[0].first != p.in)
          mismatch(n, "expects " + std::to_string(o.sizes[0].first) + " channels");
        p.inorm.affine = o.affine_given && o.affine;
        p.inorm.track_running_stats = o.track_given && o.track;
        p.inorm.momentum = o.momentum;
        if (o.eps) p.inorm.eps = *o.eps;
        break;
      case LayerKind::BatchNorm2d:
        // PyTorch's BatchNorm2d: "expected 4D input (got 2D input)".
        if (shape_.size() != 4)
          mismatch(n,
                   "needs a 4-D (N, C, H, W) input (unflatten(C, H, W) makes one; batchnorm "
                   "takes (N, C) and (N, C, L))");
        p.in = p.out = shape_[1];
        if (!o.sizes.empty() && o.sizes[0].first != p.in)
          mismatch(n, "expects " + std::to_string(o.sizes[0].first) + " channels");
        break;
      case LayerKind::InstanceNorm2d:
        // As instancenorm1d: a model gives a batch (N, C, H, W), never PyTorch's
        // unbatched (C, H, W).
        if (shape_.size() != 4)
          mismatch(n, "needs a 4-D (N, C, H, W) input (unflatten(C, H, W) makes one)");
        if (shape_[2] * shape_[3] < 2)
          mismatch(n, "needs more than 1 value per channel (H*W > 1) to normalize in training");
        p.in = p.out = shape_[1];
        if (!o.sizes.empty() && o.sizes[0].first != p.in)
          mismatch(n, "expects " + std::to_string(o.sizes[0].first) + " channels");
        p.inorm.affine = o.affine_given && o.affine;
        p.inorm.track_running_stats = o.track_given && o.track;
        p.inorm.momentum = o.momentum;
        if (o.eps) p.inorm.eps = *o.eps;
        break;
      case LayerKind::Unflatten: {
        if (shape_.size() < 2) mismatch(n, "needs an input with at least 2 dimensions");
        int64_t prod = 1;
        for (const auto& sz : o.sizes) {
          p.unflatten.push_back(sz.first);
          prod = prod <= kMaxFeatures ? prod * sz.first : prod;
        }
        if (prod != shape_[1])
          mismatch(n, "splits dim 1 into " + shape_str(p.unflatten) + " = " +
                          (prod <= kMaxFeatures ? std::to_string(prod) : "too many") + " features");
        Shape out{shape_[0]};
        out.insert(out.end(), p.unflatten.begin(), p.unflatten.end());
        out.insert(out.end(), shape_.begin() + 2, shape_.end());
        shape_ = out;
        break;
      }
      case LayerKind::Conv2d:
      case LayerKind::MaxPool2d:
      case LayerKind::AvgPool2d:
        spatial(n, o, p);
        break;
      case LayerKind::AdaptiveAvgPool2d:
        if (shape_.size() != 4) mismatch(n, "needs a 4-D (N, C, H, W) input");
        p.kernel = o.size_pairs[0];
        p.in = p.out = shape_[1];
        shape_ = {shape_[0], shape_[1], p.kernel.h, p.kernel.w};
        break;
    }
    p.out_shape = shape_;
    if (p.kind == LayerKind::Flatten || p.kind == LayerKind::Unflatten || p.in_shape != p.out_shape)
      producer_ = n.source + " at column " + std::to_string(p.column);
    return p;
  }

  // Conv2d, MaxPool2d, AvgPool2d: the options, the checks of nn.Conv2d and
  // of PyTorch's pooling shape check, and the output shape.
  void spatial(const Node& n, const Options& o, LayerPlan& p) {
    if (shape_.size() != 4)
      mismatch(n, "needs a 4-D (N, C, H, W) input (e.g. unflatten(1, 28, 28) before it)");
    const bool conv = p.kind == LayerKind::Conv2d;
    p.kernel = o.size_pairs[conv ? 1 : 0];
    p.in = shape_[1];
    const Pair s = o.stride.value_or(conv ? Pair(1) : p.kernel), pad = o.padding.value_or(Pair(0)),
               d = o.dilation.value_or(Pair(1));
    const Pair k = p.kernel;
    if (conv) {
      p.out = o.sizes[0].first;
      p.conv = {s, pad, d, o.groups, o.bias};
      const int64_t G = o.groups;
      if (p.in % G != 0 || p.out % G != 0)
        mismatch(n, "needs in_channels and out_channels divisible by groups=" + std::to_string(G) +
                        " (" + std::to_string(p.in) + " and " + std::to_string(p.out) + ")");
      const int64_t weights = p.out * (p.in / G) * k.h * k.w;
      if (weights > kMaxLayerWeights)
        fail_at(spec_, n.pos,
                n.source + " would hold " + std::to_string(weights) +
                    " weights, more than the limit " + std::to_string(kMaxLayerWeights));
      total_weights_ += weights;
    } else {
      p.out = p.in;
      p.pool = {s, pad, d, o.count_include_pad};
      if (pad.h > k.h / 2 || pad.w > k.w / 2)
        fail_at(spec_, n.pos,
                n.source + ": padding " + std::to_string(pad.h) + "x" + std::to_string(pad.w) +
                    " is more than half the kernel " + std::to_string(k.h) + "x" +
                    std::to_string(k.w) + " (PyTorch's rule)");
    }
    const int64_t eh = d.h * (k.h - 1) + 1, ew = d.w * (k.w - 1) + 1;
    const int64_t ph = shape_[2] + 2 * pad.h, pw = shape_[3] + 2 * pad.w;
    if (ph < eh || pw < ew)
      mismatch(n, "has a (dilated) kernel " + std::to_string(eh) + "x" + std::to_string(ew) +
                      " larger than its padded input " + std::to_string(ph) + "x" +
                      std::to_string(pw));
    shape_ = {shape_[0], conv ? p.out : p.in, (ph - eh) / s.h + 1, (pw - ew) / s.w + 1};
  }

  const std::string& spec_;
  Shape shape_;
  std::string producer_;
  int64_t total_weights_ = 0;
  std::vector<LayerPlan> plans_;
};

}  // namespace

std::vector<LayerPlan> plan_model(const std::string& spec_or_preset, const Shape& input_shape) {
  if (input_shape.size() < 2)
    fail("model input shape ", shape_str(input_shape),
         " must have a batch dimension and at least one feature dimension");
  for (int64_t d : input_shape)
    if (d <= 0 || d > kMaxFeatures)
      fail("model input shape ", shape_str(input_shape), " must have dimensions in 1..",
           kMaxFeatures);
  const std::string spec = resolve_spec(spec_or_preset);
  return Planner(spec, input_shape).plan(Parser(spec).parse());
}

}  // namespace normlab
