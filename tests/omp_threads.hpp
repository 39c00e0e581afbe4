// Sets the OpenMP thread count for one scope (tests that vary the split of work).
#pragma once
#include <omp.h>

class Threads {
 public:
  explicit Threads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};
