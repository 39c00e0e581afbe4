// `normlab study NAME`: small experiments from the normalization papers, each a
// list of short training runs ("units") whose results are cached on disk, then
// CSV files, plots, checked claims ("verdicts") and one static report.html.
//
//   StudyOptions o{.quick = true, .out_dir = "studies/bn-paper"};
//   StudyReport r = run_study("bn-paper", o, observer);
//
// Layout of OUT (each file written atomically):
//   runs/<key>/settings.txt  the unit's full settings (the key is their hash)
//   runs/<key>/result.csv    its recorded points; written last, when the unit
//                            finished, so a killed study reruns only the units
//                            without one
//   *.csv, *.png             the study's tables and figures
//   report.html              one page: settings, machine, time, figures, tables,
//                            verdicts, the paper's own figures where it gives them
// Errors (unknown study, bad option, missing data, gnuplot failing) are
// normlab::Error naming the study and the item.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "normlab/optim.hpp"

namespace normlab {

// One training run of a study.
struct StudyUnit {
  std::string label;  // what the report calls it, e.g. "BN, batch 4"
  std::string model;  // model spec (input: one flattened MNIST image, 784)
  std::string optimizer = "sgd";
  OptimizerOptions optim;
  int64_t batch_size = 60;
  int64_t steps = 1000;         // optimizer steps (epochs wrap over a reshuffled training set)
  int64_t eval_every = 100;     // record a point every this many steps (and at step 0)
  int64_t eval_images = 10000;  // first n test images for the test accuracy (0: all)
  uint64_t seed = 0;
  // > 0: every Linear weight redrawn from N(0, init_std^2) and biases set to 0
  // ("small Gaussian initial weights"); 0: PyTorch's init.
  double init_std = 0.0;
  // >= 0: the index of a layer in the model whose output's unit 0 is recorded
  // as the 15th/50th/85th percentiles over the first `probe_images` test images
  // (eval mode), at each recorded point; -1: none.
  int64_t probe_layer = -1;
  int64_t probe_images = 1000;
  // > 0: each step's batch is split into micro-batches of this many rows, each
  // with its own forward and backward (the norms see only its rows, as in
  // Ioffe 2017, sec. 4.3), their gradients summed (each scaled by rows/batch,
  // so the sum is the gradient of the batch's mean loss), then one optimizer
  // step. 0: the whole batch at once.
  int64_t micro_batch = 0;
  // > 0: at each recorded point also the test accuracy with the model in
  // training mode (batch statistics) over batches of this many test images;
  // the buffers (running statistics, step counters) are restored afterwards.
  int64_t train_mode_batch = 0;
  // At each recorded point after step 0 (and at step 0 from a forward and
  // backward of the first batch without an update): every ReLU's output norm
  // on the step's training batch (Frobenius / sqrt(rows): the root-mean-square
  // per-example norm; training mode, buffers restored) and the Frobenius norm
  // of each Linear weight's gradient of that step.
  bool layer_stats = false;

  // Every setting as "name=value" lines, and the normlab build; hashed into the cache key.
  std::string settings_text() const;
  std::string key() const;  // 16 hex digits
};

struct StudyPoint {
  int64_t step = 0;
  double test_accuracy = 0, test_loss = 0;
  double train_loss = 0;             // mean over the steps since the previous point (NaN at step 0)
  double p15 = 0, p50 = 0, p85 = 0;  // with probe_layer, else NaN
  double train_mode_accuracy = 0;    // with train_mode_batch, else NaN
};

// Per-layer norms at one recorded step (StudyUnit::layer_stats).
struct LayerStatsPoint {
  int64_t step = 0;
  std::vector<double> activation;  // per ReLU, in model order
  std::vector<double> gradient;    // per Linear weight, in model order
};

struct UnitResult {
  std::vector<StudyPoint> points;
  bool diverged = false;                // a NaN/inf loss or gradient stopped the run
  int64_t diverged_step = 0;            // the step that failed
  double seconds = 0;                   // training + recording time of the unit
  bool cached = false;                  // read from OUT/runs, not run now
  std::vector<LayerStatsPoint> layers;  // with layer_stats (OUT/runs/<key>/layers.csv)
};

struct StudyOptions {
  bool quick = false;  // the reduced setting (tests); otherwise the paper's
  int64_t seeds = 0;   // independent repetitions where a study uses them (0: the study's default)
  std::string out_dir;
  std::string data_dir;  // MNIST's four IDX files
  int threads = 0;       // total threads (0: OpenMP's default)
};

// What the observer hears while units run.
struct StudyProgress {
  int64_t done = 0, total = 0;  // units finished (cached ones count) of all
  std::string current;          // label of a running unit
  int64_t step = 0, steps = 0;  // its progress
  double seconds = 0;           // since the study started
  double eta_seconds = -1;      // estimate of the time left (-1: unknown yet)
};

class StudyObserver {
 public:
  virtual ~StudyObserver() = default;
  virtual void on_progress(const StudyProgress&) {}  // a few times a second at most
  virtual void on_note(const std::string&) {}        // a line for the log
};

// A checked claim: "LayerNorm at batch 4 within 1 point of batch 128" -> yes/no.
struct Verdict {
  std::string claim;
  bool holds = false;
  std::string detail;  // the numbers behind it
};

struct StudyReport {
  std::string name, title;
  std::vector<Verdict> verdicts;
  std::vector<std::string> files;  // written, relative to out_dir
  double seconds = 0;              // whole study, this invocation
  int64_t units = 0, units_cached = 0;
};

// Names of the studies, in the order `normlab study --help` lists them.
std::vector<std::string> study_names();
// One line each: what the study reproduces.
std::string study_summary(const std::string& name);

// Runs (or resumes) the study and writes its outputs. Throws Error for an
// unknown name (listing the known ones) or bad options.
StudyReport run_study(const std::string& name, const StudyOptions& options,
                      StudyObserver& observer);

// ---- the framework the studies are built from (src/study/study_runner.cpp)

// Runs every unit, reusing OUT/runs/<key>/result.csv where present; several
// units side by side (threads / units_per_worker each) when each gets fewer
// threads than the machine has.
std::vector<UnitResult> run_units(const std::vector<StudyUnit>& units, const StudyOptions& options,
                                  StudyObserver& observer);

// The cached result's text form (result.csv) and back.
std::string unit_result_csv(const UnitResult& r);
UnitResult parse_unit_result_csv(const std::string& text, const std::string& path);
// The per-layer norms' text form (layers.csv: step,kind,layer,value) and back.
std::string layer_stats_csv(const std::vector<LayerStatsPoint>& layers);
std::vector<LayerStatsPoint> parse_layer_stats_csv(const std::string& text,
                                                   const std::string& path);

// Under mpirun -np K (docs/distributed.md) run_units spreads a study's runs
// over the ranks; rank 0 gathers the results and alone writes the cache and the
// report, and the other ranks leave run_study / run_units by throwing this (not
// an Error: `normlab study` ends them quietly with exit 0).
struct StudyRankDone {};

}  // namespace normlab
