#include "wait_policy.hpp"

#include "data_flags.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

namespace normlab::cli {
namespace {

// Runnable threads on the machine right now, from /proc/loadavg's fourth
// field ("running/total"); -1 if unreadable. Includes the reader itself.
int running_threads() {
  std::ifstream in("/proc/loadavg");
  std::string l1, l5, l15, running;
  if (!(in >> l1 >> l5 >> l15 >> running)) return -1;
  try {
    return std::stoi(running.substr(0, running.find('/')));
  } catch (const std::exception&) {
    return -1;
  }
}

bool is_compute_command(const char* name) {
  for (const char* c : {"train", "eval", "depth", "bench"})
    if (std::strcmp(name, c) == 0) return true;
  return false;
}

// The thread count asked for with --threads/-t N (or --threads=N), else OMP_NUM_THREADS, else 0.
int requested_threads(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--threads" || a == "-t") && i + 1 < argc) return std::atoi(argv[i + 1]);
    if (a.rfind("--threads=", 0) == 0) return std::atoi(a.c_str() + 10);
  }
  const char* env = std::getenv("OMP_NUM_THREADS");
  return env ? std::atoi(env) : 0;
}

}  // namespace

void choose_wait_policy(int argc, char** argv) {
  if (argc < 2 || !is_compute_command(argv[1])) return;
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (cpus < 2) return;
  // Under mpirun the other ranks on this machine want their threads too
  // (set_threads gives each rank its share of the cores by default).
  const int ranks = local_mpi_ranks();
  int threads = requested_threads(argc, argv);
  if (threads <= 0 || threads > cpus) threads = std::max(1, static_cast<int>(cpus) / ranks);
  if (threads < 2) return;  // one thread never waits at a barrier
  if (static_cast<long>(threads) * ranks > cpus) {
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
    if (!rank || std::strcmp(rank, "0") == 0)  // said once, by rank 0
      std::fprintf(stderr,
                   "normlab: %d ranks x %d threads on %ld CPUs: OpenMP threads will sleep rather "
                   "than spin while they wait (OMP_WAIT_POLICY=passive; set it to choose)\n",
                   ranks, threads, cpus);
    setenv("OMP_WAIT_POLICY", "passive", 1);
    return;
  }
  // The fewest runnable others over five samples: a short burst elsewhere is
  // no reason to sleep, a program that keeps a CPU busy is.
  int others = 1 << 30;
  for (int s = 0; s < 5; ++s) {
    if (s) std::this_thread::sleep_for(std::chrono::milliseconds(4));
    const int r = running_threads();
    if (r < 0) return;
    others = std::min(others, r - 1);
  }
  if (cpus - others >= threads) return;
  std::fprintf(stderr,
               "normlab: %d other thread(s) keep the %ld CPUs busy: OpenMP threads will sleep "
               "rather than spin while they wait (OMP_WAIT_POLICY=passive; set it to choose)\n",
               others, cpus);
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

}  // namespace normlab::cli
