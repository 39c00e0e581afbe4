// Counter-based random numbers: value i of a stream is mix(key, i), so a
// tensor can be filled in parallel, in any order, with the same result for
// any thread count. mix is SplitMix64's finaliser (Steele, Lea, Flood 2014),
// which passes BigCrush as a counter-based generator.
#pragma once
#include <cstdint>

namespace normlab {

inline uint64_t splitmix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : key_(splitmix64(seed ^ 0x6a09e667f3bcc909ULL)) {}

  // A new independent stream, e.g. one per layer or per experiment repeat.
  Rng fork(uint64_t stream) { return Rng(splitmix64(key_ + splitmix64(stream + 1)), 0); }

  uint64_t next_u64() { return splitmix64(key_ + 0x9e3779b97f4a7c15ULL * ++counter_); }
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal();                                                                // N(0, 1)
  uint64_t below(uint64_t n) { return next_u64() % n; }  // n << 2^64: bias negligible

  // out[i] = lo + (hi - lo) * u_i with u_i uniform in [0, 1); vectorised and parallel.
  template <typename T>
  void fill_uniform(T* out, int64_t n, double lo, double hi);
  template <typename T>
  void fill_normal(T* out, int64_t n, double mean = 0.0, double stddev = 1.0);

  uint64_t counter() const { return counter_; }
  void set_counter(uint64_t c) { counter_ = c; }

 private:
  Rng(uint64_t key, int) : key_(key) {}
  uint64_t key_;
  uint64_t counter_ = 0;
};

}  // namespace normlab
