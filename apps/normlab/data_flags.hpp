// Flags shared by the subcommands that read a dataset or use threads.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace normlab::cli {

struct DataFlags {
  std::string dataset = "mnist";  // a name from dataset_names()
  std::string dir;                // --data: overrides the search for the dataset's directory
};

void add_data_flags(CLI::App* cmd, DataFlags& flags);
// --data if given (checked to exist), else default_data_dir(dataset).
std::string resolve_data_dir(const DataFlags& flags);
// --threads: 0 keeps OpenMP's default; otherwise 1..1024.
void set_threads(int64_t threads);
// Ranks of this mpirun job on this machine (OMPI_COMM_WORLD_LOCAL_SIZE), 1 outside
// mpirun. --threads 0 ("all cores") then means cores / local ranks per rank.
int local_mpi_ranks();

}  // namespace normlab::cli
