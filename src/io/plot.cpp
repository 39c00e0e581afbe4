// Plots through gnuplot: the data and a script go to a private temporary
// directory, gnuplot renders there (pngcairo), and the PNG is then written to
// its destination atomically, so a failed plot never leaves a half-written file.
#include "normlab/plot.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "normlab/atomic_file.hpp"
#include "normlab/error.hpp"

extern char** environ;

namespace normlab {
namespace {

namespace fs = std::filesystem;

// A directory under $TMPDIR (or /tmp) removed with everything in it on scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& for_path) {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base && *base ? base : "/tmp") + "/normlab-plot-XXXXXX";
    if (!::mkdtemp(pattern.data()))
      fail("cannot draw ", for_path, ": cannot create a temporary directory from ", pattern, ": ",
           std::strerror(errno));
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A gnuplot single-quoted string: only ' needs escaping, by doubling it.
std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string number(double v) {
  if (!std::isfinite(v)) return "NaN";  // gnuplot skips undefined points
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void write_text(const std::string& path, const std::string& text, const std::string& for_path) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.flush()) fail("cannot draw ", for_path, ": cannot write ", path);
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs gnuplot on `script` with its output in `log`; returns the exit status.
int run_gnuplot(const std::string& script, const std::string& log, const std::string& for_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string prog = "gnuplot";
  char* argv[] = {prog.data(), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = 0;
  const int err = ::posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err == ENOENT)
    fail("cannot draw ", for_path,
         ": gnuplot is not installed or not on PATH (Debian: apt-get install gnuplot-nox)");
  if (err != 0) fail("cannot draw ", for_path, ": cannot start gnuplot: ", std::strerror(err));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("cannot draw ", for_path, ": lost track of gnuplot");
  return status;
}

}  // namespace

void plot_lines(const std::string& png_path, const PlotSpec& spec,
                const std::vector<Series>& series) {
  if (series.empty()) fail("cannot draw ", png_path, ": no series to plot");
  bool any_point = false;
  for (const auto& s : series) {
    if (s.x.size() != s.y.size() || (!s.y_err.empty() && s.y_err.size() != s.y.size()))
      fail("cannot draw ", png_path, ": series '", s.label, "' has ", s.x.size(), " x, ",
           s.y.size(), " y and ", s.y_err.size(), " error values");
    for (double y : s.y) any_point = any_point || (std::isfinite(y) && (!spec.log_y || y > 0));
  }
  if (!any_point)
    fail("cannot draw ", png_path, ": no finite", spec.log_y ? " positive" : "", " values to plot");

  TempDir dir(png_path);
  const std::string data = dir.path() + "/data.dat", script = dir.path() + "/plot.gp",
                    png = dir.path() + "/plot.png", log = dir.path() + "/gnuplot.log";
  std::string d;
  for (const auto& s : series) {
    d += "# " + s.label + "\n";
    for (size_t i = 0; i < s.x.size(); ++i) {
      d += number(s.x[i]);
      d += ' ';
      d += number(s.y[i]);
      if (!s.y_err.empty()) {
        d += ' ';
        d += number(s.y_err[i]);
      }
      d += '\n';
    }
    d += "\n\n";  // gnuplot's separator between data sets (index 0, 1, ...)
  }
  write_text(data, d, png_path);

  const int w = spec.width > 0 ? spec.width : 1000, h = spec.height > 0 ? spec.height : 650;
  std::string g = "set terminal pngcairo size " + std::to_string(w) + "," + std::to_string(h) +
                  " noenhanced font 'sans," + (spec.width > 0 ? "10" : "11") + "'\n";
  g += "set output " + quoted(png) + "\n";
  g += "set title " + quoted(spec.title) + "\n";
  g += "set xlabel " + quoted(spec.xlabel) + "\n";
  g += "set ylabel " + quoted(spec.ylabel) + "\n";
  // podo: gnuplot's colour-blind-friendly sequence; curves that coincide stay
  // distinguishable by their point shapes.
  g += "set colorsequence podo\nset grid\nset key outside right top\nset datafile missing 'NaN'\n";
  if (spec.log_y) g += "set logscale y\nset format y '%g'\n";
  g += "plot ";
  for (size_t i = 0; i < series.size(); ++i) {
    if (i) g += ", \\\n     ";
    g += quoted(data) + " index " + std::to_string(i);
    g += series[i].y_err.empty() ? " using 1:2 with linespoints" : " using 1:2:3 with yerrorlines";
    static const int kPointTypes[] = {7, 5, 9, 13, 11, 6, 4, 8};
    g += " linetype " + std::to_string(i + 1) + " pointtype " + std::to_string(kPointTypes[i % 8]) +
         " pointsize 0.8 linewidth 1.5 title " + quoted(series[i].label);
  }
  g += "\n";
  write_text(script, g, png_path);

  const int status = run_gnuplot(script, log, png_path);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !fs::exists(png) ||
      fs::file_size(png) == 0) {
    std::string why = read_bytes(log);
    if (why.size() > 600) why = why.substr(0, 600) + "...";
    fail("cannot draw ", png_path, ": gnuplot failed", why.empty() ? "" : ":\n", why);
  }
  write_file_atomic(png_path, read_bytes(png));
}

}  // namespace normlab
