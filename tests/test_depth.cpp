// The depth experiment's engine: the layer-by-layer evaluation equals building
// the model with its layers; results do not depend on the thread count; the
// CSV, the reference reader and the agreement checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "normlab/depth.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"

using namespace normlab;

namespace {

DepthConfig small_config() {
  DepthConfig c;
  c.width = 48;
  c.outputs = 7;
  c.batch = 4;
  c.input = {6, 5};
  c.max_depth = 4;
  c.seeds = 3;
  c.seed = 11;
  return c;
}

// The same network built from the layer classes and run in training mode.
double norm_through_layers(const DepthConfig& c, const std::string& arch, int depth, int k) {
  Shape in{c.batch};
  in.insert(in.end(), c.input.begin(), c.input.end());
  Rng rng = depth_network_rng(c, arch, depth, k);
  auto model = build_model<float>(depth_spec(c, arch, depth), in, rng);
  model->set_training(true);
  const Tensor<float> x = depth_inputs(c, k);
  const Tensor<float>& y = model->forward(x);
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * y[i];
  return std::sqrt(s);
}

std::string temp_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("normlab_test_" + name);
  std::ofstream(path) << text;
  return path.string();
}

std::vector<DepthRow> flat(const std::string& arch, double value, double sd, int n) {
  std::vector<DepthRow> rows;
  for (int d = 0; d < 30; ++d) rows.push_back({arch, d, value, sd, n});
  return rows;
}

}  // namespace

TEST(Depth, LayerByLayerEqualsTheBuiltModel) {
  const DepthConfig c = small_config();
  for (const auto& arch : depth_architectures())
    for (int depth : {0, 1, 3}) {
      const double fast = depth_output_norm(c, arch, depth, 1);
      const double layers = norm_through_layers(c, arch, depth, 1);
      EXPECT_GT(fast, 0) << arch;
      EXPECT_NEAR(fast, layers, 1e-5 * layers) << arch << " depth " << depth;
    }
}

TEST(Depth, ResultsDoNotDependOnTheThreadCount) {
  DepthConfig c = small_config();
  c.threads = 1;
  const DepthResult one = run_depth(c);
  c.threads = 2;
  const DepthResult two = run_depth(c);
  ASSERT_EQ(one.points.size(), 5u * 5u);
  for (size_t i = 0; i < one.points.size(); ++i) {
    EXPECT_EQ(one.points[i].norms, two.points[i].norms);
    EXPECT_EQ(one.points[i].norms[2],
              depth_output_norm(c, one.points[i].arch, one.points[i].depth, 2));
  }
  // Selecting architectures does not change their figures.
  c.archs = {"ln-post"};
  const DepthResult sel = run_depth(c);
  ASSERT_EQ(sel.points.size(), 5u);
  EXPECT_EQ(sel.points[3].norms, one.points[4 * 5 + 3].norms);
}

TEST(Depth, DrawsBeyondTheFirstBlockOf64UseTheirOwnStreams) {
  DepthConfig c = small_config();
  c.archs = {"bn-post"};
  c.min_depth = c.max_depth = 1;
  c.width = 16;
  c.seeds = 70;
  const DepthResult r = run_depth(c);
  ASSERT_EQ(r.points.size(), 1u);
  ASSERT_EQ(r.points[0].norms.size(), 70u);
  for (int k : {0, 63, 64, 69})
    EXPECT_EQ(r.points[0].norms[k], depth_output_norm(c, "bn-post", 1, k)) << k;
}

TEST(Depth, DrawsDifferAndStatisticsAreTheirs) {
  const DepthResult r = run_depth(small_config());
  const DepthPoint& p = r.points[7];
  ASSERT_EQ(p.norms.size(), 3u);
  EXPECT_NE(p.norms[0], p.norms[1]);
  const double mean = (p.norms[0] + p.norms[1] + p.norms[2]) / 3;
  double ss = 0;
  for (double v : p.norms) ss += (v - mean) * (v - mean);
  EXPECT_DOUBLE_EQ(p.mean, mean);
  EXPECT_NEAR(p.sd, std::sqrt(ss / 2), 1e-12);
  EXPECT_GT(r.weights, 0);
}

TEST(Depth, WithoutNormalizationTheNormShrinksByAboutOneOverSqrt6PerLayer) {
  // Linear's init has weight variance 1/(3 fan_in) and ReLU keeps half the
  // second moment, so each block scales the norm by about sqrt(1/6).
  DepthConfig c;
  c.archs = {"none"};
  c.min_depth = 4;
  c.max_depth = 8;
  c.seeds = 4;
  const DepthResult r = run_depth(c);
  const double factor = std::pow(r.points.back().mean / r.points.front().mean, 1.0 / 4);
  EXPECT_NEAR(factor, 1 / std::sqrt(6.0), 0.03);
}

TEST(Depth, CsvHasThePyTorchColumnsPlusSeeds) {
  DepthConfig c = small_config();
  c.max_depth = 1;
  const std::string csv = depth_csv(run_depth(c));
  EXPECT_EQ(csv.substr(0, csv.find('\n')), "kind,depth,mean_norm,sd_norm,seeds");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 5 * 2);
  EXPECT_NE(csv.find("\nbn-pre,1,"), std::string::npos);
  // Round trip through the reader.
  const auto rows = read_depth_csv(temp_file("roundtrip.csv", csv));
  ASSERT_EQ(rows.size(), 10u);
  EXPECT_EQ(rows[3].arch, "bn-pre");
  EXPECT_EQ(rows[3].depth, 1);
  EXPECT_EQ(rows[3].seeds, 3);
  c.seeds = 1;
  EXPECT_NE(depth_csv(run_depth(c)).find(",nan,1\n"), std::string::npos);  // no sd from one draw
}

TEST(Depth, TableShowsEveryDepthAndArchitecture) {
  DepthConfig c = small_config();
  c.archs = {"none", "ln-pre"};
  const std::string t = depth_table(run_depth(c));
  EXPECT_NE(t.find("ln-pre"), std::string::npos);
  EXPECT_EQ(t.find("bn-post"), std::string::npos);
  EXPECT_NE(t.find("\n    4 "), std::string::npos);
  EXPECT_NE(t.find("+-"), std::string::npos);
}

TEST(Depth, ConfigErrorsNameTheSetting) {
  auto message = [](DepthConfig c) {
    try {
      check_depth_config(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  DepthConfig c;
  c.archs = {"bn-mid"};
  EXPECT_NE(message(c).find("unknown architecture 'bn-mid'"), std::string::npos);
  c = {};
  c.max_depth = 5000;
  EXPECT_NE(message(c).find("max-depth must be in 0..1000, got 5000"), std::string::npos);
  c = {};
  c.min_depth = 3;
  c.max_depth = 2;
  EXPECT_NE(message(c).find("min-depth 3 is greater than max-depth 2"), std::string::npos);
  c = {};
  c.batch = 1;
  EXPECT_NE(message(c).find("batch must be in 2..65536, got 1"), std::string::npos);
  c = {};
  c.seeds = 0;
  EXPECT_NE(message(c).find("seeds must be in 1.."), std::string::npos);
  c = {};
  c.threads = -1;
  EXPECT_NE(message(c).find("threads must be in"), std::string::npos);
  EXPECT_THROW(run_depth(c), Error);
}

TEST(DepthCompare, PassesOnAgreementAndFailsOnEachCriterion) {
  auto with = [](std::vector<DepthRow> a, const std::vector<DepthRow>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  std::vector<DepthRow> none_ref, none_ours, none_slow;
  for (int d = 0; d < 30; ++d) {
    none_ref.push_back({"none", d, 12 * std::pow(0.408, d), 0.1 * std::pow(0.408, d), 20});
    none_ours.push_back({"none", d, 12 * std::pow(0.41, d), 0.1 * std::pow(0.41, d), 20});
    none_slow.push_back({"none", d, 12 * std::pow(0.45, d), 0.1 * std::pow(0.45, d), 20});
  }
  const auto ref = with(none_ref, flat("bn-pre", 5.0, 0.2, 20));

  const DepthAgreement ok = compare_depth(with(none_ours, flat("bn-pre", 5.05, 0.2, 20)), ref);
  EXPECT_TRUE(ok.ok) << ok.report;
  ASSERT_EQ(ok.checks.size(), 3u);
  EXPECT_NEAR(ok.checks[0].measure, 100 * (0.41 / 0.408 - 1), 1e-6);         // decay factor, in %
  EXPECT_NEAR(ok.checks[1].measure, 1.0, 1e-9);                              // +1 % mean
  EXPECT_NEAR(ok.checks[2].measure, 0.05 / std::sqrt(2 * 0.04 / 20), 1e-9);  // in SE

  // Decay factor 10 % off.
  EXPECT_FALSE(compare_depth(with(none_slow, flat("bn-pre", 5.0, 0.2, 20)), ref).ok);
  // Mean 4 % off (and far beyond 4 SE too).
  const DepthAgreement far = compare_depth(with(none_ours, flat("bn-pre", 5.2, 0.2, 20)), ref);
  EXPECT_FALSE(far.ok);
  EXPECT_FALSE(far.checks[1].ok);
  EXPECT_NE(far.report.find("FAIL"), std::string::npos);
  // The mean within 3 % but one depth 6 SE away.
  auto spike = flat("bn-pre", 5.0, 0.2, 20);
  spike[17].mean = 5.0 + 6 * std::sqrt(2 * 0.04 / 20);
  const DepthAgreement one = compare_depth(with(none_ours, spike), ref);
  EXPECT_TRUE(one.checks[1].ok);
  EXPECT_FALSE(one.checks[2].ok);
  EXPECT_NE(one.checks[2].what.find("depth 17"), std::string::npos);
  // Nothing in common: not an agreement.
  EXPECT_FALSE(compare_depth(flat("ln-post", 9, 0.3, 20), ref).ok);
}

TEST(DepthCompare, ReaderNamesTheFileAndLine) {
  auto message = [](const std::string& path) {
    try {
      read_depth_csv(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message("/nonexistent/depth.csv").find("/nonexistent/depth.csv"), std::string::npos);
  EXPECT_NE(message(temp_file("hdr.csv", "a,b\n")).find(":1: expected the header"),
            std::string::npos);
  EXPECT_NE(message(temp_file("num.csv", "kind,depth,mean_norm,sd_norm\nnone,0,x,1\n"))
                .find(":2: column mean_norm is not a number: 'x'"),
            std::string::npos);
  EXPECT_NE(message(temp_file("cols.csv", "kind,depth,mean_norm,sd_norm\nnone,0,1\n"))
                .find(":2: expected 4 columns, got 3"),
            std::string::npos);
  const auto rows =
      read_depth_csv(temp_file("ok.csv", "kind,depth,mean_norm,sd_norm\r\nnone,3,0.5,0.01\r\n"));
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].seeds, 20);  // PyTorch's reference: 20 seeds
}
