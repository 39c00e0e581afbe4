// plot_lines: a real PNG through gnuplot, written atomically; clear errors when
// gnuplot is missing or the series are inconsistent.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "normlab/error.hpp"
#include "normlab/plot.hpp"

using namespace normlab;
namespace fs = std::filesystem;

namespace {

bool have_gnuplot() {
  return std::system("gnuplot --version > /dev/null 2>&1") == 0;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<Series> two_series(bool errors) {
  Series a{"it's a 'quoted' label", {0, 1, 2}, {10, 1, 0.1}, {}};
  Series b{"flat", {0, 1, 2}, {5, 5, 5}, {}};
  if (errors) a.y_err = b.y_err = {0.5, 0.1, 0.01};
  return {a, b};
}

// Runs f with PATH set to `path`, restoring it afterwards.
template <typename F>
void with_path(const char* path, F f) {
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  setenv("PATH", path, 1);
  try {
    f();
  } catch (...) {
    setenv("PATH", saved.c_str(), 1);
    throw;
  }
  setenv("PATH", saved.c_str(), 1);
}

}  // namespace

TEST(Plot, WritesAPngThroughGnuplot) {
  if (!have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed";
  const fs::path png = fs::temp_directory_path() / "normlab_test_plot.png";
  fs::remove(png);
  PlotSpec spec{"title with 'quotes'", "x", "y", true};
  plot_lines(png.string(), spec, two_series(true));
  const std::string bytes = read(png);
  ASSERT_GT(bytes.size(), 1000u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  plot_lines(png.string(), {"linear", "x", "y", false}, two_series(false));  // replaces it
  EXPECT_EQ(read(png).substr(1, 3), "PNG");
  for (const auto& e : fs::directory_iterator(png.parent_path()))  // no temporaries left
    EXPECT_EQ(e.path().filename().string().find("normlab_test_plot.png.tmp"), std::string::npos);
}

TEST(Plot, MissingGnuplotIsAClearErrorAndLeavesNoFile) {
  const fs::path png = fs::temp_directory_path() / "normlab_test_noplot.png";
  fs::remove(png);
  with_path("/nonexistent", [&] {
    try {
      plot_lines(png.string(), {"t", "x", "y", false}, two_series(false));
      FAIL() << "expected an Error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(png.string()), std::string::npos) << m;
      EXPECT_NE(m.find("gnuplot is not installed"), std::string::npos) << m;
    }
  });
  EXPECT_FALSE(fs::exists(png));
}

TEST(Plot, InconsistentSeriesAreRejected) {
  auto s = two_series(false);
  s[1].y.pop_back();
  EXPECT_THROW(plot_lines("/tmp/normlab_test_bad.png", {}, s), Error);
  EXPECT_THROW(plot_lines("/tmp/normlab_test_bad.png", {}, {}), Error);
  // Nothing positive to draw on a log scale.
  Series neg{"neg", {0, 1}, {-1, 0}, {}};
  EXPECT_THROW(plot_lines("/tmp/normlab_test_bad.png", {"t", "x", "y", true}, {neg}), Error);
}

TEST(Plot, AnUnwritableDestinationNamesThePath) {
  if (!have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed";
  try {
    plot_lines("/nonexistent-dir/plot.png", {"t", "x", "y", false}, two_series(false));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/plot.png"), std::string::npos);
  }
}
