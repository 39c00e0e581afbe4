// The test binary's main. ctest -j2 runs two test processes on two cores; with
// OpenMP's default waiting policy their threads spin and starve each other
// (measured: a 0.1 s training run took 6 s). Unless the caller chose a policy,
// the binary re-executes itself once with OMP_WAIT_POLICY=PASSIVE, which must be
// set before libgomp initialises.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

int main(int argc, char** argv) {
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
