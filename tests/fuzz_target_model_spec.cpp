// The libFuzzer target fuzz/fuzz_model_spec.cpp compiled into the test suite under
// another name, so tests/test_fuzz_regressions.cpp can replay inputs through it.
#define LLVMFuzzerTestOneInput normlab_fuzz_target_model_spec
#include "../fuzz/fuzz_model_spec.cpp"
