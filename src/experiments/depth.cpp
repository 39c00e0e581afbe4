// The depth sweep. Its cost is the random initialisation of the fresh networks
// (about 610 M weights for one draw of five architectures at depths 0-29),
// so each network is generated and applied one layer at a time into a
// per-thread scratch buffer that stays in cache, and whole networks run in
// parallel (one per thread, largest first). Every (draw, architecture, depth)
// has its own counter-based stream, so the figures do not depend on the
// thread count or the order in which networks run.
#include "normlab/depth.hpp"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <numeric>

#include "kernels/vector_norm.hpp"
#include "normlab/error.hpp"
#include "normlab/kernels.hpp"
#include "normlab/model_spec.hpp"

namespace normlab {

const std::vector<std::string>& depth_architectures() {
  static const std::vector<std::string> archs = {"none", "bn-pre", "bn-post", "ln-pre", "ln-post"};
  return archs;
}

namespace {

int arch_index(const std::string& arch) {
  const auto& all = depth_architectures();
  const auto it = std::find(all.begin(), all.end(), arch);
  if (it == all.end()) {
    std::string names;
    for (const auto& a : all) {
      if (!names.empty()) names += ", ";
      names += a;
    }
    fail("unknown architecture '", arch, "'; expected one of: ", names);
  }
  return static_cast<int>(it - all.begin());
}

Shape batch_shape(const DepthConfig& c) {
  Shape s{c.batch};
  s.insert(s.end(), c.input.begin(), c.input.end());
  return s;
}

// Buffers one thread reuses for every network it evaluates.
struct Scratch {
  std::vector<float> weight, bias, act[2], mean, rstd, var, ones, zeros;
};

// Resizes without shrinking, so a thread's buffers settle at the largest network.
void reserve(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// The output norm of the network `plan` at initialisation, in training mode,
// drawing its weights from `rng` exactly as build_model's layers do (weight,
// then bias, layer by layer). Norm affine parameters start at 1 and 0.
double fresh_output_norm(const std::vector<LayerPlan>& plan, const Tensor<float>& x, Rng& rng,
                         Scratch& s) {
  int64_t widest = x.numel(), largest_weight = 0, channels = 0;
  for (const auto& p : plan) {
    widest = std::max(widest, shape_numel(p.out_shape));
    if (p.kind == LayerKind::Linear) largest_weight = std::max(largest_weight, p.in * p.out);
    channels = std::max({channels, p.in, p.out});
  }
  reserve(s.weight, largest_weight);
  reserve(s.bias, channels);
  reserve(s.act[0], widest);
  reserve(s.act[1], widest);
  for (auto* v : {&s.mean, &s.rstd, &s.var}) reserve(*v, widest);  // rows or channels
  if (static_cast<int64_t>(s.ones.size()) < channels) {
    s.ones.assign(static_cast<size_t>(channels), 1.0f);
    s.zeros.assign(static_cast<size_t>(channels), 0.0f);
  }

  const float* h = x.data();
  int cur = 0;
  for (const auto& p : plan) {
    float* y = s.act[cur].data();
    const int64_t n = shape_numel(p.in_shape);
    switch (p.kind) {
      case LayerKind::Flatten:
        continue;  // contiguous rows: same values, new shape
      case LayerKind::ReLU:
        relu_forward(y, h, n);
        break;
      case LayerKind::Linear: {
        // PyTorch's init (kaiming_uniform, a = sqrt(5)): U(+-1/sqrt(in)) for weight and bias.
        const double bound = 1.0 / std::sqrt(static_cast<double>(p.in));
        rng.fill_uniform(s.weight.data(), p.in * p.out, -bound, bound);
        if (p.bias) rng.fill_uniform(s.bias.data(), p.out, -bound, bound);
        linear_forward(y, h, s.weight.data(), p.bias ? s.bias.data() : nullptr, n / p.in, p.in,
                       p.out);
        break;
      }
      case LayerKind::BatchNorm: {
        const int64_t N = p.in_shape[0], C = p.in_shape[1];
        const int64_t L = p.in_shape.size() == 3 ? p.in_shape[2] : 1;
        if (N * L <= 1)
          fail(p.source, ": BatchNorm needs more than one value per channel in training mode, got ",
               "input shape ", shape_str(p.in_shape), " (use a batch of at least 2)");
        const bool affine = p.bn.affine;
        batchnorm_forward_train(y, s.mean.data(), s.rstd.data(), s.var.data(), h,
                                affine ? s.ones.data() : nullptr, affine ? s.zeros.data() : nullptr,
                                N, C, L, static_cast<float>(p.bn.eps));
        break;
      }
      case LayerKind::LayerNorm: {
        const bool w = p.ln.elementwise_affine, b = w && p.ln.bias;
        layernorm_forward(y, s.mean.data(), s.rstd.data(), h, w ? s.ones.data() : nullptr,
                          b ? s.zeros.data() : nullptr, n / p.in, p.in,
                          static_cast<float>(p.ln.eps));
        break;
      }
      default:
        fail("depth experiment: ", p.source,
             " is not one of the layers it evaluates (flatten, linear, batchnorm, layernorm, "
             "relu)");
    }
    h = y;
    cur ^= 1;
  }
  const int64_t n = shape_numel(plan.back().out_shape);
  return detail::norm2(h, n);  // kernels/vector_norm.hpp
}

// Sets OpenMP's thread count for a scope: the outer loop uses it, and nested
// regions (fill_uniform, oneDNN's sgemm) then run on one thread each.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(omp_get_max_threads()) {
    if (threads > 0) omp_set_num_threads(threads);
  }
  ~ThreadScope() { omp_set_num_threads(saved_); }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};

}  // namespace

void check_depth_config(const DepthConfig& c) {
  for (const auto& a : c.archs) arch_index(a);
  if (c.min_depth < 0 || c.min_depth > kMaxDepth)
    fail("min-depth must be in 0..", kMaxDepth, ", got ", c.min_depth);
  if (c.max_depth < 0 || c.max_depth > kMaxDepth)
    fail("max-depth must be in 0..", kMaxDepth, ", got ", c.max_depth);
  if (c.min_depth > c.max_depth)
    fail("min-depth ", c.min_depth, " is greater than max-depth ", c.max_depth);
  if (c.width < 1 || c.width > kMaxFeatures)
    fail("width must be in 1..", kMaxFeatures, ", got ", c.width);
  if (c.outputs < 1 || c.outputs > kMaxFeatures)
    fail("outputs must be in 1..", kMaxFeatures, ", got ", c.outputs);
  // BatchNorm in training mode needs two values per channel; one is PyTorch's error too.
  if (c.batch < 2 || c.batch > 65536) fail("batch must be in 2..65536, got ", c.batch);
  if (c.seeds < 1 || c.seeds > kMaxSeeds)
    fail("seeds must be in 1..", kMaxSeeds, ", got ", c.seeds);
  if (c.threads < 0 || c.threads > kMaxThreads)
    fail("threads must be in 1..", kMaxThreads, " (or 0 for OpenMP's default), got ", c.threads);
  if (c.input.empty()) fail("input shape must have at least one dimension");
  for (int64_t d : c.input)
    if (d < 1 || d > kMaxFeatures) fail("input shape ", shape_str(c.input), " has a bad dimension");
}

std::string depth_spec(const DepthConfig& c, const std::string& arch, int depth) {
  arch_index(arch);
  return preset_spec(arch + ":depth=" + std::to_string(depth) +
                     ",width=" + std::to_string(c.width) + ",out=" + std::to_string(c.outputs));
}

Tensor<float> depth_inputs(const DepthConfig& c, int k) {
  Tensor<float> x(batch_shape(c));
  Rng rng = Rng(c.seed).fork(static_cast<uint64_t>(k)).fork(0);
  rng.fill_normal(x.data(), x.numel());
  return x;
}

Rng depth_network_rng(const DepthConfig& c, const std::string& arch, int depth, int k) {
  return Rng(c.seed)
      .fork(static_cast<uint64_t>(k))
      .fork(1 + static_cast<uint64_t>(arch_index(arch)))
      .fork(static_cast<uint64_t>(depth));
}

double depth_output_norm(const DepthConfig& c, const std::string& arch, int depth, int k) {
  Scratch s;
  Rng rng = depth_network_rng(c, arch, depth, k);
  return fresh_output_norm(plan_model(depth_spec(c, arch, depth), batch_shape(c)),
                           depth_inputs(c, k), rng, s);
}

DepthResult run_depth(const DepthConfig& config) {
  check_depth_config(config);
  DepthResult r;
  r.config = config;
  if (r.config.archs.empty()) r.config.archs = depth_architectures();
  const DepthConfig& c = r.config;
  const int A = static_cast<int>(c.archs.size()), D = c.max_depth - c.min_depth + 1, K = c.seeds;

  const auto start = std::chrono::steady_clock::now();
  std::vector<std::vector<LayerPlan>> plans(static_cast<size_t>(A * D));
  for (int a = 0; a < A; ++a)
    for (int d = 0; d < D; ++d)
      plans[a * D + d] = plan_model(depth_spec(c, c.archs[a], c.min_depth + d), batch_shape(c));
  for (const auto& plan : plans)
    for (const auto& p : plan)
      if (p.kind == LayerKind::Linear) r.weights += K * double(p.in * p.out + (p.bias ? p.out : 0));

  // Draws run in blocks, so only a block's inputs are in memory at once. Within
  // a block, task t = (k, a, d); the deepest networks go first so the last ones
  // to finish are short.
  const int block = std::min(K, 64);
  std::vector<int64_t> order(static_cast<size_t>(block) * A * D);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [D](int64_t x, int64_t y) { return x % D > y % D; });
  std::vector<double> norms(static_cast<size_t>(K) * A * D);

  ThreadScope scope(c.threads);
  r.threads = omp_get_max_threads();
  std::exception_ptr error;
  std::vector<Tensor<float>> inputs(static_cast<size_t>(block));
  for (int k0 = 0; k0 < K && !error; k0 += block) {
    const int n = std::min(block, K - k0);
    for (int j = 0; j < n; ++j) inputs[j] = depth_inputs(c, k0 + j);
    const int64_t T = static_cast<int64_t>(n) * A * D;
#pragma omp parallel
    {
      Scratch s;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < static_cast<int64_t>(order.size()); ++i) {
        const int64_t t = order[static_cast<size_t>(i)];
        if (t >= T) continue;  // the last block may be short
        const int j = static_cast<int>(t / (A * D)), a = static_cast<int>(t / D % A);
        const int d = static_cast<int>(t % D);
        try {
          Rng rng = depth_network_rng(c, c.archs[a], c.min_depth + d, k0 + j);
          norms[static_cast<size_t>(k0) * A * D + static_cast<size_t>(t)] =
              fresh_output_norm(plans[a * D + d], inputs[j], rng, s);
        } catch (...) {
#pragma omp critical(normlab_depth_error)
          if (!error) error = std::current_exception();
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  for (int a = 0; a < A; ++a)
    for (int d = 0; d < D; ++d) {
      DepthPoint p;
      p.arch = c.archs[a];
      p.depth = c.min_depth + d;
      for (int k = 0; k < K; ++k)
        p.norms.push_back(norms[(static_cast<size_t>(k) * A + a) * D + d]);
      p.mean = std::accumulate(p.norms.begin(), p.norms.end(), 0.0) / K;
      double ss = 0;
      for (double v : p.norms) ss += (v - p.mean) * (v - p.mean);
      p.sd = K > 1 ? std::sqrt(ss / (K - 1)) : std::nan("");
      r.points.push_back(std::move(p));
    }
  return r;
}

}  // namespace normlab
