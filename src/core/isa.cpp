// Which instruction-set level the fast kernels run at (src/kernels/isa.hpp):
// the best one the CPU and the OS support among those compiled, or a lower one
// named by NORMLAB_CPU_CAPABILITY (default | avx2 | avx512, PyTorch's
// ATEN_CPU_CAPABILITY names). Asking for a level the CPU lacks is an error (the
// kernels would die on an illegal instruction), not a silent fallback.
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/isa.hpp"
#include "normlab/build_info.hpp"
#include "normlab/error.hpp"

namespace normlab {
namespace {

constexpr const char* kLevelNames[] = {"default", "avx2", "avx512"};
constexpr const char* kLevelIsas[] = {"SSE4.2", "AVX2", "AVX-512"};

// XCR0: the register state the OS saves on a context switch. AVX needs the
// SSE and YMM bits (0x6), AVX-512 also the opmask and ZMM bits (0xe0).
unsigned long long xcr0() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 1, ebx, ecx, edx;
  __asm__("cpuid" : "+a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "c"(0));
  if (!(ecx & (1u << 27))) return 0;  // no OSXSAVE: xgetbv would fault
  unsigned lo, hi;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
#else
  return 0;
#endif
}

int cpu_level() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const unsigned long long x = xcr0();
#if defined(__clang__)
  // Clang has no level names; these imply the rest of x86-64-v3 (F16C, LZCNT,
  // MOVBE) on every CPU made.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                  __builtin_cpu_supports("avx512cd");
#else
  // GCC's level names check every feature -march=x86-64-vN may use.
  const bool v3 = __builtin_cpu_supports("x86-64-v3");
  const bool v4 = __builtin_cpu_supports("x86-64-v4");
#endif
  if (v4 && (x & 0xe6) == 0xe6) return 2;
  if (v3 && (x & 0x6) == 0x6) return 1;
#endif
  return 0;
}

// The one level a single-ISA build (NORMLAB_ARCH=native, ...) was compiled for.
constexpr int native_level() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
  return 2;
#elif defined(__AVX2__) && defined(__FMA__)
  return 1;
#else
  return 0;
#endif
}

int parse_level(const std::string& v) {
  for (int l = 0; l < 3; ++l)
    if (v == kLevelNames[l]) return l;
  fail("NORMLAB_CPU_CAPABILITY='", v, "' is not a level: use default, avx2 or avx512");
}

int choose_level() {
  const int best = cpu_level();
  const char* env = std::getenv("NORMLAB_CPU_CAPABILITY");
  const bool forced = env && *env;
  const int asked = forced ? parse_level(env) : best;
  if (asked > best)
    fail("NORMLAB_CPU_CAPABILITY=", env, " asks for ", kLevelIsas[asked], " kernels but this CPU (",
         cpu_model(), ") supports at most ", kLevelNames[best], " (", kLevelIsas[best], ")");
#if NORMLAB_ISA_DISPATCH
  return asked;
#else
  if (forced && asked != native_level())
    fail("NORMLAB_CPU_CAPABILITY=", env, ": this build (-march=", build_arch(), ") has only the ",
         kLevelNames[native_level()], " kernels; build with -DNORMLAB_ARCH=dispatch to choose");
  return native_level();
#endif
}

}  // namespace

namespace detail {
int kernel_level() {
  static const int level = choose_level();
  return level;
}
}  // namespace detail

std::string kernel_isa() {
  return kLevelNames[detail::kernel_level()];
}

std::string cpu_capability() {
  return kLevelNames[cpu_level()];
}

std::vector<std::string> kernel_isas_compiled() {
#if NORMLAB_ISA_DISPATCH
  return {"default", "avx2", "avx512"};
#else
  return {kLevelNames[native_level()]};
#endif
}

std::string build_isa() {
  return kLevelIsas[detail::kernel_level()];
}

}  // namespace normlab
