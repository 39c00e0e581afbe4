// `normlab bench`: flag validation and the CSV table, end to end on the binary.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <sstream>
#include <string>

namespace {

struct CliRun {
  int code;
  std::string out;  // stdout and stderr
};

CliRun run_normlab(const std::string& args) {
  const std::string cmd = std::string(NORMLAB_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(CliBench, RejectsBadFlagsNamingThem) {
  const struct {
    const char* args;
    const char* message;
  } cases[] = {
      {"bench --threads 0", "--threads must be between 1 and 1024, got 0"},
      {"bench --repeats 0", "--repeats must be between 1 and 1000, got 0"},
      {"bench --min-time -1", "--min-time must be in (0, 10] seconds, got -1"},
      {"bench --shapes 12x", "--shapes: shape '12x'"},
      {"bench --shapes 4096x0", "--shapes: shape '4096x0'"},
      {"bench --shapes 100000x100000", "exceeds the limit"},
      {"bench --kernels rmsnorm_x", "--kernels: unknown kernel 'rmsnorm_x'"},
  };
  for (const auto& c : cases) {
    const CliRun r = run_normlab(c.args);
    EXPECT_EQ(r.code, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.args << "\n" << r.out;
  }
}

TEST(CliBench, PrintsCsvForEveryKernelAndPass) {
  const CliRun r =
      run_normlab("bench --threads 1 --shapes 8x16,3x5 --repeats 1 --min-time 0.001 --csv");
  ASSERT_EQ(r.code, 0) << r.out;
  std::istringstream lines(r.out);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line, "threads,N,D,cache,kernel,pass,seconds,gbps,copy_gbps,pct_copy,L,isa");
  int rows = 0, kernel_rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    EXPECT_EQ(line.rfind("1,", 0), 0u) << line;                 // threads column
    EXPECT_NE(line.find(",warm,"), std::string::npos) << line;  // small shapes stay warm
    if (line.find(",fwd,") != std::string::npos || line.find(",fwd+bwd,") != std::string::npos)
      ++kernel_rows;
  }
  EXPECT_EQ(rows, 2 * 13);  // per shape: copy + 6 kernels x 2 passes
  EXPECT_EQ(kernel_rows, 2 * 12);
}

}  // namespace
