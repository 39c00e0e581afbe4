// The libFuzzer target fuzz/fuzz_checkpoint.cpp compiled into the test suite under
// another name, so tests/test_fuzz_regressions.cpp can replay inputs through it.
#define LLVMFuzzerTestOneInput normlab_fuzz_target_checkpoint
#include "../fuzz/fuzz_checkpoint.cpp"
