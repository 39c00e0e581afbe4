// The libFuzzer target fuzz/fuzz_idx.cpp compiled into the test suite under
// another name, so tests/test_fuzz_regressions.cpp can replay inputs through it.
#define LLVMFuzzerTestOneInput normlab_fuzz_target_idx
#include "../fuzz/fuzz_idx.cpp"
