// Counts heap allocations made through operator new in this test binary, so a
// test can assert that a hot path (an optimizer step, a loss) allocates nothing.
// The replacement operators live in alloc_counter.cpp: only one file of the
// binary may replace them, so other tests should include this header rather
// than define their own.
#pragma once
#include <cstdint>

namespace normlab::testing {

// Allocations so far, by any thread.
int64_t allocation_count();

// Allocations made while running f.
template <typename F>
int64_t allocations_during(F&& f) {
  const int64_t before = allocation_count();
  f();
  return allocation_count() - before;
}

}  // namespace normlab::testing
