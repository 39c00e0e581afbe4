// The depth experiment's outputs: CSV, a table for the terminal, and the plot.
#include <cmath>
#include <cstdio>
#include <map>

#include "normlab/depth.hpp"
#include "normlab/plot.hpp"

namespace normlab {
namespace {

std::string format(const char* fmt, double v) {
  if (std::isnan(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string input_str(const Shape& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += 'x';
    out += std::to_string(s[i]);
  }
  return out;
}

}  // namespace

std::string depth_csv(const DepthResult& r) {
  std::string s = "kind,depth,mean_norm,sd_norm,seeds\n";
  for (const auto& p : r.points)
    s += p.arch + "," + std::to_string(p.depth) + "," + format("%.6g", p.mean) + "," +
         format("%.6g", p.sd) + "," + std::to_string(p.norms.size()) + "\n";
  return s;
}

std::string depth_table(const DepthResult& r) {
  const DepthConfig& c = r.config;
  const bool spread = c.seeds > 1;
  std::string s = "Output norm of a freshly initialised MLP (width " + std::to_string(c.width) +
                  ", " + std::to_string(c.outputs) + " outputs) on a batch of " +
                  std::to_string(c.batch) + " N(0,1) inputs of " + input_str(c.input) + ", " +
                  (spread ? "mean +- sd over " + std::to_string(c.seeds) + " draws" : "one draw") +
                  ":\n\n";
  const int col = spread ? 22 : 13;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%5s", "depth");
  s += buf;
  for (const auto& a : c.archs) {
    std::snprintf(buf, sizeof buf, "%*s", col, a.c_str());
    s += buf;
  }
  s += "\n";
  std::map<std::pair<std::string, int>, const DepthPoint*> at;
  for (const auto& p : r.points) at[{p.arch, p.depth}] = &p;
  for (int d = c.min_depth; d <= c.max_depth; ++d) {
    std::snprintf(buf, sizeof buf, "%5d", d);
    s += buf;
    for (const auto& a : c.archs) {
      const DepthPoint& p = *at.at({a, d});
      std::string cell = format("%.4g", p.mean);
      if (spread) cell += " +- " + format("%.2g", p.sd);
      std::snprintf(buf, sizeof buf, "%*s", col, cell.c_str());
      s += buf;
    }
    s += "\n";
  }
  return s;
}

void plot_depth(const DepthResult& r, const std::string& png_path) {
  const DepthConfig& c = r.config;
  std::vector<Series> series;
  for (const auto& a : c.archs) {
    Series s;
    s.label = a;
    for (const auto& p : r.points) {
      if (p.arch != a) continue;
      s.x.push_back(p.depth);
      s.y.push_back(p.mean);
      if (c.seeds > 1) s.y_err.push_back(p.sd);
    }
    series.push_back(std::move(s));
  }
  PlotSpec spec;
  spec.title = "Output norm of a fresh MLP vs depth (width " + std::to_string(c.width) +
               ", batch " + std::to_string(c.batch) + ", " +
               (c.seeds > 1 ? "mean +- sd of " + std::to_string(c.seeds) + " draws)" : "one draw)");
  spec.xlabel = "depth (hidden blocks)";
  spec.ylabel = "Frobenius norm of the output";
  spec.log_y = true;
  plot_lines(png_path, spec, series);
}

}  // namespace normlab
