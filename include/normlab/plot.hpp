// Line plots as PNG through gnuplot (Debian's gnuplot-nox), for the depth
// experiment and training curves. The PNG is written atomically.
#pragma once
#include <string>
#include <vector>

namespace normlab {

struct Series {
  std::string label;
  std::vector<double> x, y;
  std::vector<double> y_err;  // optional error bars (same length as y), empty for none
};

struct PlotSpec {
  std::string title, xlabel, ylabel;
  bool log_y = false;
  int width = 0, height = 0;  // pixels; 0: 1000 x 650
};

// Throws Error if gnuplot is missing or fails (naming png_path).
void plot_lines(const std::string& png_path, const PlotSpec& spec,
                const std::vector<Series>& series);

}  // namespace normlab
