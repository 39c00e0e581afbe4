// normlab --version names the ISA the kernels were built for and the CPU it runs on.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "normlab/build_info.hpp"

namespace {

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  return out;
}

TEST(BuildInfo, TheBuiltIsaIsOneTheCpuHas) {
  const std::string built = normlab::build_isa(), cpu = normlab::cpu_isa();
  // A binary that uses an extension the CPU lacks would have died already; this
  // checks that the two reports agree with each other.
  if (built == "AVX-512" || built == "AVX2") {
    EXPECT_NE(cpu.find(built), std::string::npos) << cpu;
  }
  EXPECT_FALSE(normlab::build_arch().empty());
  EXPECT_NE(normlab::cpu_model(), "");
}

TEST(BuildInfo, VersionNamesIsaArchAndCpu) {
  const std::string out = run(std::string(NORMLAB_BINARY) + " --version");
  EXPECT_NE(out.find("kernels for " + normlab::build_isa()), std::string::npos) << out;
  EXPECT_NE(out.find("-march=" + normlab::build_arch()), std::string::npos) << out;
  EXPECT_NE(out.find(normlab::cpu_model()), std::string::npos) << out;
}

}  // namespace
