// normlab bench: the kernel timing table (median time, effective GB/s, % of a
// plain copy measured in the same run) without building the benchmark suite.
#include <omp.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "commands.hpp"
#include "normlab/error.hpp"
#include "normlab/kernel_bench.hpp"

namespace normlab::cli {
namespace {

struct BenchArgs {
  std::optional<int> threads;  // unset: the OpenMP default (OMP_NUM_THREADS or the core count)
  int repeats = 5;
  double min_time = 0.02;
  std::vector<std::string> shapes, kernels;
  std::string cache = "auto";
  bool csv = false;
};

bench::Kernel parse_kernel(const std::string& name) {
  for (bench::Kernel k : bench::all_kernels())
    if (name == bench::kernel_name(k)) return k;
  for (bench::Kernel k : bench::bn_family_kernels())
    if (name == bench::kernel_name(k)) return k;
  fail("--kernels: unknown kernel '", name,
       "' (expected layernorm, batchnorm, batchnorm_eval, rmsnorm, groupnorm, instancenorm, "
       "meanonlybn, batchrenorm or ghostbn)");
}

void run_bench(const BenchArgs& args) {
  if (args.threads && (*args.threads < 1 || *args.threads > 1024))
    fail("--threads must be between 1 and 1024, got ", *args.threads);
  if (args.repeats < 1 || args.repeats > 1000)
    fail("--repeats must be between 1 and 1000, got ", args.repeats);
  if (!(args.min_time > 0 && args.min_time <= 10))
    fail("--min-time must be in (0, 10] seconds, got ", args.min_time);
  bench::BenchConfig config;
  config.repeats = args.repeats;
  config.min_seconds = args.min_time;
  if (!args.shapes.empty()) {
    config.shapes.clear();
    for (const std::string& s : args.shapes) {
      try {
        config.shapes.push_back(bench::parse_shape(s));
      } catch (const Error& e) {
        fail("--shapes: ", e.what());
      }
    }
  }
  if (!args.kernels.empty()) {
    config.kernels.clear();
    for (const std::string& k : args.kernels) config.kernels.push_back(parse_kernel(k));
  }
  if (args.cache != "auto") {
    if (args.cache != "warm" && args.cache != "cold")
      fail("--cache: '", args.cache, "' is not warm, cold or auto");
    config.cache = bench::parse_cache(args.cache);
  }
  if (args.threads) omp_set_num_threads(*args.threads);
  const int threads = omp_get_max_threads();
  const auto rows = bench::run_kernel_bench(config);
  std::cout << (args.csv ? bench::format_csv(rows, threads) : bench::format_table(rows, threads));
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand(
      "bench", "Time the normalization kernels beside a plain copy of the same bytes");
  cmd->add_option("--threads", args->threads, "OpenMP threads (default: OMP_NUM_THREADS or all)");
  cmd->add_option("--repeats", args->repeats, "Samples per measurement; the median is shown")
      ->capture_default_str();
  cmd->add_option("--min-time", args->min_time, "Seconds per sample (calls are repeated)")
      ->capture_default_str();
  cmd->add_option("--shapes", args->shapes,
                  "Shapes NxD or NxCxL (default 128x512,4096x1024,16384x768)")
      ->delimiter(',');
  cmd->add_option("--kernels", args->kernels,
                  "Kernels: layernorm, batchnorm, batchnorm_eval, rmsnorm, groupnorm, instancenorm "
                  "(the default), and the BatchNorm variants meanonlybn, batchrenorm, ghostbn "
                  "(training passes)")
      ->delimiter(',');
  cmd->add_option("--cache", args->cache,
                  "warm (same buffers each call), cold (a ring 4x the L3: data from DRAM) or "
                  "auto (cold when x exceeds 1 MB)")
      ->capture_default_str();
  cmd->add_flag("--csv", args->csv, "Print CSV instead of the table");
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace normlab::cli
