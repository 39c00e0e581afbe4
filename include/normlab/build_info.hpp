// What this build of normlab was compiled for, and what the running CPU offers:
// benchmark figures are only comparable when both are named beside them.
#pragma once
#include <string>

namespace normlab {

// The -march value of the build (CMake's NORMLAB_ARCH): "native", "x86-64-v2", ...
std::string build_arch();

// The widest vector extension the kernels were compiled to use, from the
// compiler's predefined macros: "AVX-512", "AVX2", "AVX", "SSE4.2" or "SSE2".
std::string build_isa();

// The CPU's model name (/proc/cpuinfo) and its vector extensions as this
// process sees them (e.g. "AVX-512 (F, CD, BW, DQ, VL), AVX2, FMA"); "unknown" if unreadable.
std::string cpu_model();
std::string cpu_isa();

// One line for --version: "normlab 0.1.0, kernels for AVX2 (-march=native); CPU: ... (AVX2, FMA)".
std::string build_summary();

}  // namespace normlab
