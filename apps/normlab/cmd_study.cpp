// normlab study NAME: the papers' small experiments (src/study/), cached runs,
// one progress line, CSV + PNG + report.html, and the checked claims.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "commands.hpp"
#include "data_flags.hpp"
#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/study.hpp"

namespace normlab::cli {
namespace {

struct StudyArgs {
  std::string name, out_dir, progress = "auto";
  bool quick = false;
  int64_t seeds = 0, threads = 0;  // seeds 0: the study's default (compare: 3, others: 1)
  CLI::Option* seeds_option = nullptr;
  DataFlags data;
};

std::string clock_text(double s) {
  char buf[32];
  const long t = static_cast<long>(s + 0.5);
  std::snprintf(buf, sizeof buf, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

class Console : public StudyObserver {
 public:
  explicit Console(bool live) : live_(live) {}
  void on_progress(const StudyProgress& p) override {
    if (!live_) return;
    std::fprintf(stderr, "\r\033[Kruns %lld/%lld  %s %lld/%lld  %s elapsed  %s left",
                 static_cast<long long>(p.done), static_cast<long long>(p.total), p.current.c_str(),
                 static_cast<long long>(p.step), static_cast<long long>(p.steps),
                 clock_text(p.seconds).c_str(),
                 p.eta_seconds < 0 ? "?" : clock_text(p.eta_seconds).c_str());
    drawn_ = true;
  }
  void on_note(const std::string& text) override {
    clear();
    std::cout << text << "\n" << std::flush;
  }
  void clear() {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  bool live_, drawn_ = false;
};

void run(StudyArgs& a) {
  if (a.seeds_option->count() > 0 && (a.seeds < 1 || a.seeds > 100))
    fail("--seeds ", a.seeds, ": must be between 1 and 100");
  if (a.progress != "auto" && a.progress != "always" && a.progress != "never")
    fail("--progress ", a.progress, ": expected auto, always or never");
  set_threads(a.threads);
  StudyOptions o;
  o.quick = a.quick;
  o.seeds = a.seeds;
  o.out_dir = a.out_dir.empty() ? "studies/" + a.name : a.out_dir;
  o.data_dir = resolve_data_dir(a.data);
  o.threads = static_cast<int>(a.threads);
  // Under mpirun the runs are spread over the ranks; rank 0 reports and writes
  // (docs/distributed.md), the others work quietly.
  if (world().rank() != 0) {
    StudyObserver quiet;
    try {
      run_study(a.name, o, quiet);
    } catch (const StudyRankDone&) {
    }
    return;
  }
  Console console(a.progress == "always" || (a.progress == "auto" && isatty(2)));
  std::cout << "study " << a.name << (a.quick ? " (--quick)" : "") << ": " << study_summary(a.name)
            << "\n"
            << std::flush;
  const StudyReport r = run_study(a.name, o, console);
  console.clear();
  std::cout << "\nVerdicts:\n";
  for (const auto& v : r.verdicts)
    std::cout << "  " << v.claim << ": " << (v.holds ? "yes" : "no") << "  (" << v.detail << ")\n";
  std::cout << "\n";
  for (const auto& f : r.files) std::cout << "wrote " << o.out_dir << "/" << f << "\n";
  std::printf("study %s: %lld runs (%lld cached), total time %.1f s\n", a.name.c_str(),
              static_cast<long long>(r.units), static_cast<long long>(r.units_cached), r.seconds);
}

}  // namespace

void add_study_command(CLI::App& app) {
  auto a = std::make_shared<StudyArgs>();
  std::string names;
  for (const auto& n : study_names()) names += "\n  " + n + ": " + study_summary(n);
  auto* cmd = app.add_subcommand(
      "study",
      "Reproduce a normalization paper's small experiment: runs, figures, report.html" + names);
  cmd->add_option("name", a->name, "which study")->required();
  cmd->add_flag("--quick", a->quick, "reduced setting (for tests); default: the paper's");
  a->seeds_option = cmd->add_option(
      "--seeds", a->seeds, "independent repetitions (default: 3 for compare, 1 for the others)");
  cmd->add_option("--out", a->out_dir, "output directory (default: studies/NAME)");
  cmd->add_option("--threads", a->threads,
                  "total threads (0: all cores); runs go side by side, one thread each, when "
                  "there are several")
      ->capture_default_str();
  cmd->add_option("--progress", a->progress, "progress line: auto (on a terminal), always, never")
      ->capture_default_str();
  add_data_flags(cmd, a->data);
  cmd->callback([a] { run(*a); });
}

}  // namespace normlab::cli
