#include "normlab/profile.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <map>

namespace normlab::profile {

namespace detail {
std::atomic<bool> g_enabled{false};
}

namespace {

struct Node {
  const char* phase;
  const void* key;
  int parent;
  Row row;
  double child_seconds = 0;
};

// Touched only by the main thread (Scope ignores every other thread).
std::vector<Node> g_nodes;
int g_current = -1;  // innermost open scope

}  // namespace

void set_enabled(bool on) {
  detail::g_enabled.store(on, std::memory_order_relaxed);
}

void reset() {
  g_nodes.clear();
  g_current = -1;
}

void Scope::open(const char* phase, const void* key, std::string (*label)(const void*),
                 const void* label_arg) {
  // The main thread only: outside parallel regions, or as thread 0 of an outermost one.
  if (omp_get_level() > 1 || omp_get_thread_num() != 0) return;
  int found = -1;
  for (int i = 0; i < static_cast<int>(g_nodes.size()); ++i) {
    const Node& n = g_nodes[i];
    if (n.parent == g_current && n.key == key && n.phase == phase) {
      found = i;
      break;
    }
  }
  if (found < 0) {
    Node n{phase, key, g_current, {}};
    n.row.phase = phase;
    n.row.label = label ? label(label_arg) : std::string(phase);
    n.row.depth = g_current < 0 ? 0 : g_nodes[g_current].row.depth + 1;
    g_nodes.push_back(std::move(n));
    found = static_cast<int>(g_nodes.size()) - 1;
  }
  row_ = found;
  parent_ = g_current;
  g_current = found;
  start_ = std::chrono::steady_clock::now();
}

void Scope::close() {
  const double dt =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  // reset() while a scope was open: the row is gone, nothing to record.
  if (row_ >= static_cast<int>(g_nodes.size())) return;
  Node& n = g_nodes[row_];
  n.row.seconds += dt;
  ++n.row.calls;
  if (parent_ >= 0) g_nodes[parent_].child_seconds += dt;
  g_current = parent_;
}

std::vector<Row> rows() {
  // Depth-first order: each row followed by its children, in first-opened order.
  std::vector<Row> out;
  auto visit = [&](auto&& self, int parent) -> void {
    for (int i = 0; i < static_cast<int>(g_nodes.size()); ++i) {
      if (g_nodes[i].parent != parent) continue;
      Row r = g_nodes[i].row;
      r.self_seconds = r.seconds - g_nodes[i].child_seconds;
      out.push_back(r);
      self(self, i);
    }
  };
  visit(visit, -1);
  return out;
}

std::string report(double total_seconds, int64_t steps) {
  const std::vector<Row> all = rows();
  const double per_step = steps > 0 ? 1e3 / static_cast<double>(steps) : 0.0;
  auto pct = [&](double s) { return total_seconds > 0 ? 100.0 * s / total_seconds : 0.0; };
  size_t width = 24;
  for (const Row& r : all) width = std::max(width, 2 * r.depth + r.label.size());
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-*s %8s %10s %10s %7s\n", static_cast<int>(width), "phase",
                "calls", "ms/step", "self ms", "self %");
  out += line;
  double covered = 0;
  std::map<std::string, double> by_kind;  // self time summed over rows with the same phase
  for (size_t i = 0; i < all.size(); ++i) {
    const Row& r = all[i];
    if (r.depth == 0) covered += r.seconds;
    by_kind[r.phase] += r.self_seconds;
    std::snprintf(line, sizeof line, "%-*s %8lld %10.3f %10.3f %6.1f%%\n", static_cast<int>(width),
                  (std::string(2 * r.depth, ' ') + r.label).c_str(),
                  static_cast<long long>(r.calls), r.seconds * per_step, r.self_seconds * per_step,
                  pct(r.self_seconds));
    out += line;
  }
  const double rest = std::max(0.0, total_seconds - covered);
  std::snprintf(line, sizeof line, "%-*s %8s %10.3f %10.3f %6.1f%%\n", static_cast<int>(width),
                "(outside every scope)", "", rest * per_step, rest * per_step, pct(rest));
  out += line;
  std::snprintf(line, sizeof line, "%-*s %8lld %10.3f %10s %6.1f%%\n", static_cast<int>(width),
                "total", static_cast<long long>(steps), total_seconds * per_step, "", 100.0);
  out += line;
  out += "self time by phase:\n";
  std::vector<std::pair<double, std::string>> kinds;
  for (const auto& [k, s] : by_kind) kinds.push_back({s, k});
  std::sort(kinds.rbegin(), kinds.rend());
  for (const auto& [s, k] : kinds) {
    std::snprintf(line, sizeof line, "  %-22s %10.3f ms/step %6.1f%%\n", k.c_str(), s * per_step,
                  pct(s));
    out += line;
  }
  return out;
}

}  // namespace normlab::profile
