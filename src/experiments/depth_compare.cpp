// Agreement of depth results with a reference (PyTorch's depth_torch.csv).
// The criteria are issue 2's: see depth.hpp and docs/depth.md.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "normlab/depth.hpp"
#include "normlab/error.hpp"

namespace normlab {
namespace {

constexpr double kMeanTolerance = 0.03;   // normalized: average norm over depths 2-29
constexpr double kMaxStandardErrors = 4;  // normalized: every depth
constexpr double kDecayTolerance = 0.05;  // none: per-layer factor of the log-linear fit
constexpr int kAverageFrom = 2, kFitFrom = 1, kLastDepth = 29;

using Table = std::map<std::pair<std::string, int>, DepthRow>;

Table index(const std::vector<DepthRow>& rows) {
  Table t;
  for (const auto& r : rows) t[{r.arch, r.depth}] = r;
  return t;
}

// Slope of the least-squares line through (x, y).
double slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double parse_number(const std::string& text, const std::string& path, int line, const char* col) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size())
    fail(path, ":", line, ": column ", col, " is not a number: '", text, "'");
  return v;
}

}  // namespace

std::vector<DepthRow> depth_rows(const DepthResult& r) {
  std::vector<DepthRow> rows;
  for (const auto& p : r.points)
    rows.push_back({p.arch, p.depth, p.mean, p.sd, static_cast<int>(p.norms.size())});
  return rows;
}

std::vector<DepthRow> read_depth_csv(const std::string& path, int default_seeds) {
  std::ifstream in(path);
  if (!in) fail("cannot read depth results ", path, ": no such file or not readable");
  std::string line;
  if (!std::getline(in, line)) fail(path, ": empty file, expected a header line");
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const bool has_seeds = line == "kind,depth,mean_norm,sd_norm,seeds";
  if (!has_seeds && line != "kind,depth,mean_norm,sd_norm")
    fail(path, ":1: expected the header 'kind,depth,mean_norm,sd_norm[,seeds]', got '", line, "'");
  std::vector<DepthRow> rows;
  for (int n = 2; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string cell; std::getline(ss, cell, ',');) f.push_back(cell);
    if (f.size() != (has_seeds ? 5u : 4u))
      fail(path, ":", n, ": expected ", has_seeds ? 5 : 4, " columns, got ", f.size());
    DepthRow r;
    r.arch = f[0];
    const double depth = parse_number(f[1], path, n, "depth");
    if (depth < 0 || depth != std::floor(depth) || depth > 1e6)
      fail(path, ":", n, ": depth must be a whole number >= 0, got ", f[1]);
    r.depth = static_cast<int>(depth);
    r.mean = parse_number(f[2], path, n, "mean_norm");
    r.sd = f[3] == "nan" ? std::nan("") : parse_number(f[3], path, n, "sd_norm");
    r.seeds = has_seeds ? static_cast<int>(parse_number(f[4], path, n, "seeds")) : default_seeds;
    if (!(r.mean >= 0) || r.seeds < 1)
      fail(path, ":", n, ": mean_norm must be >= 0 and seeds >= 1");
    rows.push_back(r);
  }
  if (rows.empty()) fail(path, ": no rows after the header");
  return rows;
}

DepthAgreement compare_depth(const std::vector<DepthRow>& ours_rows,
                             const std::vector<DepthRow>& ref_rows) {
  const Table ours = index(ours_rows), ref = index(ref_rows);
  DepthAgreement g;
  std::vector<std::string> archs;
  for (const auto& r : ours_rows)
    if (ref.count({r.arch, r.depth}) && (archs.empty() || archs.back() != r.arch))
      archs.push_back(r.arch);

  for (const auto& arch : archs) {
    // Depths present in both, and the pairs (ours, reference) at each.
    std::vector<std::pair<const DepthRow*, const DepthRow*>> both;
    for (const auto& [key, row] : ours)
      if (key.first == arch && ref.count(key)) both.push_back({&row, &ref.at(key)});
    if (arch == "none") {
      std::vector<double> x, ya, yb;
      for (auto [a, b] : both)
        if (a->depth >= kFitFrom && a->depth <= kLastDepth && a->mean > 0 && b->mean > 0) {
          x.push_back(a->depth);
          ya.push_back(std::log(a->mean));
          yb.push_back(std::log(b->mean));
        }
      DepthCheck c;
      c.arch = arch;
      c.what = "decay factor per layer, depths " + std::to_string(kFitFrom) + "-" +
               std::to_string(kLastDepth);
      c.unit = "%";
      c.limit = 100 * kDecayTolerance;
      if (x.size() >= 3) {
        c.ours = std::exp(slope(x, ya));
        c.reference = std::exp(slope(x, yb));
        c.measure = 100 * (c.ours / c.reference - 1);
        c.ok = std::abs(c.measure) <= c.limit;
      } else {
        c.what += " (fewer than 3 depths to fit)";
      }
      g.checks.push_back(c);
      continue;
    }
    DepthCheck avg;
    avg.arch = arch;
    avg.what =
        "mean norm over depths " + std::to_string(kAverageFrom) + "-" + std::to_string(kLastDepth);
    avg.unit = "%";
    avg.limit = 100 * kMeanTolerance;
    int n = 0;
    for (auto [a, b] : both)
      if (a->depth >= kAverageFrom && a->depth <= kLastDepth) {
        avg.ours += a->mean;
        avg.reference += b->mean;
        ++n;
      }
    if (n > 0) {
      avg.ours /= n;
      avg.reference /= n;
      avg.measure = 100 * (avg.ours / avg.reference - 1);
      avg.ok = std::abs(avg.measure) <= avg.limit;
    } else {
      avg.what += " (no depths in range)";
    }
    g.checks.push_back(avg);

    // The depth furthest from the reference in standard errors of the difference.
    // With a single draw of ours, its spread is taken to be the reference's.
    DepthCheck gap;
    gap.arch = arch;
    gap.what = "largest gap";
    gap.unit = "SE";
    gap.limit = kMaxStandardErrors;
    gap.ok = !both.empty();
    double worst = -1;
    for (auto [a, b] : both) {
      const double sa = std::isnan(a->sd) ? b->sd : a->sd;
      const double se = std::sqrt(sa * sa / a->seeds + b->sd * b->sd / b->seeds);
      const double z = std::abs(a->mean - b->mean) / se;
      if (!(z <= worst)) {  // NaN (zero spread and a difference) counts as worst
        worst = std::isnan(z) ? INFINITY : z;
        gap.what = "largest gap (depth " + std::to_string(a->depth) + ")";
        gap.ours = a->mean;
        gap.reference = b->mean;
        gap.measure = worst;
      }
    }
    gap.ok = gap.ok && gap.measure <= gap.limit;
    g.checks.push_back(gap);
  }

  g.ok = !g.checks.empty();
  std::string& s = g.report;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-8s %-38s %12s %12s %10s %8s  %s\n", "arch", "check", "normlab",
                "reference", "difference", "limit", "result");
  s += buf;
  for (const auto& c : g.checks) {
    g.ok = g.ok && c.ok;
    const std::string diff = c.unit == "%" ? fmt("%+.2f %%", c.measure) : fmt("%.2f SE", c.measure);
    const std::string limit = c.unit == "%" ? fmt("%.0f %%", c.limit) : fmt("%.0f SE", c.limit);
    std::snprintf(buf, sizeof buf, "%-8s %-38s %12.5g %12.5g %10s %8s  %s\n", c.arch.c_str(),
                  c.what.c_str(), c.ours, c.reference, diff.c_str(), limit.c_str(),
                  c.ok ? "ok" : "FAIL");
    s += buf;
  }
  if (g.checks.empty()) s += "(no architecture and depth in common with the reference)\n";
  return g;
}

}  // namespace normlab
