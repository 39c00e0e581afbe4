// MPI collectives on seed001's flat gradient block (0.80 M floats, 3.2 MB) on
// this machine, 2 (or K) ranks, 40 calls each, 5 rounds (docs/distributed.md,
// "Where the 2-rank step goes" and "The sharded optimizer"):
//   - one blocking MPI_Allreduce (the plain trainer),
//   - two MPI_Iallreduce + MPI_Waitall (the overlapped trainer's two buckets),
//   - MPI_Reduce_scatter (uneven slices) + in-place MPI_Allgatherv (the
//     sharded optimizer: gradients reduce-scattered, weights all-gathered),
//   - the same with MPI_Reduce_scatter_block + in-place MPI_Allgather (even
//     slices),
//   - a ring of MPI_Sendrecv (K - 1 steps each way, the sum added in the
//     caller's loop): normlab's ring transport (--mpi-transport ring),
//   - shared memory (MPI-3 MPI_Win_allocate_shared on the node; issue 13,
//     part 4): each rank publishes the other ranks' slices of its gradients,
//     sync, sums its own slice reading the peers' blocks directly, publishes
//     its slice of the weights, sync, copies the others': normlab's default on
//     one node (--mpi-transport shm/auto), and
//   - the same without the copies into the window: the gradients and weights
//     are the window's own blocks (normlab's path since Optimizer::adopt_flat_blocks),
//   - MPI_Barrier on the node communicator alone (the cost of one sync).
// Not built by CMake:
//   mpicxx -O2 -o /tmp/mpi_allreduce bench/mpi/allreduce.cpp   (not in bench/*.cpp: that glob is
//   normlab_bench)
//   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe \
//     --bind-to none --mca mpi_yield_when_idle 1 -np 2 /tmp/mpi_allreduce
// (add --mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm N,
// coll_tuned_reduce_scatter_algorithm N or coll_tuned_allgatherv_algorithm N to
// try Open MPI's algorithms).
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, K;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &K);
  const int n = 802324 + 200, half = 400000;
  const int even = (n + K - 1) / K;  // the _block variants need equal slices: pad to K * even
  std::vector<float> g(static_cast<size_t>(even) * K, 1.0f), slice(even), p(g.size(), 1.0f);
  std::vector<int> counts(K), displs(K);
  for (int r = 0; r < K; ++r) {
    // Slices on 16-float lines, as the trainer cuts them (uneven for K = 3).
    const int units = (n + 15) / 16;
    displs[r] = std::min(n, units * r / K * 16);
    const int end = std::min(n, units * (r + 1) / K * 16);
    counts[r] = end - displs[r];
  }
  auto now = [] { return std::chrono::steady_clock::now(); };
  const char* names[] = {"Allreduce",
                         "2 x Iallreduce + Waitall",
                         "Reduce_scatter + Allgatherv",
                         "Reduce_scatter_block + Allgather",
                         "Sendrecv ring",
                         "shared memory",
                         "node Barrier (us)",
                         "shared memory, zero copy"};
  // The shared-memory window: per rank [gradients | weights], n floats each.
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "true");
  float* mine = nullptr;
  MPI_Win win;
  MPI_Win_allocate_shared(2 * static_cast<MPI_Aint>(n) * sizeof(float), sizeof(float), info, node,
                          &mine, &win);
  MPI_Info_free(&info);
  MPI_Win_lock_all(MPI_MODE_NOCHECK, win);
  std::vector<float*> seg(K);
  for (int r = 0; r < K; ++r) {
    MPI_Aint bytes;
    int unit;
    MPI_Win_shared_query(win, r, &bytes, &unit, &seg[r]);
  }
  auto sync = [&] {
    MPI_Win_sync(win);
    MPI_Barrier(node);
    MPI_Win_sync(win);
  };
  std::vector<float> tmp(n);
  auto chunk = [&](int c) { return (c % K + K) % K; };
  for (int round = 0; round < 5; ++round) {
    double t[8];
    for (int mode = 0; mode < 8; ++mode) {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = now();
      for (int i = 0; i < 40; ++i) {
        if (mode == 0) {
          MPI_Allreduce(MPI_IN_PLACE, g.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        } else if (mode == 1) {
          MPI_Request r[2];
          MPI_Iallreduce(MPI_IN_PLACE, g.data() + half, n - half, MPI_FLOAT, MPI_SUM,
                         MPI_COMM_WORLD, &r[0]);
          MPI_Iallreduce(MPI_IN_PLACE, g.data(), half, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r[1]);
          MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
        } else if (mode == 2) {
          MPI_Reduce_scatter(g.data(), slice.data(), counts.data(), MPI_FLOAT, MPI_SUM,
                             MPI_COMM_WORLD);
          MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p.data(), counts.data(), displs.data(),
                         MPI_FLOAT, MPI_COMM_WORLD);
        } else if (mode == 4) {
          const int next = (rank + 1) % K, prev = (rank + K - 1) % K;
          for (int s = 0; s + 1 < K; ++s) {  // reduce-scatter: rank r ends with chunk r summed
            const int cs = chunk(rank - s - 1), cr = chunk(rank - s - 2);
            MPI_Sendrecv(g.data() + displs[cs], counts[cs], MPI_FLOAT, next, 0, tmp.data(),
                         counts[cr], MPI_FLOAT, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            float* d = g.data() + displs[cr];
            for (int j = 0; j < counts[cr]; ++j) d[j] += tmp[j];
          }
          for (int s = 0; s + 1 < K; ++s) {  // allgather
            const int cs = chunk(rank - s), cr = chunk(rank - s - 1);
            MPI_Sendrecv(p.data() + displs[cs], counts[cs], MPI_FLOAT, next, 1,
                         p.data() + displs[cr], counts[cr], MPI_FLOAT, prev, 1, MPI_COMM_WORLD,
                         MPI_STATUS_IGNORE);
          }
        } else if (mode == 5) {
          const int lo = displs[rank], hi = lo + counts[rank];
          std::memcpy(mine, g.data(), lo * sizeof(float));
          std::memcpy(mine + hi, g.data() + hi, (n - hi) * sizeof(float));
          sync();
          float* out = slice.data();
          for (int b = lo; b < hi; b += 4096) {  // rank order, in L1-sized blocks
            const int m = std::min(4096, hi - b);
            const float* s0 = rank == 0 ? g.data() + b : seg[0] + b;
            const float* s1 = rank == 1 ? g.data() + b : seg[1] + b;
            for (int j = 0; j < m; ++j) out[b - lo + j] = s0[j] + s1[j];
            for (int k = 2; k < K; ++k) {
              const float* sk = rank == k ? g.data() + b : seg[k] + b;
              for (int j = 0; j < m; ++j) out[b - lo + j] += sk[j];
            }
          }
          std::memcpy(mine + n + lo, p.data() + lo, counts[rank] * sizeof(float));
          sync();
          for (int r = 0; r < K; ++r)
            if (r != rank)
              std::memcpy(p.data() + displs[r], seg[r] + n + displs[r], counts[r] * sizeof(float));
        } else if (mode == 7) {
          // normlab's path: the gradients and weights ARE the window's blocks
          // (Optimizer::adopt_flat_blocks): nothing is published by a copy.
          const int lo = displs[rank], hi = lo + counts[rank];
          sync();
          float* out = slice.data();
          for (int b = lo; b < hi; b += 4096) {
            const int m = std::min(4096, hi - b);
            for (int j = 0; j < m; ++j) out[b - lo + j] = seg[0][b + j] + seg[1][b + j];
            for (int k = 2; k < K; ++k)
              for (int j = 0; j < m; ++j) out[b - lo + j] += seg[k][b + j];
          }
          sync();
          for (int r = 0; r < K; ++r)
            if (r != rank)
              std::memcpy(mine + n + displs[r], seg[r] + n + displs[r], counts[r] * sizeof(float));
        } else if (mode == 6) {
          for (int j = 0; j < 25; ++j) MPI_Barrier(node);  // x 1000 / 25 / 40: us per barrier
        } else {
          MPI_Reduce_scatter_block(g.data(), slice.data(), even, MPI_FLOAT, MPI_SUM,
                                   MPI_COMM_WORLD);
          MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p.data(), even, MPI_FLOAT,
                        MPI_COMM_WORLD);
        }
      }
      t[mode] = std::chrono::duration<double>(now() - t0).count() * 25;  // ms per call
    }
    if (rank == 0)
      std::printf(
          "round %d: %s %.3f ms, %s %.3f ms, %s %.3f ms, %s %.3f ms, %s %.3f ms, %s %.3f ms, "
          "%s %.2f, %s %.3f ms\n",
          round, names[0], t[0], names[1], t[1], names[2], t[2], names[3], t[3], names[4], t[4],
          names[5], t[5], names[6], t[6] * 1000 / 25, names[7], t[7]);
  }
  MPI_Win_unlock_all(win);
  MPI_Win_free(&win);
  MPI_Comm_free(&node);
  MPI_Finalize();
}
