// normlab depth: the seed-000 experiment (output norm of fresh MLPs against depth).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "commands.hpp"
#include "normlab/atomic_file.hpp"
#include "normlab/depth.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"

namespace normlab::cli {
namespace {

struct DepthArgs {
  DepthConfig config;
  std::vector<std::string> archs;
  std::string out_dir, reference;
  int64_t min_depth = 0, max_depth = 29, seeds = 1, threads = 0;
};

// Flag values are checked here, where the flag's name is known.
void check_range(const char* flag, int64_t v, int64_t lo, int64_t hi, const char* what = "") {
  if (v < lo || v > hi) fail(flag, " ", v, ": must be between ", lo, " and ", hi, what);
}

void check_flags(DepthArgs& a) {
  const auto& known = depth_architectures();
  for (const auto& arch : a.archs)
    if (std::find(known.begin(), known.end(), arch) == known.end()) {
      std::string names;
      for (const auto& k : known) {
        if (!names.empty()) names += ", ";
        names += k;
      }
      fail("--arch ", arch, ": unknown architecture; expected one of: ", names);
    }
  check_range("--min-depth", a.min_depth, 0, kMaxDepth);
  check_range("--max-depth", a.max_depth, 0, kMaxDepth);
  if (a.min_depth > a.max_depth)
    fail("--min-depth ", a.min_depth, " is greater than --max-depth ", a.max_depth);
  check_range("--seeds", a.seeds, 1, kMaxSeeds);
  check_range("--threads", a.threads, 0, kMaxThreads, " (0: all cores)");
  // A width x width layer must stay within one layer's weight limit (2^28).
  check_range("--width", a.config.width, 1, 16384,
              " (a width x width layer holds at most 2^28 weights)");
  check_range("--outputs", a.config.outputs, 1, kMaxFeatures);
  check_range("--batch", a.config.batch, 2, 65536,
              " (BatchNorm in training mode needs 2 values per channel)");
  DepthConfig& c = a.config;
  c.archs = a.archs;
  c.min_depth = static_cast<int>(a.min_depth);
  c.max_depth = static_cast<int>(a.max_depth);
  c.seeds = static_cast<int>(a.seeds);
  c.threads = static_cast<int>(a.threads);
}

void run(DepthArgs& a) {
  check_flags(a);
  // Read the reference before the sweep, so a bad path fails fast.
  std::vector<DepthRow> reference;
  if (!a.reference.empty()) {
    if (!std::filesystem::is_regular_file(a.reference))
      fail("--reference ", a.reference,
           ": no such file (PyTorch's figures are in "
           "../shared/reference/depth_torch.csv)");
    reference = read_depth_csv(a.reference);
  }
  if (!a.out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(a.out_dir, ec);
    if (ec || !std::filesystem::is_directory(a.out_dir))
      fail("--out ", a.out_dir, ": cannot create the directory",
           ec ? ": " + ec.message() : std::string(" (a file of that name exists)"));
  }

  const DepthResult r = run_depth(a.config);
  std::cout << depth_table(r) << "\n";
  std::printf(
      "%zu architectures x %d depths x %d draw%s: %zu fresh networks, %.0f M random weights, "
      "%.3f s on %d thread%s\n",
      r.config.archs.size(), r.config.max_depth - r.config.min_depth + 1, r.config.seeds,
      r.config.seeds > 1 ? "s" : "", r.points.size() * r.config.seeds, r.weights / 1e6, r.seconds,
      r.threads, r.threads > 1 ? "s" : "");

  if (!a.out_dir.empty()) {
    const std::string csv = a.out_dir + "/depth.csv", png = a.out_dir + "/depth.png";
    write_file_atomic(csv, depth_csv(r));
    std::cout << "wrote " << csv << "\n";
    plot_depth(r, png);
    std::cout << "wrote " << png << "\n";
  }
  if (!a.reference.empty()) {
    const DepthAgreement g = compare_depth(depth_rows(r), reference);
    std::cout << "\nAgreement with " << a.reference << ":\n" << g.report;
    if (!g.ok) fail("the depth results disagree with ", a.reference, " (see the table above)");
    std::cout << "all checks pass\n";
  }
}

}  // namespace

void add_depth_command(CLI::App& app) {
  auto a = std::make_shared<DepthArgs>();
  auto* cmd = app.add_subcommand(
      "depth", "Output norm of freshly initialised MLPs against depth (the seed-000 experiment)");
  cmd->add_option("--arch", a->archs,
                  "architectures to run (default: all): none, bn-pre, bn-post, ln-pre, ln-post")
      ->delimiter(',');
  cmd->add_option("--min-depth", a->min_depth, "smallest number of hidden blocks")
      ->capture_default_str();
  cmd->add_option("--max-depth", a->max_depth, "largest number of hidden blocks")
      ->capture_default_str();
  cmd->add_option("--seeds", a->seeds, "independent draws; several give mean and sd")
      ->capture_default_str();
  cmd->add_option("--seed", a->config.seed, "base seed (draw k uses its stream k)")
      ->capture_default_str();
  cmd->add_option("--width", a->config.width, "hidden width")->capture_default_str();
  cmd->add_option("--batch", a->config.batch, "inputs per draw")->capture_default_str();
  cmd->add_option("--outputs", a->config.outputs, "output features")->capture_default_str();
  cmd->add_option("--threads", a->threads, "threads (0: OpenMP's default)")->capture_default_str();
  cmd->add_option("--out", a->out_dir, "directory for depth.csv and depth.png");
  cmd->add_option("--reference", a->reference,
                  "compare with a reference CSV (e.g. PyTorch's depth_torch.csv); exit 2 if they "
                  "disagree");
  cmd->callback([a] { run(*a); });
}

}  // namespace normlab::cli
