#include "normlab/build_info.hpp"
#include "normlab/distributed.hpp"

#include <fstream>
#include <vector>

#ifndef NORMLAB_ARCH
#define NORMLAB_ARCH "unknown"
#endif

namespace normlab {

std::string build_arch() {
  return NORMLAB_ARCH;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  return "unknown";
}

std::string cpu_isa() {
  // __builtin_cpu_supports asks CPUID (and the OS's XSAVE state), not the build.
  __builtin_cpu_init();
  std::string out;
  auto add = [&out](const std::string& s) { out += (out.empty() ? "" : ", ") + s; };
  if (__builtin_cpu_supports("avx512f")) {
    std::string parts = "F";
    if (__builtin_cpu_supports("avx512cd")) parts += ", CD";
    if (__builtin_cpu_supports("avx512bw")) parts += ", BW";
    if (__builtin_cpu_supports("avx512dq")) parts += ", DQ";
    if (__builtin_cpu_supports("avx512vl")) parts += ", VL";
    add("AVX-512 (" + parts + ")");
  }
  if (__builtin_cpu_supports("avx2")) add("AVX2");
  if (__builtin_cpu_supports("fma")) add("FMA");
  if (out.empty() && __builtin_cpu_supports("avx")) add("AVX");
  if (out.empty() && __builtin_cpu_supports("sse4.2")) add("SSE4.2");
  return out.empty() ? "SSE2" : out;
}

std::string build_summary() {
  std::string compiled;
  for (const auto& l : kernel_isas_compiled()) {
    if (!compiled.empty()) compiled += ", ";
    compiled += l;
  }
  return "normlab 0.1.0, kernels for " + build_isa() + " (level " + kernel_isa() + " of " +
         compiled + "; -march=" + build_arch() + "); CPU: " + cpu_model() + " (" + cpu_isa() +
         "); mpi: " + (built_with_mpi() ? "yes" : "no");
}

}  // namespace normlab
