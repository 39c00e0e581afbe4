// Where the time of a training run goes: wall-clock timers around the phases
// of a step (data, each layer's forward and backward, the weight norm, the
// matrix products, loss, optimizer), for `normlab train --profile`.
//
//   profile::set_enabled(true);
//   { profile::Scope s("optimizer"); opt.step(); }
//   std::cout << profile::report(epoch_seconds, steps);
//
// Scopes nest: each records its inclusive time under its parent's entry, so
// "layer 0 forward" and its child "sgemm" are separate rows and the report
// shows both inclusive and exclusive (self) time. Off by default, a Scope
// costs one load of a flag. Only the main thread is timed (outside parallel
// regions, or as thread 0 of an outermost one); other threads' Scopes do nothing.
// After the first step (which registers the rows) timing allocates nothing.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace normlab::profile {

namespace detail {
extern std::atomic<bool> g_enabled;
}

inline bool enabled() {
  return detail::g_enabled.load(std::memory_order_relaxed);
}
void set_enabled(bool on);
void reset();  // forgets every row (and its times)

struct Row {
  std::string phase;  // "forward", "sgemm", "optimizer": the report sums self time per phase
  std::string label;  // "layer 0 WeightNormLinear(784, 512) forward"
  int depth = 0;      // nesting level, 0 for the outermost scopes
  int64_t calls = 0;
  double seconds = 0;       // inclusive
  double self_seconds = 0;  // minus the time of its child rows
};
// Rows in the order they were first opened (children after their parent).
std::vector<Row> rows();

// A table of the rows: calls, ms per step (inclusive and self), share of
// `total_seconds`, and a last line for the time no scope covered.
std::string report(double total_seconds, int64_t steps);

class Scope {
 public:
  // `phase` must outlive the profile (a string literal). `key` tells apart
  // scopes with the same phase under the same parent (e.g. a layer's
  // address); `label` (called only the first time) names the row, else the phase.
  explicit Scope(const char* phase, const void* key = nullptr) {
    if (enabled()) open(phase, key, nullptr, nullptr);
  }
  template <typename LabelFn>
  Scope(const char* phase, const void* key, const LabelFn& label) {
    if (enabled())
      open(
          phase, key,
          [](const void* f) { return std::string((*static_cast<const LabelFn*>(f))()); }, &label);
  }
  ~Scope() {
    if (row_ >= 0) close();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void open(const char* phase, const void* key, std::string (*label)(const void*),
            const void* label_arg);
  void close();

  int row_ = -1;
  int parent_ = -1;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace normlab::profile
