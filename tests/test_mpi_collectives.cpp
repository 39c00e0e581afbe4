// The MPI communicator's sharded-optimizer collectives (reduce_scatter_sum,
// allgather_slices) and its float allreduce_sum through both transports
// (docs/distributed.md, "Shared memory on one node") against a plain sum in
// rank order. Needs mpirun: tests/scripts/mpi_collectives_test.sh runs this
// binary with --gtest_filter='MpiCollectives.*' on K = 2 and 3 ranks (ctest
// Mpi.Collectives); in a plain run it is skipped.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "normlab/distributed.hpp"

namespace normlab {
namespace {

// Rank r's value at flat position i: not exactly representable sums, so the
// order of the additions shows in the bits.
float value(int r, int64_t i) {
  return static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 1.3 * r) * (1.0 + 0.1 * r));
}

// Layouts of n values over K ranks: as even as 16-float lines allow, and
// uneven with rank 0 empty and the last rank taking the most.
std::vector<std::vector<int64_t>> layouts(int64_t n, int K) {
  std::vector<int64_t> even(K), uneven(K, 0);
  const int64_t lines = (n + 15) / 16;
  for (int r = 0; r < K; ++r)
    even[r] = std::min(n, lines * (r + 1) / K * 16) - std::min(n, lines * r / K * 16);
  int64_t left = n;
  for (int r = 1; r < K; ++r) {
    uneven[r] = r + 1 == K ? left : left / 3;
    left -= uneven[r];
  }
  return {even, uneven};
}

TEST(MpiCollectives, ShmAndRingMatchAPlainSum) {
  Communicator& comm = world();
  const int K = comm.size(), me = comm.rank();
  if (K == 1) GTEST_SKIP() << "needs mpirun (tests/scripts/mpi_collectives_test.sh)";
  for (const MpiTransport t : {MpiTransport::Shm, MpiTransport::Ring, MpiTransport::Auto}) {
    comm.set_transport(t);
    const bool shm = comm.transport() == "shared memory (one node)";
    EXPECT_EQ(shm, t != MpiTransport::Ring) << comm.transport();
    // Sizes 0, 1, odd, and larger than the window of the previous one (it grows).
    for (const int64_t n :
         {int64_t(0), int64_t(1), int64_t(17), int64_t(1001), int64_t(40003), int64_t(100000)}) {
      for (const auto& counts : layouts(n, K)) {
        int64_t at = 0;
        for (int r = 0; r < me; ++r) at += counts[r];
        const int64_t mine = counts[me];
        std::vector<float> send(static_cast<size_t>(n)), recv(static_cast<size_t>(mine), -7.0f);
        for (int64_t i = 0; i < n; ++i) send[i] = value(me, i);
        comm.reduce_scatter_sum(send.data(), recv.data(), counts);
        int bad = 0;
        for (int64_t j = 0; j < mine && bad < 5; ++j) {
          float want = value(0, at + j);
          for (int r = 1; r < K; ++r) want += value(r, at + j);
          // Shared memory adds in rank order: bitwise. The ring's order differs for K > 2.
          if (shm || K == 2 ? recv[j] != want
                            : std::abs(recv[j] - want) > 1e-5f * (1 + std::abs(want)))
            ADD_FAILURE() << "rank " << me << " n " << n << " reduce-scatter [" << j
                          << "]: " << recv[j] << " want " << want << " (" << comm.transport()
                          << ")",
                ++bad;
        }
        // The send block is only read.
        for (int64_t i = 0; i < n && bad < 5; ++i)
          if (send[i] != value(me, i)) ADD_FAILURE() << "send changed at " << i, ++bad;
        // allgather_slices: this rank's slice in place, NaN elsewhere; every slice afterwards.
        std::vector<float> data(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
        for (int64_t j = 0; j < mine; ++j) data[at + j] = 2 * value(me, at + j);
        comm.allgather_slices(data.data(), counts);
        int64_t owner_at = 0;
        for (int r = 0; r < K; ++r) {
          for (int64_t j = 0; j < counts[r] && bad < 5; ++j)
            if (data[owner_at + j] != 2 * value(r, owner_at + j))
              ADD_FAILURE() << "rank " << me << " n " << n << " allgather [" << owner_at + j
                            << "] = " << data[owner_at + j] << " (" << comm.transport() << ")",
                  ++bad;
          owner_at += counts[r];
        }
      }
      // The unsharded path's float all-reduce (shared memory from 16 Ki values on).
      std::vector<float> data(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) data[i] = value(me, i);
      comm.allreduce_sum(data.data(), n);
      int bad = 0;
      for (int64_t i = 0; i < n && bad < 5; ++i) {
        float want = value(0, i);
        for (int r = 1; r < K; ++r) want += value(r, i);
        if (std::abs(data[i] - want) > 1e-5f * (1 + std::abs(want)) ||
            (shm && n >= 16384 && data[i] != want))
          ADD_FAILURE() << "rank " << me << " n " << n << " allreduce [" << i << "]: " << data[i]
                        << " want " << want << " (" << comm.transport() << ")",
              ++bad;
      }
    }
  }
  // Zero copy: the caller's blocks are the window's own (what the trainer does
  // with the optimizer's flat blocks on one node), at the largest size above.
  comm.set_transport(MpiTransport::Auto);
  const int64_t n = 100000;
  float* g = comm.shared_block(n, 0);
  float* w = comm.shared_block(n, 1);
  ASSERT_NE(g, nullptr);
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(g) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w) % 64, 0u);
  for (int step = 0; step < 3; ++step) {  // the blocks are rewritten between collectives
    for (const auto& counts : layouts(n, K)) {
      int64_t at = 0;
      for (int r = 0; r < me; ++r) at += counts[r];
      for (int64_t i = 0; i < n; ++i) g[i] = value(me, i + step);
      std::vector<float> recv(static_cast<size_t>(counts[me]));
      comm.reduce_scatter_sum(g, recv.data(), counts);
      int bad = 0;
      for (int64_t j = 0; j < counts[me] && bad < 5; ++j) {
        float want = value(0, at + j + step);
        for (int r = 1; r < K; ++r) want += value(r, at + j + step);
        if (recv[j] != want)
          ADD_FAILURE() << "zero-copy reduce-scatter, rank " << me << " [" << j << "]", ++bad;
      }
      for (int64_t j = 0; j < counts[me]; ++j) w[at + j] = recv[j] * 3;
      comm.allgather_slices(w, counts);
      // Another block gathered meanwhile (the optimizer state of a checkpoint)
      // must not touch the window's weights.
      std::vector<float> other(static_cast<size_t>(n), -1.0f);
      comm.allgather_slices(other.data(), counts);
      int64_t owner_at = 0;
      for (int r = 0; r < K; ++r) {
        for (int64_t j = 0; j < counts[r] && bad < 5; ++j) {
          float want = value(0, owner_at + j + step);
          for (int q = 1; q < K; ++q) want += value(q, owner_at + j + step);
          if (w[owner_at + j] != want * 3)
            ADD_FAILURE() << "zero-copy allgather, rank " << me << " [" << owner_at + j << "]",
                ++bad;
        }
        owner_at += counts[r];
      }
    }
    for (int64_t i = 0; i < n; ++i) g[i] = value(me, i + step);
    comm.allreduce_sum(g, n);
    int bad = 0;
    for (int64_t i = 0; i < n && bad < 5; ++i) {
      float want = value(0, i + step);
      for (int r = 1; r < K; ++r) want += value(r, i + step);
      if (g[i] != want)
        ADD_FAILURE() << "zero-copy allreduce, rank " << me << " [" << i << "]", ++bad;
    }
  }
}

TEST(MpiCollectives, TransportNames) {
  EXPECT_EQ(mpi_transport_from_name("auto"), MpiTransport::Auto);
  EXPECT_EQ(mpi_transport_from_name("ring"), MpiTransport::Ring);
  EXPECT_EQ(mpi_transport_from_name("shm"), MpiTransport::Shm);
  try {
    mpi_transport_from_name("tcp");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "--mpi-transport must be auto, ring or shm, got 'tcp'");
  }
}

}  // namespace
}  // namespace normlab
