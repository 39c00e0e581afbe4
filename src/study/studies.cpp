// The studies: each turns its options into units, and the units' results into
// CSV files, plots, verdicts and a report page (study_report.cpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "normlab/atomic_file.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/plot.hpp"
#include "study/study_report.hpp"

namespace normlab {
namespace {

using Clock = std::chrono::steady_clock;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string pct(double acc) {
  return fmt("%.2f", 100.0 * acc);
}

struct Built {
  std::vector<StudyUnit> units;
};

double final_accuracy(const UnitResult& r) {
  return r.diverged || r.points.empty() ? std::nan("") : r.points.back().test_accuracy;
}

// Accuracy at the recorded point nearest to `step`.
double accuracy_at(const UnitResult& r, int64_t step) {
  double best = std::nan("");
  int64_t gap = INT64_MAX;
  for (const auto& p : r.points)
    if (std::llabs(p.step - step) < gap) {
      gap = std::llabs(p.step - step);
      best = p.test_accuracy;
    }
  return best;
}

Series accuracy_series(const std::string& label, const UnitResult& r) {
  Series s;
  s.label = label;
  for (const auto& p : r.points) {
    s.x.push_back(static_cast<double>(p.step));
    s.y.push_back(p.test_accuracy);
  }
  return s;
}

std::string curves_csv(const std::vector<StudyUnit>& units, const std::vector<UnitResult>& rs) {
  std::string s =
      "run,seed,batch_size,step,test_accuracy,test_loss,train_loss,p15,p50,p85,"
      "train_mode_accuracy\n";
  for (size_t i = 0; i < units.size(); ++i)
    for (const auto& p : rs[i].points)
      s += "\"" + units[i].label + "\"," + std::to_string(units[i].seed) + "," +
           std::to_string(units[i].batch_size) + "," + std::to_string(p.step) + "," +
           fmt("%.6g", p.test_accuracy) + "," + fmt("%.6g", p.test_loss) + "," +
           fmt("%.6g", p.train_loss) + "," + fmt("%.6g", p.p15) + "," + fmt("%.6g", p.p50) + "," +
           fmt("%.6g", p.p85) + "," + fmt("%.6g", p.train_mode_accuracy) + "\n";
  return s;
}

// Every study's first steps: run its units (cached ones are read back), count
// them and their seconds for the page, and write curves.csv (one row per
// recorded point of every run).
std::vector<UnitResult> run_and_write_curves(const std::vector<StudyUnit>& units,
                                             const StudyOptions& o, StudyObserver& obs,
                                             StudyReport& rep, ReportPage& page) {
  std::vector<UnitResult> rs = run_units(units, o, obs);
  rep.units = static_cast<int64_t>(units.size());
  for (const auto& r : rs) {
    rep.units_cached += r.cached;
    page.unit_seconds += r.seconds;
  }
  write_file_atomic(o.out_dir + "/curves.csv", curves_csv(units, rs));
  rep.files.push_back("curves.csv");
  return rs;
}

std::string optim_text(const StudyUnit& u) {
  std::string s = u.optimizer;
  if (u.optim.lr) s += ", lr " + fmt("%g", *u.optim.lr);
  return s;
}

// ------------------------------------------------------------------ bn-paper

// Ioffe & Szegedy 2015, sec. 4.1 / Figure 1.
constexpr const char* kBnPaperNone =
    "linear(100), sigmoid, linear(100), sigmoid, linear(100), sigmoid, linear(10)";
constexpr const char* kBnPaperBn =
    "linear(100, bias=false), bn, sigmoid, linear(100, bias=false), bn, sigmoid, "
    "linear(100, bias=false), bn, sigmoid, linear(10)";
constexpr double kBnPaperLr = 0.5;
constexpr double kBnPaperInitStd = 0.1;

// How far the probed input's distribution moves after the first 10% of
// training: the largest change of its median and of its 15-85 spread against
// their final values, in units of the final spread.
double drift(const UnitResult& r, int64_t steps) {
  if (r.points.empty()) return std::nan("");
  const StudyPoint& end = r.points.back();
  const double spread_end = end.p85 - end.p15;
  double d = 0;
  for (const auto& p : r.points) {
    if (p.step < steps / 10) continue;
    d = std::max(d, std::fabs(p.p50 - end.p50) + std::fabs((p.p85 - p.p15) - spread_end));
  }
  return spread_end > 0 ? d / spread_end : std::nan("");
}

StudyReport bn_paper(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const int64_t steps = o.quick ? 3000 : 50000;
  const int64_t every = o.quick ? 250 : 500;
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (int bn = 0; bn < 2; ++bn) {
      StudyUnit u;
      u.label = std::string(bn ? "with BN" : "without BN") +
                (o.seeds > 1 ? ", seed " + std::to_string(seed) : "");
      u.model = bn ? kBnPaperBn : kBnPaperNone;
      u.optimizer = "sgd";
      u.optim.lr = kBnPaperLr;
      u.batch_size = 60;
      u.steps = steps;
      u.eval_every = every;
      u.eval_images = o.quick ? 2000 : 10000;
      u.seed = static_cast<uint64_t>(seed);
      u.init_std = kBnPaperInitStd;
      u.probe_layer = bn ? 7 : 4;  // the input of the last hidden layer's sigmoid
      u.probe_images = 1000;
      units.push_back(u);
    }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);
  {
    std::vector<Series> ss;
    for (size_t i = 0; i < units.size(); ++i) ss.push_back(accuracy_series(units[i].label, rs[i]));
    PlotSpec spec{"(a) Test accuracy, 784-100-100-100-10 sigmoid MLP, batch 60", "training steps",
                  "test accuracy"};
    plot_lines(o.out_dir + "/accuracy.png", spec, ss);
    rep.files.push_back("accuracy.png");
  }
  for (int bn = 0; bn < 2; ++bn) {
    const UnitResult& r = rs[static_cast<size_t>(bn)];
    std::vector<Series> ss(3);
    const char* names[] = {"15th percentile", "50th percentile", "85th percentile"};
    for (int k = 0; k < 3; ++k) {
      ss[k].label = names[k];
      for (const auto& p : r.points) {
        if (p.step == 0) continue;
        ss[k].x.push_back(static_cast<double>(p.step));
        ss[k].y.push_back(k == 0 ? p.p15 : k == 1 ? p.p50 : p.p85);
      }
    }
    PlotSpec spec{std::string(bn ? "(c) With BN" : "(b) Without BN") +
                      ": input of sigmoid unit 0 of the last hidden layer (1000 test images)",
                  "training steps", "sigmoid input"};
    const std::string file = bn ? "sigmoid_input_bn.png" : "sigmoid_input_none.png";
    plot_lines(o.out_dir + "/" + file, spec, ss);
    rep.files.push_back(file);
  }

  const UnitResult &none = rs[0], &bn = rs[1];
  const int64_t early = steps / 10;
  const double a_none = accuracy_at(none, early), a_bn = accuracy_at(bn, early);
  rep.verdicts.push_back({"With BN, higher test accuracy sooner (at 10% of training)",
                          a_bn > a_none,
                          "step " + std::to_string(early) + ": " + pct(a_bn) + "% with BN, " +
                              pct(a_none) + "% without"});
  const double f_none = final_accuracy(none), f_bn = final_accuracy(bn);
  rep.verdicts.push_back({"With BN, higher final test accuracy", f_bn > f_none,
                          "step " + std::to_string(steps) + ": " + pct(f_bn) + "% with BN, " +
                              pct(f_none) + "% without"});
  const double d_none = drift(none, steps), d_bn = drift(bn, steps);
  rep.verdicts.push_back(
      {"The sigmoid's input distribution stays more stable with BN than without", d_bn < d_none,
       "drift after 10% of training (largest change of median + 15-85 spread, in final spreads): " +
           fmt("%.3f", d_bn) + " with BN, " + fmt("%.3f", d_none) + " without"});

  page.intro =
      "Ioffe &amp; Szegedy (2015), <i>Batch Normalization</i>, section 4.1 and Figure 1: MNIST, "
      "a network of three fully-connected hidden layers of 100 sigmoid units and a 10-way "
      "softmax, trained with cross-entropy on mini-batches of 60 for 50,000 steps, with and "
      "without BatchNorm before each sigmoid. The weights start small and Gaussian; the paper "
      "names no optimizer, so this study uses plain SGD at a fixed learning rate (below). "
      "The percentiles are those of the input of sigmoid unit 0 of the last hidden layer over "
      "the first 1000 test images, computed in eval mode (BN with its running statistics).";
  page.settings = {
      {"model without BN", kBnPaperNone},
      {"model with BN", kBnPaperBn},
      {"initial weights", "Linear weights N(0, " + fmt("%g", kBnPaperInitStd) +
                              "&sup2;), biases 0; BN gamma 1, beta 0"},
      {"optimizer", optim_text(units[0]) + " (no momentum, no weight decay)"},
      {"batch size, steps", "60, " + std::to_string(steps)},
      {"test accuracy", "every " + std::to_string(every) + " steps on the first " +
                            std::to_string(units[0].eval_images) + " test images"},
      {"seeds", std::to_string(o.seeds)},
  };
  page.figures = {{"accuracy.png", "(a) Test accuracy against training steps."},
                  {"sigmoid_input_none.png",
                   "(b) Without BN: 15th, 50th and 85th percentiles of the sigmoid's input."},
                  {"sigmoid_input_bn.png", "(c) With BN: the same percentiles."}};
  std::string t = "<table><tr><th>run</th><th>test accuracy at step " + std::to_string(early) +
                  "</th><th>final test accuracy</th><th>seconds</th></tr>";
  for (size_t i = 0; i < units.size(); ++i)
    t += "<tr><td>" + units[i].label + "</td><td>" + pct(accuracy_at(rs[i], early)) + "%</td><td>" +
         pct(final_accuracy(rs[i])) + "%</td><td>" + fmt("%.1f", rs[i].seconds) + "</td></tr>";
  t += "</table>";
  page.tables.push_back({"Accuracy", t});
  page.paper =
      "The paper reports Figure 1 as curves only, no numbers: (a) the network with BN reaches "
      "higher test accuracy, sooner, than the one without; (b, c) without BN the distribution "
      "of the sigmoid's input (its 15/50/85th percentiles) changes over training, in its mean "
      "and its spread, while with BN it stays much more stable.";
  return rep;
}

// ------------------------------------------------------------------ batch-size

struct NormChoice {
  std::string name, item;  // item: the spec item after each hidden Linear ("" : none)
};

std::vector<NormChoice> batch_size_norms() {
  return {{"none", ""},
          {"BatchNorm", "batchnorm"},
          {"LayerNorm", "layernorm"},
          {"RMSNorm", "rmsnorm"},
          {"GroupNorm(8)", "groupnorm(8)"},
          {"Batch Renorm", "batchrenorm"},
          {"Ghost BN (32)", "ghostbatchnorm(virtual_batch_size=32)"}};
}

StudyReport batch_size(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const int64_t width = o.quick ? 128 : 1000;
  const int64_t samples = o.quick ? 16000 : 60000;  // training samples seen per run
  const std::vector<int64_t> batches = {128, 4};
  const auto norms = batch_size_norms();
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (int64_t b : batches)
      for (const auto& n : norms) {
        StudyUnit u;
        u.label = n.name + ", batch " + std::to_string(b) +
                  (o.seeds > 1 ? ", seed " + std::to_string(seed) : "");
        const std::string lin = "linear(" + std::to_string(width) + ")";
        const std::string block = n.item.empty() ? lin + ", relu" : lin + ", " + n.item + ", relu";
        u.model = block + ", " + block + ", linear(10)";
        u.optimizer = "adam";
        u.optim.lr = 1e-3;
        u.batch_size = b;
        u.steps = samples / b;
        u.eval_every = std::max<int64_t>(1, u.steps / 5);
        u.eval_images = o.quick ? 2000 : 10000;
        u.seed = static_cast<uint64_t>(seed);
        units.push_back(u);
      }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);

  // Final accuracy per (norm, batch): mean over seeds.
  std::map<std::pair<std::string, int64_t>, std::vector<double>> acc;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string norm = units[i].label.substr(0, units[i].label.find(", batch"));
    acc[{norm, units[i].batch_size}].push_back(final_accuracy(rs[i]));
  }
  auto mean = [&](const std::string& n, int64_t b) {
    const auto& v = acc.at({n, b});
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  };
  std::string csv = "norm,acc_batch128,acc_batch4,drop_points\n";
  std::string t =
      "<table><tr><th>norm</th><th>batch 128</th><th>batch 4</th><th>batch 4 minus batch "
      "128 (points)</th></tr>";
  for (const auto& n : norms) {
    const double a = mean(n.name, 128), b = mean(n.name, 4);
    csv += n.name + "," + fmt("%.4f", a) + "," + fmt("%.4f", b) + "," + fmt("%.2f", 100 * (b - a)) +
           "\n";
    t += "<tr><td>" + n.name + "</td><td>" + pct(a) + "%</td><td>" + pct(b) + "%</td><td>" +
         fmt("%+.2f", 100 * (b - a)) + "</td></tr>";
  }
  t += "</table>";
  write_file_atomic(o.out_dir + "/final_accuracy.csv", csv);
  rep.files.push_back("final_accuracy.csv");
  for (int64_t b : batches) {
    std::vector<Series> ss;
    for (size_t i = 0; i < units.size(); ++i)
      if (units[i].batch_size == b && units[i].seed == 0) {
        Series s = accuracy_series(units[i].label.substr(0, units[i].label.find(", batch")), rs[i]);
        for (double& x : s.x) x = x * static_cast<double>(b) / 60000.0;  // epochs
        ss.push_back(s);
      }
    PlotSpec spec{"Test accuracy, 784-" + std::to_string(width) + "-" + std::to_string(width) +
                      "-10 ReLU MLP, Adam, batch " + std::to_string(b),
                  "epochs", "test accuracy"};
    const std::string file = "accuracy_batch" + std::to_string(b) + ".png";
    plot_lines(o.out_dir + "/" + file, spec, ss);
    rep.files.push_back(file);
  }

  const double ln128 = mean("LayerNorm", 128), ln4 = mean("LayerNorm", 4);
  const double bn128 = mean("BatchNorm", 128), bn4 = mean("BatchNorm", 4);
  rep.verdicts.push_back({"LayerNorm at batch 4 within 1 point of batch 128 (or better)",
                          ln4 >= ln128 - 0.01,
                          pct(ln4) + "% at batch 4, " + pct(ln128) + "% at batch 128"});
  rep.verdicts.push_back({"LayerNorm beats BatchNorm at batch 4", ln4 > bn4,
                          "LayerNorm " + pct(ln4) + "%, BatchNorm " + pct(bn4) +
                              "% (BatchNorm at 128: " + pct(bn128) + "%)"});
  rep.verdicts.push_back({"BatchNorm loses more than LayerNorm going from batch 128 to batch 4",
                          (bn128 - bn4) > (ln128 - ln4),
                          "BatchNorm " + fmt("%+.2f", 100 * (bn4 - bn128)) + " points, LayerNorm " +
                              fmt("%+.2f", 100 * (ln4 - ln128)) + " points"});

  page.intro =
      "Ba, Kiros &amp; Hinton (2016), <i>Layer Normalization</i>, section 6.6 and Figure 6: a "
      "784-1000-1000-10 MLP trained with Adam on MNIST at batch 128 and at batch 4, without "
      "normalization, with BatchNorm and with LayerNorm; here also with the family members that "
      "apply to an MLP (RMSNorm, GroupNorm with 8 groups, Batch Renormalization, Ghost BatchNorm "
      "with virtual batches of 32: at batch 4 it is BatchNorm over the whole batch). The norm "
      "sits after each hidden Linear, before the ReLU. Both batch sizes see the same number of "
      "training samples. Test accuracy in eval mode (running statistics).";
  page.settings = {
      {"model",
       "linear(W), NORM, relu, linear(W), NORM, relu, linear(10), W = " + std::to_string(width)},
      {"optimizer", "adam, lr 0.001"},
      {"training samples per run", std::to_string(samples) + " (" +
                                       fmt("%.2f", static_cast<double>(samples) / 60000.0) +
                                       " epochs)"},
      {"test images", std::to_string(units[0].eval_images)},
      {"seeds", std::to_string(o.seeds)},
  };
  page.figures = {{"accuracy_batch128.png", "Test accuracy at batch 128."},
                  {"accuracy_batch4.png", "Test accuracy at batch 4."}};
  page.tables.push_back({"Final test accuracy", t});
  page.paper =
      "Figure 6 of the paper (curves, no table): at batch 128 LayerNorm and BatchNorm both train "
      "faster than the baseline; at batch 4 BatchNorm's test error is worse and noisier while "
      "LayerNorm keeps its advantage (\"robust to the batch sizes\").";
  return rep;
}

// ------------------------------------------------------------------ lr-sweep

struct Arch {
  std::string name, spec;
};

// The seed-001 network (784-512-512-256-10, norms after the ReLUs) with its
// layers swapped: plain Linear and no norm, BatchNorm or LayerNorm at all three
// norm positions, or weight-normalized Linear layers and no norm.
std::vector<Arch> lr_sweep_archs() {
  auto net = [](const std::string& lin, const std::string& norm) {
    std::string s;
    const int64_t w[] = {512, 512, 256};
    for (int i = 0; i < 3; ++i) {
      s += lin + "(" + std::to_string(w[i]) + "), relu";
      if (!norm.empty()) s += ", " + norm;
      s += ", ";
    }
    return s + lin + "(10)";
  };
  return {{"none", net("linear", "")},
          {"BatchNorm", net("linear", "batchnorm")},
          {"LayerNorm", net("linear", "layernorm")},
          {"WeightNorm", net("wnlinear", "")}};
}

StudyReport lr_sweep(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const std::vector<double> lrs =
      o.quick ? std::vector<double>{0.01, 0.1, 1, 10}
              : std::vector<double>{0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10};
  const int64_t steps = o.quick ? 150 : 469;  // full: one epoch at batch 128
  const double usable_at = o.quick ? 0.80 : 0.90;
  const auto archs = lr_sweep_archs();
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (const auto& a : archs)
      for (double lr : lrs) {
        StudyUnit u;
        u.label = a.name + ", lr " + fmt("%g", lr) +
                  (o.seeds > 1 ? ", seed " + std::to_string(seed) : "");
        u.model = a.spec;
        u.optimizer = "sgd";
        u.optim.lr = lr;
        u.batch_size = 128;
        u.steps = steps;
        u.eval_every = steps;
        u.eval_images = o.quick ? 2000 : 10000;
        u.seed = static_cast<uint64_t>(seed);
        units.push_back(u);
      }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);

  std::string csv = "arch,lr,seed,final_accuracy,diverged,diverged_step\n";
  std::map<std::string, int> usable;
  std::map<std::pair<std::string, double>, std::vector<double>> acc;
  std::map<std::pair<std::string, double>, int> diverged;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string arch = units[i].label.substr(0, units[i].label.find(", lr"));
    const double lr = *units[i].optim.lr;
    const double a = rs[i].diverged ? 0.0 : rs[i].points.back().test_accuracy;
    acc[{arch, lr}].push_back(a);
    diverged[{arch, lr}] += rs[i].diverged;
    csv += arch + "," + fmt("%g", lr) + "," + std::to_string(units[i].seed) + "," + fmt("%.4f", a) +
           "," + (rs[i].diverged ? "1" : "0") + "," + std::to_string(rs[i].diverged_step) + "\n";
  }
  write_file_atomic(o.out_dir + "/final_accuracy.csv", csv);
  rep.files.push_back("final_accuracy.csv");
  std::string t = "<table><tr><th>learning rate</th>";
  for (const auto& a : archs) t += "<th>" + a.name + "</th>";
  t += "</tr>";
  std::vector<Series> ss;
  for (const auto& a : archs) {
    Series s;
    s.label = a.name;
    for (double lr : lrs) {
      const auto& v = acc.at({a.name, lr});
      double m = 0;
      for (double x : v) m += x;
      m /= static_cast<double>(v.size());
      s.x.push_back(std::log10(lr));
      s.y.push_back(m);
      if (m >= usable_at) ++usable[a.name];
    }
    ss.push_back(s);
  }
  for (size_t k = 0; k < lrs.size(); ++k) {
    t += "<tr><td>" + fmt("%g", lrs[k]) + "</td>";
    for (size_t a = 0; a < archs.size(); ++a) {
      const int d = diverged.at({archs[a].name, lrs[k]});
      t += "<td>" + pct(ss[a].y[k]) + "%" + (d ? " (diverged)" : "") + "</td>";
    }
    t += "</tr>";
  }
  t += "<tr><th>usable rates (&ge; " + pct(usable_at) + "%)</th>";
  for (const auto& a : archs) t += "<th>" + std::to_string(usable[a.name]) + "</th>";
  t += "</tr></table>";
  PlotSpec spec{"Final test accuracy after " + std::to_string(steps) +
                    " SGD steps (batch 128) against the learning rate",
                "log10(learning rate)", "test accuracy"};
  plot_lines(o.out_dir + "/accuracy_vs_lr.png", spec, ss);
  rep.files.push_back("accuracy_vs_lr.png");

  const int n_none = usable["none"];
  for (const char* norm : {"BatchNorm", "LayerNorm"})
    rep.verdicts.push_back(
        {std::string(norm) + " has more usable learning rates than no norm", usable[norm] > n_none,
         std::to_string(usable[norm]) + " vs " + std::to_string(n_none) + " of " +
             std::to_string(lrs.size()) + " rates reach " + pct(usable_at) + "%"});

  page.intro =
      "The seed-001 network (784-512-512-256-10, a norm after each hidden ReLU) with its layers "
      "swapped for none, BatchNorm, LayerNorm or weight-normalized Linear layers, trained with "
      "plain SGD at learning rates over several decades. A rate is <i>usable</i> when the final "
      "test accuracy reaches the threshold below; a run <i>diverges</i> when its loss or a "
      "gradient turns NaN/inf (counted as accuracy 0). The claim (Ioffe &amp; Szegedy 2015, "
      "sec. 3.3; Ba et al. 2016): normalization widens the range of usable learning rates.";
  page.settings = {
      {"models", "none: " + archs[0].spec + "<br>BatchNorm: " + archs[1].spec +
                     "<br>LayerNorm: " + archs[2].spec + "<br>WeightNorm: " + archs[3].spec},
      {"optimizer", "sgd (no momentum), batch 128, " + std::to_string(steps) + " steps"},
      {"usable", "final test accuracy &ge; " + pct(usable_at) + "%"},
      {"test images", std::to_string(units[0].eval_images)},
      {"seeds", std::to_string(o.seeds)}};
  page.figures = {
      {"accuracy_vs_lr.png", "Final test accuracy against log10 of the learning rate."}};
  page.tables.push_back({"Final test accuracy", t});
  page.paper =
      "Ioffe &amp; Szegedy (2015, sec. 3.3) argue that BatchNorm allows higher learning rates and "
      "show it for Inception on ImageNet (sec. 4.2.2: BN-x5 and BN-x30, learning rate raised 5x "
      "and 30x); there is no MNIST "
      "learning-rate sweep in the papers, so no figure of theirs to set beside these numbers.";
  return rep;
}

// ------------------------------------------------------------------ shared helpers

// The figures of small-batch, depth-train and compare: 800 x 500 (small PNGs).
PlotSpec small_plot(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                    bool log_y = false) {
  PlotSpec p{title, xlabel, ylabel, log_y};
  p.width = 800;
  p.height = 500;
  return p;
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? std::nan("") : s / static_cast<double>(v.size());
}
double sd_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// The seed-001 network's layout (784-A-B-C-10, a norm after each hidden ReLU).
std::string seed001_like(const std::string& lin, const std::string& norm, int64_t a, int64_t b,
                         int64_t c) {
  std::string s;
  for (int64_t w : {a, b, c}) {
    s += lin + "(" + std::to_string(w) + "), relu";
    if (!norm.empty()) s += ", " + norm;
    s += ", ";
  }
  return s + lin + "(10)";
}

// ------------------------------------------------------------------ small-batch

// Ioffe 2017, Batch Renormalization, sec. 4.3 "Microbatches".
struct SmallBatchArm {
  std::string name, norm;
  int64_t micro;  // micro-batch of the statistics (0: the whole batch)
};

StudyReport small_batch(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const int64_t batch = 32, micro = 4;
  const int64_t steps = o.quick ? 400 : 3750;  // full: 2 epochs at batch 32
  const int64_t every = o.quick ? 100 : 375;
  const int64_t w1 = o.quick ? 128 : 512, w2 = o.quick ? 128 : 512, w3 = o.quick ? 64 : 256;
  // The paper's schedule (rmax 1 and dmax 0 for 5k steps, rmax 3 at 40k, dmax
  // 5 at 25k, of about 160k steps) scaled to this run; the counter is the
  // layer's num_batches_tracked, one per micro-batch forward.
  const int64_t forwards = steps * (batch / micro);
  const int64_t warmup = forwards * 5 / 160, rmax_ramp = forwards * 35 / 160,
                dmax_ramp = forwards * 20 / 160;
  const std::string brn =
      "batchrenorm(rmax=3, dmax=5, momentum=0.01, warmup=" + std::to_string(warmup) +
      ", rmax_ramp=" + std::to_string(rmax_ramp) + ", dmax_ramp=" + std::to_string(dmax_ramp) + ")";
  const std::vector<SmallBatchArm> arms = {
      {"BatchNorm, batch 32", "batchnorm", 0},
      {"BatchNorm, micro-batches of 4", "batchnorm", micro},
      {"Batch Renorm, micro-batches of 4", brn, micro},
      {"Ghost BN (4), batch 32", "ghostbatchnorm(virtual_batch_size=4)", 0}};
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (const auto& a : arms) {
      StudyUnit u;
      u.label = a.name + (o.seeds > 1 ? ", seed " + std::to_string(seed) : "");
      u.model = seed001_like("linear", a.norm, w1, w2, w3);
      u.optimizer = "adam";
      u.optim.lr = 1e-3;
      u.batch_size = batch;
      u.steps = steps;
      u.eval_every = every;
      u.eval_images = o.quick ? 2000 : 10000;
      u.seed = static_cast<uint64_t>(seed);
      u.micro_batch = a.micro;
      // Training mode on test images sees what training saw: the micro-batch's
      // statistics (Ghost BN splits its 32 into 4s itself).
      u.train_mode_batch = a.micro ? a.micro : batch;
      units.push_back(u);
    }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);

  // Final eval-mode and train-mode accuracy per arm, mean over seeds.
  const size_t A = arms.size();
  std::vector<std::vector<double>> ev(A), tr(A);
  for (size_t i = 0; i < units.size(); ++i) {
    const auto& p = rs[i].points.back();
    ev[i % A].push_back(rs[i].diverged ? 0.0 : p.test_accuracy);
    tr[i % A].push_back(rs[i].diverged ? 0.0 : p.train_mode_accuracy);
  }
  std::vector<double> e(A), t(A);
  std::string csv = "arm,eval_accuracy,train_mode_accuracy,gap_points\n";
  std::string tab =
      "<table><tr><th>run</th><th>eval mode (running statistics)</th><th>training mode "
      "(batch statistics)</th><th>training minus eval (points)</th></tr>";
  for (size_t a = 0; a < A; ++a) {
    e[a] = mean_of(ev[a]);
    t[a] = mean_of(tr[a]);
    csv += "\"" + arms[a].name + "\"," + fmt("%.4f", e[a]) + "," + fmt("%.4f", t[a]) + "," +
           fmt("%.2f", 100 * (t[a] - e[a])) + "\n";
    tab += "<tr><td>" + arms[a].name + "</td><td>" + pct(e[a]) + "%</td><td>" + pct(t[a]) +
           "%</td><td>" + fmt("%+.2f", 100 * (t[a] - e[a])) + "</td></tr>";
  }
  tab += "</table>";
  write_file_atomic(o.out_dir + "/final_accuracy.csv", csv);
  rep.files.push_back("final_accuracy.csv");

  {
    std::vector<Series> se, sg;
    for (size_t i = 0; i < A; ++i) {
      Series s = accuracy_series(arms[i].name, rs[i]);
      se.push_back(s);
      Series g;
      g.label = arms[i].name;
      for (const auto& p : rs[i].points) {
        g.x.push_back(static_cast<double>(p.step));
        g.y.push_back(100 * (p.train_mode_accuracy - p.test_accuracy));
      }
      sg.push_back(g);
    }
    plot_lines(o.out_dir + "/accuracy.png",
               small_plot("Eval-mode test accuracy (running statistics), batch 32",
                          "training steps", "test accuracy"),
               se);
    plot_lines(
        o.out_dir + "/gap.png",
        small_plot("Training-mode minus eval-mode test accuracy", "training steps", "points"), sg);
    rep.files.push_back("accuracy.png");
    rep.files.push_back("gap.png");
  }

  const double gap_bn = std::fabs(t[1] - e[1]), gap_brn = std::fabs(t[2] - e[2]);
  rep.verdicts.push_back(
      {"At micro-batches of 4, Batch Renorm's train/eval gap is smaller than BatchNorm's",
       gap_brn < gap_bn,
       "|training - eval|: Batch Renorm " + fmt("%.2f", 100 * gap_brn) + " points, BatchNorm " +
           fmt("%.2f", 100 * gap_bn) + " points"});
  rep.verdicts.push_back({"At micro-batches of 4, Batch Renorm's eval accuracy >= BatchNorm's",
                          e[2] >= e[1],
                          "Batch Renorm " + pct(e[2]) + "%, BatchNorm " + pct(e[1]) + "%"});
  rep.verdicts.push_back({"BatchNorm with micro-batches of 4 is below BatchNorm with batch 32",
                          e[1] < e[0],
                          "micro-batches of 4: " + pct(e[1]) + "%, batch 32: " + pct(e[0]) + "%"});

  page.intro =
      "Ioffe (2017), <i>Batch Renormalization</i>, section 4.3 (Microbatches): each worker's "
      "minibatch of 32 examples is split into micro-batches of 4, and BatchNorm normalizes each "
      "micro-batch with its own statistics; the gradient is that of the whole minibatch. The "
      "model then does worse at inference, where it uses population statistics; Batch Renorm "
      "corrects the micro-batch statistics toward the moving averages (r, d) and closes most of "
      "the gap. Here: the seed-001 network's layout on MNIST, batch 32 per Adam step, the norm's "
      "statistics over micro-batches of 4 (forward and backward per micro-batch, gradients "
      "summed, one update), against BatchNorm over the whole 32 and Ghost BatchNorm with "
      "virtual batches of 4 (the same statistics inside one forward). <i>Training-mode</i> "
      "accuracy: the test images in batches of the size the statistics saw in training (4, or "
      "32), the model in training mode (running statistics restored after). <i>Eval mode</i>: "
      "running statistics.";
  page.settings = {
      {"model", seed001_like("linear", "NORM", w1, w2, w3)},
      {"norms", "batchnorm; " + brn + "; ghostbatchnorm(virtual_batch_size=4)"},
      {"Batch Renorm schedule",
       "the paper's 5k / 40k / 25k of ~160k steps scaled to this run's " +
           std::to_string(forwards) + " micro-batch forwards: warmup " + std::to_string(warmup) +
           ", rmax 3 after " + std::to_string(warmup + rmax_ramp) + ", dmax 5 after " +
           std::to_string(warmup + dmax_ramp) + "; moving averages with &alpha; = 0.01 (paper)"},
      {"optimizer", "adam, lr 0.001 (the paper: RMSProp on Inception v3)"},
      {"batch, steps", "32, " + std::to_string(steps) + " (" +
                           fmt("%.2f", static_cast<double>(steps * batch) / 60000.0) +
                           " epochs); micro-batches of 4"},
      {"test images", std::to_string(units[0].eval_images)},
      {"seeds", std::to_string(o.seeds)}};
  page.figures = {{"accuracy.png", "Eval-mode test accuracy against training steps."},
                  {"gap.png",
                   "Training-mode minus eval-mode test accuracy (points): how far inference "
                   "differs from what training optimized."}};
  page.tables.push_back({"Final test accuracy", tab});
  page.tables.push_back(
      {"The paper's figures (Inception v3, ImageNet top-1 validation accuracy, sec. 4.3)",
       "<table><tr><th>run</th><th>paper</th></tr>"
       "<tr><td>BatchNorm, minibatch 32 (baseline)</td><td>78.3%</td></tr>"
       "<tr><td>BatchNorm, micro-batches of 4</td><td>74.2%</td></tr>"
       "<tr><td>Batch Renorm, micro-batches of 4</td><td>76.5%</td></tr></table>"});
  page.paper =
      "Section 4.3: with micro-batches of 4, BatchNorm's validation accuracy drops to 74.2% "
      "against the 78.3% of its minibatch-32 baseline; Batch Renorm reaches 76.5% and trains "
      "faster: about half of the loss is recovered. The paper does not report a train-mode "
      "accuracy; "
      "its argument is that BatchNorm's training activations (micro-batch statistics) differ "
      "from its inference activations (population statistics), which the gap column measures "
      "directly here.";
  return rep;
}

// ------------------------------------------------------------------ depth-train

// The five seed-000 architectures (docs/depth.md, presets none ... ln-post)
// written flat so that each layer is one item of the Sequential.
std::vector<Arch> depth_train_archs(int64_t depth, int64_t width) {
  const std::vector<std::pair<std::string, std::string>> blocks = {
      {"none", "linear(W, bias=false), relu"},
      {"bn-pre", "batchnorm(affine=false), linear(W), relu"},
      {"bn-post", "linear(W, bias=false), batchnorm, relu"},
      {"ln-pre", "layernorm(bias=false), linear(W), relu"},
      {"ln-post", "linear(W, bias=false), layernorm, relu"}};
  std::vector<Arch> out;
  for (const auto& [name, pattern] : blocks) {
    std::string block = pattern;
    for (size_t at; (at = block.find('W')) != std::string::npos;)
      block.replace(at, 1, std::to_string(width));
    std::string s;
    for (int64_t i = 0; i < depth; ++i) s += block + ", ";
    out.push_back({name, s + "linear(10, bias=false)"});
  }
  return out;
}

StudyReport depth_train(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const int64_t depth = o.quick ? 6 : 10, width = o.quick ? 128 : 256;
  const int64_t steps = o.quick ? 150 : 600, every = o.quick ? 25 : 30;
  const double lr = 0.1;
  const auto archs = depth_train_archs(depth, width);
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (const auto& a : archs) {
      StudyUnit u;
      u.label = a.name + (o.seeds > 1 ? ", seed " + std::to_string(seed) : "");
      u.model = a.spec;
      u.optimizer = "sgd";
      u.optim.lr = lr;
      u.batch_size = 128;
      u.steps = steps;
      u.eval_every = every;
      u.eval_images = 2000;
      u.seed = static_cast<uint64_t>(seed);
      u.layer_stats = true;
      units.push_back(u);
    }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);
  std::string csv = "arch,seed,step,kind,layer,value\n";
  for (size_t i = 0; i < units.size(); ++i)
    for (const auto& p : rs[i].layers) {
      const std::string head = archs[i % archs.size()].name + "," + std::to_string(units[i].seed) +
                               "," + std::to_string(p.step) + ",";
      for (size_t k = 0; k < p.activation.size(); ++k)
        csv += head + "activation," + std::to_string(k + 1) + "," + fmt("%.6g", p.activation[k]) +
               "\n";
      for (size_t k = 0; k < p.gradient.size(); ++k)
        csv += head + "gradient," + std::to_string(k + 1) + "," + fmt("%.6g", p.gradient[k]) + "\n";
    }
  write_file_atomic(o.out_dir + "/layers.csv", csv);
  rep.files.push_back("layers.csv");

  // Figures of seed 0: per architecture, one line per block over the steps.
  for (size_t a = 0; a < archs.size(); ++a) {
    const UnitResult& r = rs[a];
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<Series> ss;
      const size_t L = r.layers.empty()
                           ? 0
                           : (kind ? r.layers[0].gradient.size() : r.layers[0].activation.size());
      // Blocks 1, 3, 5, ... and Linear layers 1, 4, 7, ... and the last (few
      // lines, each its own colour, small PNGs); layers.csv holds them all.
      const size_t stride = kind ? 3 : 2;
      for (size_t k = 0; k < L; ++k) {
        if (k % stride != 0 && k + 1 != L) continue;
        Series s;
        s.label = (kind ? "Linear " : "block ") + std::to_string(k + 1) +
                  (kind && k + 1 == L ? " (output)" : "");
        for (const auto& p : r.layers) {
          s.x.push_back(static_cast<double>(p.step));
          s.y.push_back(kind ? p.gradient[k] : p.activation[k]);
        }
        ss.push_back(s);
      }
      if (ss.empty()) continue;
      const std::string file =
          std::string(kind ? "gradient_" : "activation_") + archs[a].name + ".png";
      PlotSpec spec =
          small_plot(archs[a].name + (kind ? ": Frobenius norm of each Linear weight's gradient"
                                           : ": each block's output norm (RMS per example)"),
                     "training steps", kind ? "weight-gradient norm" : "activation norm", true);
      spec.width = 720;  // eleven of these on the page: a little smaller
      spec.height = 450;
      plot_lines(o.out_dir + "/" + file, spec, ss);
      rep.files.push_back(file);
      page.figures.push_back(
          {file, archs[a].name +
                     (kind ? ": weight-gradient norm of Linear layers 1, 4, 7, ... and the "
                             "output layer (log scale; all in layers.csv)."
                           : ": activation norm of blocks 1, 3, 5, ... and the last (log scale; "
                             "all in layers.csv).")});
    }
  }
  {
    std::vector<Series> ss;
    for (size_t a = 0; a < archs.size(); ++a) ss.push_back(accuracy_series(archs[a].name, rs[a]));
    plot_lines(o.out_dir + "/accuracy.png",
               small_plot("Test accuracy, depth " + std::to_string(depth) + ", width " +
                              std::to_string(width) + ", SGD lr 0.1, batch 128",
                          "training steps", "test accuracy"),
               ss);
    rep.files.push_back("accuracy.png");
    page.figures.insert(page.figures.begin(),
                        {"accuracy.png", "Test accuracy (2000 test images) of the five."});
  }

  // Verdicts (seed 0).
  auto ratio = [](const std::vector<double>& v) { return v.back() / v.front(); };
  auto spread = [](const std::vector<double>& v) {
    return *std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end());
  };
  const UnitResult& none = rs[0];
  const double r0 = ratio(none.layers.front().activation),
               r1 = ratio(none.layers.back().activation);
  rep.verdicts.push_back(
      {"Without normalization the activation norm falls by more than 10x from the first to the "
       "last block at step 0",
       r0 < 0.1, "last / first block: " + fmt("%.3g", r0)});
  rep.verdicts.push_back(
      {"... and still by more than 10x at the end of training", r1 < 0.1,
       "last / first block at step " + std::to_string(steps) + ": " + fmt("%.3g", r1)});
  double worst = 0;
  std::string worst_at;
  for (size_t a = 1; a < archs.size(); ++a)
    for (const auto& p : rs[a].layers)
      if (spread(p.activation) > worst) {
        worst = spread(p.activation);
        worst_at = archs[a].name + " at step " + std::to_string(p.step);
      }
  rep.verdicts.push_back(
      {"With BatchNorm or LayerNorm (before or after the Linear) the blocks' activation norms stay "
       "within 10x of each other at every recorded step",
       worst <= 10,
       "largest max/min over the blocks: " + fmt("%.3g", worst) + " (" + worst_at + ")"});
  double g_ratio = 0;
  for (size_t k = 0; k < none.layers.front().gradient.size(); ++k)
    g_ratio = std::max(g_ratio, none.layers.front().gradient[k] / rs[2].layers.front().gradient[k]);
  rep.verdicts.push_back(
      {"At step 0 every weight gradient without normalization is more than 10x smaller than with "
       "BatchNorm after the Linear",
       g_ratio < 0.1, "largest none / bn-post ratio over the layers: " + fmt("%.3g", g_ratio)});
  const double a_none = final_accuracy(none);
  double a_min = 1;
  std::string who;
  for (size_t a = 1; a < archs.size(); ++a)
    if (final_accuracy(rs[a]) < a_min) {
      a_min = final_accuracy(rs[a]);
      who = archs[a].name;
    }
  rep.verdicts.push_back(
      {"Every normalized architecture ends with higher test accuracy than none", a_min > a_none,
       "lowest normalized: " + who + " " + pct(a_min) + "%, none " + pct(a_none) + "%"});

  std::string tab =
      "<table><tr><th>architecture</th><th>last / first block activation, step 0</th><th>at "
      "the end</th><th>first Linear's gradient norm, step 0</th><th>final test "
      "accuracy</th></tr>";
  for (size_t a = 0; a < archs.size(); ++a) {
    const auto& L = rs[a].layers;
    tab += "<tr><td>" + archs[a].name + "</td><td>" + fmt("%.3g", ratio(L.front().activation)) +
           "</td><td>" + fmt("%.3g", ratio(L.back().activation)) + "</td><td>" +
           fmt("%.3g", L.front().gradient.front()) + "</td><td>" + pct(final_accuracy(rs[a])) +
           "%</td></tr>";
  }
  tab += "</table>";
  page.tables.push_back({"Summary", tab});

  page.intro =
      "The seed-000 experiment (docs/depth.md) carried into training: its five architectures "
      "(no norm; BatchNorm or LayerNorm before or after each Linear) at depth " +
      std::to_string(depth) + " and width " + std::to_string(width) + ", trained on MNIST. Every " +
      std::to_string(every) +
      " steps: each block's output norm (after its ReLU) on that step's training batch, in "
      "training mode (root-mean-square over the examples of their L2 norms), and the Frobenius "
      "norm of each Linear weight's gradient of that step; step 0 is the first batch at "
      "initialisation, before any update.";
  page.settings = {{"models", "none: " + archs[0].spec + "<br>bn-pre: " + archs[1].spec +
                                  "<br>(bn-post, ln-pre, ln-post likewise: docs/depth.md)"},
                   {"init", "PyTorch's defaults"},
                   {"optimizer", "sgd (no momentum), lr " + fmt("%g", lr) + ", batch 128, " +
                                     std::to_string(steps) + " steps"},
                   {"recorded", "every " + std::to_string(every) +
                                    " steps; test accuracy on the first 2000 test images"},
                   {"seeds", std::to_string(o.seeds) + " (figures and verdicts: seed 0)"}};
  page.paper =
      "No paper figure: this extends the seed-000 notebook (output norm against depth at "
      "initialisation, 0.41x per block without a norm, flat with BN or LN; docs/depth.md) into "
      "training. Ioffe &amp; Szegedy (2015, sec. 3.3) argue that BatchNorm keeps the layers' "
      "scales from vanishing or exploding through depth and lets gradients flow; the verdicts "
      "check that for activations and weight gradients.";
  return rep;
}

// ------------------------------------------------------------------ compare

// Every norm of the spec that fits the seed-001 network (784-512-512-256-10,
// the norm after each hidden ReLU), plus its weight-normalized variants and
// the seed-001 network itself.
// --quick: widths 128-128-64 (the seed001 row: its spec with those widths).
std::vector<Arch> compare_archs(bool quick) {
  const int64_t a = quick ? 128 : 512, c = quick ? 64 : 256;
  auto net = [&](const std::string& lin, const std::string& norm) {
    return seed001_like(lin, norm, a, a, c);
  };
  return {{"none", net("linear", "")},
          {"BatchNorm", net("linear", "batchnorm")},
          {"LayerNorm", net("linear", "layernorm")},
          {"RMSNorm", net("linear", "rmsnorm")},
          {"GroupNorm(8)", net("linear", "groupnorm(8)")},
          {"Batch Renorm", net("linear", "batchrenorm")},
          {"Ghost BN (32)", net("linear", "ghostbatchnorm(virtual_batch_size=32)")},
          {"mean-only BN", net("linear", "mean_only_batchnorm")},
          {"WeightNorm", net("wnlinear", "")},
          {"WeightNorm + mean-only BN", net("wnlinear", "mean_only_batchnorm")},
          {"seed001 (WN + LN/BN/LN)",
           quick ? "wnlinear(128), relu, layernorm, wnlinear(128), relu, batchnorm, wnlinear(64), "
                   "relu, layernorm, wnlinear(10)"
                 : "seed001"}};
}

StudyReport compare(const StudyOptions& o, StudyObserver& obs, ReportPage& page) {
  const int64_t epochs = o.quick ? 2 : 5;
  const int64_t epoch_steps =
      o.quick ? 60 : 469;  // full: one pass at batch 128 (last batch dropped)
  const auto archs = compare_archs(o.quick);
  std::vector<StudyUnit> units;
  for (int64_t seed = 0; seed < o.seeds; ++seed)
    for (const auto& a : archs) {
      StudyUnit u;
      // Always named with its seed, so a run with fewer seeds is reused by one with more.
      u.label = a.name + ", seed " + std::to_string(seed);
      u.model = a.spec;
      u.optimizer = "adam";
      u.optim.lr = 1e-3;
      u.batch_size = 128;
      u.steps = epochs * epoch_steps;
      u.eval_every = epoch_steps;
      u.eval_images = o.quick ? 1000 : 10000;
      u.seed = static_cast<uint64_t>(seed);
      units.push_back(u);
    }
  StudyReport rep;
  const std::vector<UnitResult> rs = run_and_write_curves(units, o, obs, rep, page);

  const size_t A = archs.size();
  // acc[a][epoch] over seeds; seconds per epoch over seeds.
  std::vector<std::vector<std::vector<double>>> acc(
      A, std::vector<std::vector<double>>(static_cast<size_t>(epochs + 1)));
  std::vector<std::vector<double>> secs(A);
  for (size_t i = 0; i < units.size(); ++i) {
    const size_t a = i % A;
    for (const auto& p : rs[i].points) {
      const int64_t e = p.step / epoch_steps;
      if (p.step % epoch_steps == 0 && e <= epochs)
        acc[a][static_cast<size_t>(e)].push_back(p.test_accuracy);
    }
    if (rs[i].diverged)
      for (int64_t e = 1; e <= epochs; ++e)
        if (acc[a][static_cast<size_t>(e)].size() < acc[a][0].size())
          acc[a][static_cast<size_t>(e)].push_back(0.0);
    secs[a].push_back(rs[i].seconds / static_cast<double>(epochs));
  }
  std::string csv = "norm,epoch,mean_accuracy,sd_accuracy,seeds,seconds_per_epoch\n";
  std::string tab = "<table><tr><th>norm</th>";
  for (int64_t e = 1; e <= epochs; ++e) tab += "<th>epoch " + std::to_string(e) + "</th>";
  tab += "<th>seconds per epoch</th></tr>";
  std::vector<Series> ss;
  for (size_t a = 0; a < A; ++a) {
    Series s;
    s.label = archs[a].name;
    tab += "<tr><td>" + archs[a].name + "</td>";
    for (int64_t e = 1; e <= epochs; ++e) {
      const auto& v = acc[a][static_cast<size_t>(e)];
      const double m = mean_of(v), sd = sd_of(v);
      s.x.push_back(static_cast<double>(e));
      s.y.push_back(m);
      s.y_err.push_back(sd);
      csv += "\"" + archs[a].name + "\"," + std::to_string(e) + "," + fmt("%.4f", m) + "," +
             fmt("%.4f", sd) + "," + std::to_string(v.size()) + "," +
             fmt("%.2f", mean_of(secs[a])) + "\n";
      tab += "<td>" + pct(m) + (o.seeds > 1 ? " &plusmn; " + pct(sd) : "") + "</td>";
    }
    tab += "<td>" + fmt("%.1f", mean_of(secs[a])) + "</td></tr>";
    ss.push_back(s);
  }
  tab += "</table>";
  write_file_atomic(o.out_dir + "/accuracy_per_epoch.csv", csv);
  rep.files.push_back("accuracy_per_epoch.csv");
  // Two figures, each with few enough lines for distinct colours: the
  // activation norms, and the weight-normalized networks (with none in both).
  {
    std::vector<Series> act, wn;
    for (size_t a = 0; a < A; ++a) {
      const bool w =
          archs[a].name.rfind("WeightNorm", 0) == 0 || archs[a].name.rfind("seed001", 0) == 0;
      if (a == 0 || !w) act.push_back(ss[a]);
      if (a == 0 || w) wn.push_back(ss[a]);
    }
    const std::string sd = " (mean +- sd, " + std::to_string(o.seeds) + " seeds)";
    plot_lines(o.out_dir + "/accuracy.png",
               small_plot("Activation norms: test accuracy" + sd, "epoch", "test accuracy"), act);
    plot_lines(
        o.out_dir + "/accuracy_wn.png",
        small_plot("Weight-normalized networks: test accuracy" + sd, "epoch", "test accuracy"), wn);
    rep.files.push_back("accuracy.png");
    rep.files.push_back("accuracy_wn.png");
  }

  const double none1 = ss[0].y.front(), noneN = ss[0].y.back();
  // The weight-normalized rows (WeightNorm, WeightNorm + mean-only BN) do not
  // rescale the activations: Salimans & Kingma's claim for them is about
  // optimization speed, checked separately from the activation norms'.
  auto weight_norm_row = [&](size_t a) { return archs[a].name.rfind("WeightNorm", 0) == 0; };
  std::string losers, wn;
  bool wn_beats = true;
  for (size_t a = 1; a < A; ++a) {
    const bool above = ss[a].y.front() > none1;
    if (weight_norm_row(a)) {
      wn_beats = wn_beats && above;
      wn += (wn.empty() ? "" : ", ") + archs[a].name + " " + pct(ss[a].y.front()) + "%";
    } else if (!above) {
      losers += (losers.empty() ? "" : ", ") + archs[a].name + " " + pct(ss[a].y.front()) + "%";
    }
  }
  rep.verdicts.push_back(
      {"Every activation norm (BN, LN, RMSNorm, GroupNorm, Batch Renorm, Ghost BN, mean-only BN, "
       "seed001's mix) beats none at epoch 1 (mean test accuracy)",
       losers.empty(),
       "none " + pct(none1) + "%" +
           (losers.empty() ? "; all of them above" : "; not above: " + losers)});
  rep.verdicts.push_back(
      {"Weight normalization (alone and with mean-only BN) beats none at epoch 1", wn_beats,
       wn + "; none " + pct(none1) + "%"});
  rep.verdicts.push_back({"BatchNorm and LayerNorm both beat none at the last epoch",
                          ss[1].y.back() > noneN && ss[2].y.back() > noneN,
                          "epoch " + std::to_string(epochs) + ": BatchNorm " + pct(ss[1].y.back()) +
                              "%, LayerNorm " + pct(ss[2].y.back()) + "%, none " + pct(noneN) +
                              "%"});
  size_t best = 0;
  for (size_t a = 1; a < A; ++a)
    if (ss[a].y.back() > ss[best].y.back()) best = a;
  rep.verdicts.push_back(
      {"Some norm ends more than one standard deviation (of both) above none",
       ss[best].y.back() - noneN > std::max(ss[best].y_err.back(), ss[0].y_err.back()),
       "best: " + archs[best].name + " " + pct(ss[best].y.back()) + " +- " +
           pct(ss[best].y_err.back()) + "%, none " + pct(noneN) + " +- " + pct(ss[0].y_err.back()) +
           "%"});

  page.intro =
      "Every normalization layer of normlab that fits the seed-001 network (784-512-512-256-10, "
      "the norm after each hidden ReLU), trained with the seed-001 recipe (Adam, lr 0.001, "
      "batch 128) for " +
      std::to_string(epochs) + " epochs over " + std::to_string(o.seeds) +
      " seeds: test accuracy after each epoch, mean and standard deviation over the seeds, and "
      "seconds per epoch. Left out: InstanceNorm1d (needs (N, C, L) inputs; on a flat feature "
      "vector each instance would be one value), BatchNorm2d / InstanceNorm2d (images; see the "
      "cnn preset), SyncBatchNorm (BatchNorm1d on one process), the notebook's nb_* layers (the "
      "same maths as the standard ones: the seed001 row uses the standard layers).";
  std::string models;
  for (const auto& a : archs) models += a.name + ": " + resolve_spec(a.spec) + "<br>";
  page.settings = {{"models", models},
                   {"optimizer", "adam, lr 0.001, batch 128"},
                   {"epochs", std::to_string(epochs) + " of " + std::to_string(epoch_steps) +
                                  " steps" + (o.quick ? " (--quick: short epochs)" : "")},
                   {"test images", std::to_string(units[0].eval_images)},
                   {"seconds per epoch",
                    "wall time of a run / epochs, including its test evaluation after each epoch; "
                    "two runs side by side, one thread each"},
                   {"seeds", std::to_string(o.seeds)}};
  page.figures = {{"accuracy.png",
                   "Test accuracy after each epoch with no norm and each activation norm, mean "
                   "with error bars of one standard deviation over the seeds."},
                  {"accuracy_wn.png",
                   "The same for the weight-normalized networks (WeightNorm alone, with mean-only "
                   "BN, and the seed-001 network), with no norm for reference."}};
  page.tables.push_back({"Test accuracy per epoch (mean &plusmn; sd over seeds)", tab});
  page.paper =
      "No single paper compares all of these. For orientation: Ba et al. (2016) and Ioffe &amp; "
      "Szegedy (2015) report that LayerNorm and BatchNorm speed up training of MLPs on MNIST-size "
      "problems; Salimans &amp; Kingma (2016) propose weight normalization with mean-only "
      "BatchNorm; Zhang &amp; Sennrich (2019) that RMSNorm matches LayerNorm; Wu &amp; He (2018) "
      "that GroupNorm matches BatchNorm at large batches. None of them reports numbers for this "
      "network, so the page sets no paper figure beside ours.";
  return rep;
}

}  // namespace

std::vector<std::string> study_names() {
  return {"bn-paper", "batch-size", "lr-sweep", "small-batch", "depth-train", "compare"};
}

std::string study_summary(const std::string& name) {
  if (name == "bn-paper")
    return "Ioffe & Szegedy 2015, Figure 1: sigmoid MLP with and without BatchNorm";
  if (name == "batch-size")
    return "Ba, Kiros & Hinton 2016, sec. 6.6: norms at batch 128 and batch 4";
  if (name == "lr-sweep")
    return "seed-001 network with none / BN / LN / WN over learning rates: usable range";
  if (name == "small-batch")
    return "Ioffe 2017, sec. 4.3: BatchNorm vs Batch Renorm with micro-batches of 4";
  if (name == "depth-train")
    return "seed-000's five architectures trained: activation and gradient norm per layer";
  if (name == "compare")
    return "every norm in the seed-001 network: test accuracy per epoch over seeds, time";
  return "";
}

StudyReport run_study(const std::string& name, const StudyOptions& o_in, StudyObserver& obs) {
  const auto names = study_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    fail("study ", name, ": unknown study; expected one of: ", list);
  }
  if (o_in.seeds < 0 || o_in.seeds > 100)
    fail("study ", name, ": --seeds ", o_in.seeds, ": must be 1..100");
  StudyOptions o = o_in;
  if (o.seeds == 0) o.seeds = name == "compare" && !o.quick ? 3 : 1;  // the study's default
  std::filesystem::create_directories(o.out_dir);
  const auto t0 = Clock::now();
  ReportPage page;
  page.name = name;
  page.quick = o.quick;
  StudyReport rep = name == "bn-paper"      ? bn_paper(o, obs, page)
                    : name == "batch-size"  ? batch_size(o, obs, page)
                    : name == "lr-sweep"    ? lr_sweep(o, obs, page)
                    : name == "small-batch" ? small_batch(o, obs, page)
                    : name == "depth-train" ? depth_train(o, obs, page)
                                            : compare(o, obs, page);
  rep.name = name;
  rep.title = study_summary(name);
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  page.title = rep.title;
  page.verdicts = rep.verdicts;
  page.seconds = rep.seconds;
  page.units = rep.units;
  page.units_cached = rep.units_cached;
  write_report_html(o.out_dir + "/report.html", page);
  rep.files.push_back("report.html");
  return rep;
}

}  // namespace normlab
