#include "normlab/kernel_bench.hpp"
#include "normlab/build_info.hpp"

#include <omp.h>

#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include "normlab/bn_family_kernels.hpp"
#include "normlab/error.hpp"
#include "normlab/groupnorm_kernels.hpp"
#include "normlab/kernels.hpp"
#include "normlab/rmsnorm.hpp"
#include "normlab/rng.hpp"

namespace normlab::bench {

namespace {
constexpr int64_t kMaxElems = int64_t{1} << 26;  // 256 MB per buffer, ~1.3 GB in all

int64_t parse_dim(const std::string& text, const std::string& part) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(part, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (part.empty() || used != part.size() || v <= 0)
    fail("shape '", text,
         "': expected positive integers NxD or NxCxL, e.g. 4096x1024 or 32x128x1024");
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
}  // namespace

BenchShape parse_shape(const std::string& text) {
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t x = text.find('x', at);
    parts.push_back(text.substr(at, x == std::string::npos ? std::string::npos : x - at));
    if (x == std::string::npos) break;
    at = x + 1;
  }
  if (parts.size() != 2 && parts.size() != 3)
    fail("shape '", text,
         "': expected positive integers NxD or NxCxL, e.g. 4096x1024 or 32x128x1024");
  BenchShape s{parse_dim(text, parts[0]), parse_dim(text, parts[1])};
  if (parts.size() == 3) s.L = parse_dim(text, parts[2]);
  if (s.N > kMaxElems / s.D || s.N * s.D > kMaxElems / s.L)
    fail("shape '", text, "': ", shape_text(s), " floats exceeds the limit of ", kMaxElems,
         " elements per buffer");
  return s;
}

std::string shape_text(BenchShape s) {
  return std::to_string(s.N) + "x" + std::to_string(s.D) +
         (s.L != 1 ? "x" + std::to_string(s.L) : std::string());
}

int64_t groupnorm_groups(int64_t C) {
  return std::gcd(C, int64_t{32});
}

std::vector<BenchShape> default_shapes() {
  return {{128, 512}, {4096, 1024}, {16384, 768}};
}

const char* cache_name(Cache c) {
  return c == Cache::warm ? "warm" : "cold";
}

Cache parse_cache(const std::string& text) {
  if (text == "warm") return Cache::warm;
  if (text == "cold") return Cache::cold;
  fail("cache '", text, "': expected warm or cold");
}

Cache default_cache(BenchShape s) {
  return s.elems() * static_cast<int64_t>(sizeof(float)) > (int64_t{1} << 20) ? Cache::cold
                                                                              : Cache::warm;
}

// The L3 our CPU shares, from sysfs ("32768K"); glibc's sysconf reports the
// whole package's L3 on some AMD parts (384 MB here for 32 MB per CCD).
int64_t l3_bytes() {
  std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
  std::string text;
  if (in >> text && !text.empty()) {
    const int64_t unit = text.back() == 'K' ? 1024 : text.back() == 'M' ? 1024 * 1024 : 1;
    try {
      const int64_t v = std::stoll(text) * unit;
      if (v > 0) return v;
    } catch (const std::exception&) {
    }
  }
  const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return v > 0 ? v : int64_t{32} << 20;
}

const char* kernel_name(Kernel k) {
  switch (k) {
    case Kernel::layernorm:
      return "layernorm";
    case Kernel::batchnorm_train:
      return "batchnorm";
    case Kernel::batchnorm_eval:
      return "batchnorm_eval";
    case Kernel::rmsnorm:
      return "rmsnorm";
    case Kernel::groupnorm:
      return "groupnorm";
    case Kernel::instancenorm:
      return "instancenorm";
    case Kernel::meanonly_bn:
      return "meanonlybn";
    case Kernel::batchrenorm:
      return "batchrenorm";
    case Kernel::ghost_bn:
      return "ghostbn";
  }
  return "?";
}

std::vector<Kernel> all_kernels() {
  return {Kernel::layernorm, Kernel::batchnorm_train, Kernel::batchnorm_eval,
          Kernel::rmsnorm,   Kernel::groupnorm,       Kernel::instancenorm};
}

std::vector<Kernel> bn_family_kernels() {
  return {Kernel::meanonly_bn, Kernel::batchrenorm, Kernel::ghost_bn};
}

const char* pass_name(Pass p) {
  return p == Pass::forward ? "fwd" : "fwd+bwd";
}

double pass_bytes(Pass p, BenchShape s) {
  const double floats = static_cast<double>(s.elems());
  return (p == Pass::forward ? 2.0 : 5.0) * floats * sizeof(float);
}

// Per row (N), per channel (D), per (sample, group) (N * G) or per (sample,
// channel) (instancenorm with L > 1: N * D).
int64_t NormBuffers::stats_size(BenchShape s) {
  return std::max({s.N, s.D, s.N * groupnorm_groups(s.D), s.L > 1 ? s.N * s.D : 0});
}

NormBuffers::NormBuffers(BenchShape s)
    : shape(s),
      x(s.elems()),
      y(s.elems()),
      dy(s.elems()),
      dx(s.elems()),
      gamma(s.D),
      beta(s.D),
      dgamma(s.D),
      dbeta(s.D),
      mean(stats_size(s)),
      rstd(stats_size(s)),
      var(std::max(stats_size(s), s.D)) {
  Rng rng(2024);
  rng.fill_normal(x.data(), s.elems());
  rng.fill_normal(dy.data(), s.elems());
  rng.fill_uniform(gamma.data(), s.D, 0.5, 1.5);
  rng.fill_uniform(beta.data(), s.D, -0.5, 0.5);
  rng.fill_uniform(var.data(), s.D, 0.5, 1.5);   // eval's running variance
  parallel_copy(y.data(), x.data(), s.elems());  // touch the outputs once
  parallel_copy(dx.data(), dy.data(), s.elems());
}

BufferRing::BufferRing(BenchShape shape, Cache cache) {
  sets_.emplace_back(shape);
  if (cache == Cache::warm) return;
  // Sized by the bytes the smallest call touches (a forward or a copy: x and y),
  // so that between two uses of a set at least 4 L3s of other data went by.
  const int64_t touched = 2 * shape.elems() * static_cast<int64_t>(sizeof(float));
  constexpr int64_t kMaxRingSets = 64;
  const int64_t sets =
      std::clamp<int64_t>((4 * l3_bytes() + touched - 1) / touched, 2, kMaxRingSets);
  while (static_cast<int64_t>(sets_.size()) < sets) sets_.push_back(sets_.front());
}

NormBuffers& BufferRing::next() {
  NormBuffers& b = sets_[at_];
  at_ = (at_ + 1) % sets_.size();
  return b;
}

namespace {

// The BatchNorm variants' training passes. Their per-channel extras (r, d,
// running statistics, Ghost BN's per-virtual-batch statistics) are small and
// shared by the ring's sets: they stay cached, as in a layer.
void run_bn_family_pass(Kernel k, Pass p, NormBuffers& b) {
  const int64_t N = b.shape.N, C = b.shape.D, L = b.shape.L;
  const float eps = 1e-5f;
  const bool bwd = p == Pass::forward_backward;
  if (k == Kernel::meanonly_bn) {
    meanonly_batchnorm_forward_train(b.y.data(), b.mean.data(), b.x.data(), b.beta.data(), N, C, L);
    if (bwd) meanonly_batchnorm_backward(true, b.dx.data(), b.dbeta.data(), b.dy.data(), N, C, L);
    return;
  }
  if (k == Kernel::batchrenorm) {
    thread_local std::vector<float> r, d, rm, rv;
    if (static_cast<int64_t>(r.size()) < C) {
      r.assign(static_cast<size_t>(C), 1.0f);
      d.assign(static_cast<size_t>(C), 0.0f);
      rm.assign(static_cast<size_t>(C), 0.0f);
      rv.assign(static_cast<size_t>(C), 1.0f);
    }
    batchrenorm_forward_train(b.y.data(), b.mean.data(), b.rstd.data(), b.var.data(), r.data(),
                              d.data(), b.x.data(), b.gamma.data(), b.beta.data(), rm.data(),
                              rv.data(), 3.0, 5.0, N, C, L, eps);
    if (bwd)
      batchrenorm_backward_train(b.dx.data(), b.dgamma.data(), b.dbeta.data(), b.dy.data(),
                                 b.x.data(), b.mean.data(), b.rstd.data(), r.data(), d.data(),
                                 b.gamma.data(), N, C, L);
    return;
  }
  constexpr int64_t K = 32;  // ghost_bn: virtual batches of K rows
  const int64_t G = (N + K - 1) / K;
  thread_local std::vector<float> mean, rstd, var;
  if (static_cast<int64_t>(mean.size()) < G * C) {
    mean.resize(static_cast<size_t>(G * C));
    rstd.resize(static_cast<size_t>(G * C));
    var.resize(static_cast<size_t>(G * C));
  }
  ghost_batchnorm_forward_train(b.y.data(), mean.data(), rstd.data(), var.data(), b.x.data(),
                                b.gamma.data(), b.beta.data(), N, C, L, K, eps);
  if (bwd)
    ghost_batchnorm_backward_train(b.dx.data(), b.dgamma.data(), b.dbeta.data(), b.dy.data(),
                                   b.x.data(), mean.data(), rstd.data(), b.gamma.data(), N, C, L, K,
                                   static_cast<const char*>(nullptr));
}

}  // namespace

void run_pass(Kernel k, Pass p, NormBuffers& b) {
  const int64_t N = b.shape.N, D = b.shape.D, L = b.shape.L;
  const float eps = 1e-5f;
  switch (k) {
    case Kernel::layernorm:
      // Rows of D * L; gamma and beta are read per channel's first L values
      // only when L = 1 (with L > 1 LayerNorm normalizes without affine here).
      layernorm_forward(b.y.data(), b.mean.data(), b.rstd.data(), b.x.data(),
                        L == 1 ? b.gamma.data() : nullptr, L == 1 ? b.beta.data() : nullptr, N,
                        D * L, eps);
      if (p == Pass::forward_backward)
        layernorm_backward(b.dx.data(), L == 1 ? b.dgamma.data() : nullptr,
                           L == 1 ? b.dbeta.data() : nullptr, b.dy.data(), b.x.data(),
                           b.mean.data(), b.rstd.data(), L == 1 ? b.gamma.data() : nullptr, N,
                           D * L);
      return;
    case Kernel::groupnorm:
    case Kernel::instancenorm: {
      // InstanceNorm on an NxD shape: PyTorch's reading of a 2-D input, one
      // unbatched sample (C, L) = (N, D), without affine (gamma has D values).
      const bool unbatched = k == Kernel::instancenorm && L == 1;
      const int64_t n = unbatched ? 1 : N, c = unbatched ? N : D, s = unbatched ? D : L;
      const int64_t G = k == Kernel::groupnorm ? groupnorm_groups(D) : c;
      const float* gamma = unbatched ? nullptr : b.gamma.data();
      const float* beta = unbatched ? nullptr : b.beta.data();
      groupnorm_forward(b.y.data(), b.mean.data(), b.rstd.data(),
                        k == Kernel::instancenorm ? b.var.data() : nullptr, b.x.data(), gamma, beta,
                        n, c, s, G, eps);
      if (p == Pass::forward_backward)
        groupnorm_backward(b.dx.data(), unbatched ? nullptr : b.dgamma.data(),
                           unbatched ? nullptr : b.dbeta.data(), b.dy.data(), b.x.data(),
                           b.mean.data(), b.rstd.data(), gamma, n, c, s, G);
      return;
    }
    case Kernel::batchnorm_train:
      batchnorm_forward_train(b.y.data(), b.mean.data(), b.rstd.data(), b.var.data(), b.x.data(),
                              b.gamma.data(), b.beta.data(), N, D, L, eps);
      if (p == Pass::forward_backward)
        batchnorm_backward_train(b.dx.data(), b.dgamma.data(), b.dbeta.data(), b.dy.data(),
                                 b.x.data(), b.mean.data(), b.rstd.data(), b.gamma.data(), N, D, L);
      return;
    case Kernel::batchnorm_eval:
      // mean holds zeros here and var stays the fixed running variance.
      batchnorm_forward_eval(b.y.data(), b.x.data(), b.mean.data(), b.var.data(), b.gamma.data(),
                             b.beta.data(), N, D, L, eps);
      if (p == Pass::forward_backward)
        batchnorm_backward_eval(b.dx.data(), b.dgamma.data(), b.dbeta.data(), b.dy.data(),
                                b.x.data(), b.mean.data(), b.rstd.data(), b.gamma.data(), N, D, L);
      return;
    case Kernel::rmsnorm:  // weight, no bias; forward reads x and writes y, as layernorm's
      // Rows of D * L, as layernorm's; the weight only when L = 1.
      rmsnorm_forward(b.y.data(), b.rstd.data(), b.x.data(), L == 1 ? b.gamma.data() : nullptr, N,
                      D * L, eps);
      if (p == Pass::forward_backward)
        rmsnorm_backward(b.dx.data(), L == 1 ? b.dgamma.data() : nullptr, b.dy.data(), b.x.data(),
                         b.rstd.data(), L == 1 ? b.gamma.data() : nullptr, N, D * L);
      return;
    case Kernel::meanonly_bn:
    case Kernel::batchrenorm:
    case Kernel::ghost_bn:
      run_bn_family_pass(k, p, b);
      return;
  }
}

void parallel_copy(float* dst, const float* src, int64_t n) {
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
    std::memcpy(dst + lo, src + lo, static_cast<size_t>(hi - lo) * sizeof(float));
  }
}

double median_seconds(const std::function<void()>& op, int repeats, double min_seconds) {
  if (repeats < 1) fail("median_seconds: repeats must be at least 1, got ", repeats);
  using Clock = std::chrono::steady_clock;
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    int64_t calls = 0;
    const auto start = Clock::now();
    double elapsed = 0;
    do {
      op();
      ++calls;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < min_seconds);
    samples.push_back(elapsed / static_cast<double>(calls));
  }
  return median(samples);
}

std::vector<BenchRow> run_kernel_bench(const BenchConfig& config) {
  if (config.repeats < 1) fail("kernel bench: repeats must be at least 1, got ", config.repeats);
  std::vector<BenchRow> out;
  for (BenchShape shape : config.shapes) {
    const Cache cache = config.cache.value_or(default_cache(shape));
    BufferRing ring(shape, cache);
    struct Op {
      std::string kernel, pass;
      double bytes;
      std::function<void()> run;
      std::vector<double> samples;
    };
    std::vector<Op> ops;
    ops.push_back({"copy",
                   "copy",
                   pass_bytes(Pass::forward, shape),
                   [&] {
                     NormBuffers& b = ring.next();
                     parallel_copy(b.y.data(), b.x.data(), shape.elems());
                   },
                   {}});
    for (Kernel k : config.kernels)
      for (Pass p : {Pass::forward, Pass::forward_backward})
        ops.push_back({kernel_name(k),
                       pass_name(p),
                       pass_bytes(p, shape),
                       [&ring, k, p] { run_pass(k, p, ring.next()); },
                       {}});
    for (size_t i = 0; i < ring.size(); ++i)
      for (Op& op : ops) op.run();  // warm up: page faults, thread pool, scratch
    for (int r = 0; r < config.repeats; ++r)
      for (Op& op : ops) op.samples.push_back(median_seconds(op.run, 1, config.min_seconds));
    const double copy_gbps = ops.front().bytes / median(ops.front().samples) / 1e9;
    for (Op& op : ops) {
      const double s = median(op.samples);
      out.push_back({op.kernel, op.pass, shape, cache, s, op.bytes / s / 1e9, copy_gbps});
    }
  }
  return out;
}

std::string format_table(const std::vector<BenchRow>& rows, int threads) {
  std::ostringstream os;
  char line[160];
  os << "normlab kernel bench: float, " << threads << " thread(s), kernels " << kernel_isa() << " ("
     << build_isa() << "); median times; GB/s counts the bytes each pass must move\n"
     << "(fwd: read x + write y; fwd+bwd: + read x, dy + write dx); copy = memcpy of x;\n"
     << "cache: warm = the same buffers every call, cold = a ring 4x the L3 (data from DRAM)\n";
  std::snprintf(line, sizeof line, "%-11s %-5s %-15s %-8s %12s %9s %9s\n", "shape", "cache",
                "kernel", "pass", "time", "GB/s", "% copy");
  os << line;
  for (const BenchRow& r : rows) {
    const double us = r.seconds * 1e6;
    char time[32];
    if (us < 1000)
      std::snprintf(time, sizeof time, "%.1f us", us);
    else
      std::snprintf(time, sizeof time, "%.3f ms", us / 1000);
    std::snprintf(line, sizeof line, "%-11s %-5s %-15s %-8s %12s %9.1f %8.0f%%\n",
                  shape_text(r.shape).c_str(), cache_name(r.cache), r.kernel.c_str(),
                  r.pass.c_str(), time, r.gbps, 100.0 * r.gbps / r.copy_gbps);
    os << line;
  }
  return os.str();
}

std::string format_csv(const std::vector<BenchRow>& rows, int threads) {
  std::ostringstream os;
  os << "threads,N,D,cache,kernel,pass,seconds,gbps,copy_gbps,pct_copy,L,isa\n";
  const std::string isa = kernel_isa();
  for (const BenchRow& r : rows)
    os << threads << ',' << r.shape.N << ',' << r.shape.D << ',' << cache_name(r.cache) << ','
       << r.kernel << ',' << r.pass << ',' << r.seconds << ',' << r.gbps << ',' << r.copy_gbps
       << ',' << 100.0 * r.gbps / r.copy_gbps << ',' << r.shape.L << ',' << isa << '\n';
  return os.str();
}

}  // namespace normlab::bench
