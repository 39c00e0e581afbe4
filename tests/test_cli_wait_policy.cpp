// The CLI's choice of OpenMP wait policy (apps/normlab/wait_policy.hpp): on a
// machine whose CPUs are all busy it re-executes with OMP_WAIT_POLICY=passive
// and says so; a policy the user set is left alone.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

namespace {

// Runs `env <env> normlab <args>`, returning stdout + stderr.
std::string run(const std::string& env, const std::string& args) {
  const std::string cmd = "env " + env + " " + NORMLAB_BINARY + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "popen failed";
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

const char* kQuickBench =
    "bench --threads 2 --shapes 8x16 --kernels layernorm --repeats 1 --min-time 0.001";

// Keeps every CPU busy with spinning threads while alive.
class BusyCpus {
 public:
  BusyCpus() {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    for (long i = 0; i < cpus; ++i)
      threads_.emplace_back([this] {
        while (!stop_.load(std::memory_order_relaxed)) {
        }
      });
  }
  ~BusyCpus() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

TEST(CliWaitPolicy, SleepsInsteadOfSpinningWhenTheCpusAreBusy) {
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2) GTEST_SKIP() << "one CPU: threads never wait";
  BusyCpus busy;
  const std::string out = run("-u OMP_WAIT_POLICY -u GOMP_SPINCOUNT", kQuickBench);
  EXPECT_NE(out.find("OMP_WAIT_POLICY=passive"), std::string::npos) << out;
  EXPECT_NE(out.find("layernorm"), std::string::npos) << out;  // and then ran
}

TEST(CliWaitPolicy, LeavesAPolicyTheUserChoseAlone) {
  BusyCpus busy;
  for (const char* env : {"OMP_WAIT_POLICY=active", "GOMP_SPINCOUNT=1000"}) {
    const std::string out = run(std::string("-u OMP_WAIT_POLICY ") + env, kQuickBench);
    EXPECT_EQ(out.find("OMP_WAIT_POLICY=passive"), std::string::npos) << env << "\n" << out;
    EXPECT_NE(out.find("layernorm"), std::string::npos) << out;
  }
}

TEST(CliWaitPolicy, OnlyComputeCommandsAreConcerned) {
  BusyCpus busy;
  const std::string out = run("-u OMP_WAIT_POLICY -u GOMP_SPINCOUNT", "model seed001");
  EXPECT_EQ(out.find("OMP_WAIT_POLICY"), std::string::npos) << out;
}

}  // namespace
