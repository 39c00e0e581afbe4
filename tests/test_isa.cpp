// The fast kernels' instruction-set level (src/kernels/isa.hpp): reported by
// normlab::kernel_isa() and normlab --version, one the CPU supports, and forced
// lower (never higher) with NORMLAB_CPU_CAPABILITY. scripts/test-isa-level
// reruns the kernel tests at each level (ctest Isa.*.KernelTests).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "normlab/build_info.hpp"

namespace {

struct Run {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

// `normlab --version` with NORMLAB_CPU_CAPABILITY set to `level` (unset if empty).
Run version(const std::string& level, bool set = true) {
  const std::string env =
      set ? "NORMLAB_CPU_CAPABILITY=" + level + " " : "env -u NORMLAB_CPU_CAPABILITY ";
  const std::string cmd = env + NORMLAB_BINARY + " --version 2>&1; echo \"EXIT=$?\"";
  Run r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) r.out += buf;
  pclose(p);
  const auto at = r.out.rfind("EXIT=");
  if (at != std::string::npos) r.exit_code = std::atoi(r.out.c_str() + at + 5);
  return r;
}

int rank(const std::string& level) {
  if (level == "default") return 0;
  if (level == "avx2") return 1;
  if (level == "avx512") return 2;
  return -1;
}

TEST(KernelIsa, InUseIsCompiledAndSupported) {
  const std::string in_use = normlab::kernel_isa();
  const auto compiled = normlab::kernel_isas_compiled();
  EXPECT_NE(std::find(compiled.begin(), compiled.end(), in_use), compiled.end()) << in_use;
  EXPECT_GE(rank(in_use), 0) << in_use;
  EXPECT_LE(rank(in_use), rank(normlab::cpu_capability()));
  const char* forced = std::getenv("NORMLAB_CPU_CAPABILITY");
  if (forced && *forced) {
    EXPECT_EQ(in_use, forced);
  } else if (compiled.size() > 1) {
    // Unforced, a dispatching build runs the best level the CPU has.
    EXPECT_EQ(in_use, normlab::cpu_capability());
  }
  const std::string isa = normlab::build_isa();
  EXPECT_EQ(isa, in_use == "avx512" ? "AVX-512" : in_use == "avx2" ? "AVX2" : "SSE4.2");
}

TEST(KernelIsa, VersionNamesTheLevelInUseAndTheLevelsCompiled) {
  const char* forced = std::getenv("NORMLAB_CPU_CAPABILITY");
  const auto r = forced ? version(forced) : version("", false);
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("level " + normlab::kernel_isa() + " of "), std::string::npos) << r.out;
  for (const auto& l : normlab::kernel_isas_compiled())
    EXPECT_NE(r.out.find(l), std::string::npos) << r.out;
}

TEST(KernelIsa, BadValueIsAnErrorNamingTheVariable) {
  const auto r = version("avx1024");
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("NORMLAB_CPU_CAPABILITY='avx1024'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("default, avx2 or avx512"), std::string::npos) << r.out;
}

TEST(KernelIsa, ForcingEachLevelUpToTheCpus) {
  if (normlab::kernel_isas_compiled().size() == 1) GTEST_SKIP() << "single-ISA build";
  for (const std::string level : {"default", "avx2", "avx512"}) {
    const auto r = version(level);
    if (rank(level) <= rank(normlab::cpu_capability())) {
      EXPECT_EQ(r.exit_code, 0) << level << ": " << r.out;
      EXPECT_NE(r.out.find("level " + level + " of"), std::string::npos) << r.out;
    } else {
      // Above the CPU: an error, not a silent fallback.
      EXPECT_EQ(r.exit_code, 2) << level;
      EXPECT_NE(r.out.find("NORMLAB_CPU_CAPABILITY=" + level), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("supports at most " + normlab::cpu_capability()), std::string::npos)
          << r.out;
    }
  }
}

}  // namespace
