#include "data_flags.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "normlab/data.hpp"
#include "normlab/error.hpp"

namespace normlab::cli {

void add_data_flags(CLI::App* cmd, DataFlags& flags) {
  cmd->add_option("--dataset", flags.dataset, "mnist or fashion-mnist")->capture_default_str();
  cmd->add_option("--data", flags.dir,
                  "Directory with the IDX files (overrides --dataset's search)");
}

std::string resolve_data_dir(const DataFlags& flags) {
  const auto& names = dataset_names();
  if (std::find(names.begin(), names.end(), flags.dataset) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    fail("--dataset '", flags.dataset, "' is not known; known datasets: ", known);
  }
  if (flags.dir.empty()) return default_data_dir(flags.dataset);
  std::error_code ec;
  if (!std::filesystem::is_directory(flags.dir, ec))
    fail("--data ", flags.dir,
         std::filesystem::exists(flags.dir, ec) ? ": not a directory" : ": no such directory");
  return flags.dir;
}

int local_mpi_ranks() {
  const char* env = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int n = env ? std::atoi(env) : 1;
  return n > 1 ? n : 1;
}

void set_threads(int64_t threads) {
  if (threads < 0 || threads > 1024) fail("--threads must be between 0 and 1024, got ", threads);
  if (threads > 0) {
    omp_set_num_threads(static_cast<int>(threads));
  } else if (const int ranks = local_mpi_ranks(); ranks > 1 && !std::getenv("OMP_NUM_THREADS")) {
    // "All cores" under mpirun: this rank's share of them, not every rank all of them.
    omp_set_num_threads(std::max(1, omp_get_num_procs() / ranks));
  }
}

}  // namespace normlab::cli
