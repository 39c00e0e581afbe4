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
  std::string s = "run,seed,batch_size,step,test_accuracy,test_loss,train_loss,p15,p50,p85\n";
  for (size_t i = 0; i < units.size(); ++i)
    for (const auto& p : rs[i].points)
      s += "\"" + units[i].label + "\"," + std::to_string(units[i].seed) + "," +
           std::to_string(units[i].batch_size) + "," + std::to_string(p.step) + "," +
           fmt("%.6g", p.test_accuracy) + "," + fmt("%.6g", p.test_loss) + "," +
           fmt("%.6g", p.train_loss) + "," + fmt("%.6g", p.p15) + "," + fmt("%.6g", p.p50) + "," +
           fmt("%.6g", p.p85) + "\n";
  return s;
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
  const std::vector<UnitResult> rs = run_units(units, o, obs);
  StudyReport rep;
  rep.units = static_cast<int64_t>(units.size());
  for (const auto& r : rs) {
    rep.units_cached += r.cached;
    page.unit_seconds += r.seconds;
  }

  write_file_atomic(o.out_dir + "/curves.csv", curves_csv(units, rs));
  rep.files.push_back("curves.csv");
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
  const std::vector<UnitResult> rs = run_units(units, o, obs);
  StudyReport rep;
  rep.units = static_cast<int64_t>(units.size());
  for (const auto& r : rs) {
    rep.units_cached += r.cached;
    page.unit_seconds += r.seconds;
  }
  write_file_atomic(o.out_dir + "/curves.csv", curves_csv(units, rs));
  rep.files.push_back("curves.csv");

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
  const std::vector<UnitResult> rs = run_units(units, o, obs);
  StudyReport rep;
  rep.units = static_cast<int64_t>(units.size());
  for (const auto& r : rs) {
    rep.units_cached += r.cached;
    page.unit_seconds += r.seconds;
  }
  write_file_atomic(o.out_dir + "/curves.csv", curves_csv(units, rs));
  rep.files.push_back("curves.csv");

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

}  // namespace

std::vector<std::string> study_names() {
  return {"bn-paper", "batch-size", "lr-sweep"};
}

std::string study_summary(const std::string& name) {
  if (name == "bn-paper")
    return "Ioffe & Szegedy 2015, Figure 1: sigmoid MLP with and without BatchNorm";
  if (name == "batch-size")
    return "Ba, Kiros & Hinton 2016, sec. 6.6: norms at batch 128 and batch 4";
  if (name == "lr-sweep")
    return "seed-001 network with none / BN / LN / WN over learning rates: usable range";
  return "";
}

StudyReport run_study(const std::string& name, const StudyOptions& o, StudyObserver& obs) {
  const auto names = study_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    fail("study ", name, ": unknown study; expected one of: ", list);
  }
  if (o.seeds < 1 || o.seeds > 100) fail("study ", name, ": --seeds ", o.seeds, ": must be 1..100");
  std::filesystem::create_directories(o.out_dir);
  const auto t0 = Clock::now();
  ReportPage page;
  page.name = name;
  page.quick = o.quick;
  StudyReport rep = name == "bn-paper"     ? bn_paper(o, obs, page)
                    : name == "batch-size" ? batch_size(o, obs, page)
                                           : lr_sweep(o, obs, page);
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
