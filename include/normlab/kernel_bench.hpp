// Timing of the normalization kernels next to a plain copy of the same bytes,
// shared by `normlab bench` and the Google Benchmark suite (bench/). The
// library only measures and formats; the callers print.
//
// Effective bandwidth counts the bytes a kernel must move at least:
//   forward  = read x + write y                    (2 * N * D floats)
//   backward = read x, dy + write dx               (3 * N * D floats)
//   forward+backward = the sum                     (5 * N * D floats)
// The copy baseline reads N*D floats and writes N*D floats, split across the
// same OpenMP threads. "% of copy" = kernel GB/s / copy GB/s.
//
// Cache state. "warm": every call reuses the same buffers, so at 4096 x 1024
// (16 MB per buffer) x and y stay in a 32 MB L3 and a copy runs at cache
// speed (~100-170 GB/s on 2 cores here). "cold": calls cycle through a ring of
// buffer sets four times the size of the L3, so each call finds its data in
// DRAM, as a layer does whose activations were written a whole network ago;
// the copy then runs at memory speed (~35-45 GB/s here). Kernels and copy use
// the same ring, so "% of copy" compares like with like.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "normlab/aligned_vector.hpp"

namespace normlab::bench {

struct BenchShape {
  int64_t N = 0, D = 0;  // rows, features (LayerNorm) or channels (BatchNorm)
  int64_t L = 1;         // length per channel: an NxCxL shape is (N, C = D, L)
  int64_t elems() const { return N * D * L; }
};

// "4096x1024" -> {4096, 1024}; "32x128x1024" -> {32, 128, 1024} (N, C, L): LayerNorm
// then normalizes rows of C * L, BatchNorm channels over N * L, GroupNorm groups of
// C / G channels x L, InstanceNorm each (sample, channel). Throws normlab::Error
// naming the text on anything else (all positive, at most 2^26 floats per buffer).
BenchShape parse_shape(const std::string& text);
std::string shape_text(BenchShape s);      // "4096x1024", "32x128x1024"
std::vector<BenchShape> default_shapes();  // 128x512, 4096x1024, 16384x768

// groupnorm: G = gcd(C, 32) groups (32 as in PyTorch's usual GroupNorm(32, C));
// instancenorm: the training forward of InstanceNorm1d (G = C); on an NxD shape
// PyTorch's reading of a 2-D input: one unbatched (C, L) = (N, D), no affine.
enum class Kernel {
  layernorm,
  batchnorm_train,
  batchnorm_eval,
  rmsnorm,
  groupnorm,
  instancenorm,
  // BatchNorm variants (normlab/bn_family.hpp), training passes; only with --kernels.
  meanonly_bn,  // "meanonlybn"
  batchrenorm,  // "batchrenorm": rmax 3, dmax 5, running statistics (0, 1)
  ghost_bn,     // "ghostbn": virtual batches of 32 rows, BatchNorm's kernels on each
};
// "layernorm", "batchnorm", "batchnorm_eval", "rmsnorm", "groupnorm", "instancenorm", ...
const char* kernel_name(Kernel k);
int64_t groupnorm_groups(int64_t C);  // the G the groupnorm kernel is timed with
// The default set: layernorm, batchnorm, batchnorm_eval, rmsnorm, groupnorm, instancenorm
std::vector<Kernel> all_kernels();
// The BatchNorm variants, benchmarked when named in --kernels.
std::vector<Kernel> bn_family_kernels();

enum class Pass { forward, forward_backward };
const char* pass_name(Pass p);  // "fwd", "fwd+bwd"
double pass_bytes(Pass p, BenchShape s);

enum class Cache { warm, cold };
const char* cache_name(Cache c);             // "warm", "cold"
Cache parse_cache(const std::string& text);  // throws normlab::Error naming the text
// cold for shapes whose x does not fit the 1 MB L2 of a core (4096x1024,
// 16384x768: "memory-bound" in issue 4), warm for smaller (128x512, an MLP batch).
Cache default_cache(BenchShape s);
int64_t l3_bytes();  // the CPU's L3 size (sysconf), 32 MB if unknown

// Input, output, gradient and parameter buffers for one shape, filled once.
struct NormBuffers {
  explicit NormBuffers(BenchShape shape);
  NormBuffers(const NormBuffers& other) = default;  // a ring's further sets copy the first
  BenchShape shape;
  AlignedVector<float> x, y, dy, dx;              // (N, D), 64-byte aligned as Tensors are
  std::vector<float> gamma, beta, dgamma, dbeta;  // (D)
  std::vector<float> mean, rstd, var;  // per row, channel or (sample, group): stats_size()
  static int64_t stats_size(BenchShape s);
};

// The buffer sets the calls cycle through: one for warm, enough for cold that
// the ring is at least four times the L3 (at least two sets).
class BufferRing {
 public:
  BufferRing(BenchShape shape, Cache cache);
  NormBuffers& next();  // the set for the next call
  size_t size() const { return sets_.size(); }

 private:
  std::vector<NormBuffers> sets_;
  size_t at_ = 0;
};

// One forward (and backward) call of kernel k on b, affine on, dx wanted.
void run_pass(Kernel k, Pass p, NormBuffers& b);

// n floats from src to dst, each OpenMP thread memcpy'ing its contiguous slice.
void parallel_copy(float* dst, const float* src, int64_t n);

// Median over `repeats` samples of the time of one call of op; a sample runs
// op back to back for at least min_seconds (at least once) and divides.
double median_seconds(const std::function<void()>& op, int repeats, double min_seconds);

struct BenchRow {
  std::string kernel, pass;  // kernel "copy" is the baseline (pass "copy")
  BenchShape shape;
  Cache cache = Cache::warm;
  double seconds = 0;    // median time of one call
  double gbps = 0;       // effective GB/s (1e9 bytes)
  double copy_gbps = 0;  // the copy's GB/s at this shape, measured in the same run
};

struct BenchConfig {
  std::vector<BenchShape> shapes = default_shapes();
  std::vector<Kernel> kernels = all_kernels();
  int repeats = 5;
  double min_seconds = 0.02;
  std::optional<Cache> cache;  // unset: default_cache(shape) per shape
};

// For each shape: the copy and every kernel pass, sampled in turn (interleaved,
// so a noisy neighbour hits all alike), medians reported. Uses the current
// OpenMP thread count.
std::vector<BenchRow> run_kernel_bench(const BenchConfig& config);

std::string format_table(const std::vector<BenchRow>& rows, int threads);
std::string format_csv(const std::vector<BenchRow>& rows, int threads);

}  // namespace normlab::bench
