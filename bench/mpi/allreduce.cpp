// MPI all-reduce of seed001's flat gradient block (0.80 M floats, 3.2 MB) on
// this machine: one blocking MPI_Allreduce against two MPI_Iallreduce (the
// overlapped trainer's two buckets) + MPI_Waitall, 40 calls each, 5 rounds
// (docs/distributed.md, "Where the 2-rank step goes"). Not built by CMake:
//   mpicxx -O2 -o /tmp/mpi_allreduce bench/mpi/allreduce.cpp   (not in bench/*.cpp: that glob is
//   normlab_bench)
//   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe \
//     --bind-to none --mca mpi_yield_when_idle 1 -np 2 /tmp/mpi_allreduce
// (add --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm N
// to try Open MPI's algorithms 1-6).
#include <mpi.h>
#include <chrono>
#include <cstdio>
#include <vector>
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int n = 802324 + 200, half = 400000;
  std::vector<float> g(n, 1.0f);
  auto now = [] { return std::chrono::steady_clock::now(); };
  for (int round = 0; round < 5; ++round) {
    double tb = 0, tn = 0;
    for (int mode = 0; mode < 2; ++mode) {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = now();
      for (int i = 0; i < 40; ++i) {
        if (mode == 0)
          MPI_Allreduce(MPI_IN_PLACE, g.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        else {
          MPI_Request r[2];
          MPI_Iallreduce(MPI_IN_PLACE, g.data() + half, n - half, MPI_FLOAT, MPI_SUM,
                         MPI_COMM_WORLD, &r[0]);
          MPI_Iallreduce(MPI_IN_PLACE, g.data(), half, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r[1]);
          MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
        }
      }
      double t = std::chrono::duration<double>(now() - t0).count() * 25;  // ms per call
      (mode == 0 ? tb : tn) = t;
    }
    if (rank == 0)
      std::printf("round %d: blocking Allreduce %.3f ms, 2 x Iallreduce + Waitall %.3f ms\n", round,
                  tb, tn);
  }
  MPI_Finalize();
}
