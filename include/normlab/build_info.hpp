// What this build of normlab was compiled for, and what the running CPU offers:
// benchmark figures are only comparable when both are named beside them.
#pragma once
#include <string>
#include <vector>

namespace normlab {

// CMake's NORMLAB_ARCH: "dispatch" (the default: the library is compiled for
// x86-64-v2 and the fast kernels also for x86-64-v3 and -v4, chosen at run
// time) or the one -march value of a single-ISA build ("native", ...).
std::string build_arch();

// The instruction-set level the fast kernels run at in this process, in
// PyTorch's ATEN_CPU_CAPABILITY names: "default" (x86-64-v2, SSE4.2), "avx2"
// (x86-64-v3: AVX2, FMA) or "avx512" (x86-64-v4: AVX-512 F/BW/DQ/VL). The best
// level the CPU and OS support among those compiled, unless the environment
// variable NORMLAB_CPU_CAPABILITY names a lower one. Chosen once per process.
// Throws normlab::Error (naming the variable and its value) if
// NORMLAB_CPU_CAPABILITY is not one of the three names, or names a level above
// the CPU's (no silent fallback), or, in a single-ISA build, another level
// than the one compiled. Every fast kernel call does the same check.
std::string kernel_isa();

// The levels this build has kernels for: {"default", "avx2", "avx512"} with
// dispatch, one level in a single-ISA build.
std::vector<std::string> kernel_isas_compiled();

// The best level the running CPU (and OS) supports, whatever was compiled.
std::string cpu_capability();

// The vector extension of the kernels in use (kernel_isa()): "SSE4.2", "AVX2" or "AVX-512".
std::string build_isa();

// The CPU's model name (/proc/cpuinfo) and its vector extensions as this
// process sees them (e.g. "AVX-512 (F, CD, BW, DQ, VL), AVX2, FMA"); "unknown" if unreadable.
std::string cpu_model();
std::string cpu_isa();

// One line for --version: "normlab 0.1.0, kernels for AVX2 (level avx2 of default, avx2,
// avx512; -march=dispatch); CPU: ... (AVX2, FMA)".
std::string build_summary();

}  // namespace normlab
