// Data parallelism across processes: the communicator a training run and
// SyncBatchNorm talk through (docs/distributed.md).
//
//   Communicator& comm = world();        // MPI_COMM_WORLD under mpirun, else one process
//   comm.allreduce_sum(grads, n);        // every rank ends with the sum, in rank order
//
// world() is MPI_COMM_WORLD when the build has MPI (NORMLAB_MPI, on when
// CMake finds it) and the process was started by mpirun (OMPI_COMM_WORLD_SIZE
// or PMI_SIZE in the environment); otherwise a single-process communicator
// (rank 0 of 1: every collective is a copy or nothing), so a plain run is as
// before and costs nothing. MPI's headers stay in src/core/distributed.cpp.
//
// For tests, run_simulated_ranks(K, fn) runs fn on K threads, each with its
// own communicator of a simulated group of K ranks (shared memory and a
// barrier; the sums add the ranks' values in rank order, as MPI's do for a
// fixed layout): SyncBatchNorm's gradient checks run without mpirun.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "normlab/error.hpp"

namespace normlab {

// How MPI ranks exchange the sharded optimizer's gradients and weights and the
// large float all-reduces (docs/distributed.md, "Shared memory on one node"):
// Ring: rings of MPI_Sendrecv (any layout of machines); Shm: an MPI-3
// shared-memory window (MPI_Win_allocate_shared) that every rank reads its
// peers' blocks from directly, only when every rank runs on one node; Auto
// (the default): Shm on one node, Ring otherwise.
enum class MpiTransport { Auto, Ring, Shm };
// "auto", "ring", "shm"; throws an Error naming the value otherwise.
MpiTransport mpi_transport_from_name(const std::string& name);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Element-wise sum over the ranks, in place; every rank must call with the same n.
  virtual void allreduce_sum(float* data, int64_t n) = 0;
  virtual void allreduce_sum(double* data, int64_t n) = 0;
  // recv (bytes * size()) gets every rank's `bytes` bytes, in rank order.
  virtual void allgather(const void* send, int64_t bytes, void* recv) = 0;
  // data (bytes) of rank `root` is copied to every rank.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // The sharded optimizer's two collectives (ZeRO stage 1, docs/distributed.md).
  // The flat block of sum(counts) floats is cut into K contiguous slices in
  // rank order, rank r's of counts[r] values (uneven allowed, zero too);
  // counts has size() entries, the same on every rank.
  // reduce_scatter_sum: recv (counts[rank()] values) gets this rank's slice of
  // the element-wise sum over the ranks of `send` (MPI_Reduce_scatter); send
  // and recv must not overlap.
  virtual void reduce_scatter_sum(const float* send, float* recv,
                                  std::span<const int64_t> counts) = 0;
  // allgather_slices: every rank's slice of `data` (rank r's values at its
  // place in the block) goes to every rank's `data`, in place (MPI_Allgatherv).
  virtual void allgather_slices(float* data, std::span<const int64_t> counts) = 0;
  // Non-blocking in-place float sum (MPI_Iallreduce): starts it and returns;
  // data must stay untouched until wait_all(). progress() lets the started ones
  // advance (MPI_Testall; MPI moves data only inside its calls), wait_all()
  // ends them all. Every rank starts the same sums in the same order. The
  // trainer overlaps the gradient all-reduce with the backward pass this way
  // (docs/distributed.md). Default (single process, simulated ranks): the
  // blocking allreduce_sum at the start.
  virtual void start_allreduce_sum(float* data, int64_t n) { allreduce_sum(data, n); }
  virtual void progress() {}
  virtual void wait_all() {}
  // Chooses how reduce_scatter_sum, allgather_slices and large float
  // allreduce_sums travel (MPI only; every rank must choose the same; the
  // others ignore it). Shm when the ranks span several nodes throws an Error
  // every rank raises alike. transport() names the path in use: "shared
  // memory (one node)", "ring (MPI_Sendrecv)"; "" without MPI.
  virtual void set_transport(MpiTransport) {}
  virtual std::string transport() const { return ""; }
  // Memory the other ranks of this node read directly: with the shared-memory
  // transport, this rank's block `which` (0: for the gradients, 1: for the
  // weights) of n floats in the window, 64-byte aligned, valid until exit;
  // reduce_scatter_sum / allreduce_sum given block 0 as send, and
  // allgather_slices given block 1 as data, then skip their copy into the
  // window. nullptr otherwise (ring, one process). Collective: every rank
  // asks alike, before the first collective on blocks of that size.
  virtual float* shared_block(int64_t /*n*/, int /*which*/) { return nullptr; }
  // Ends every rank of the job (MPI_Abort) with this exit code; a single process exits.
  [[noreturn]] virtual void abort(int code) = 0;
  // "MPI (3 ranks)", "single process", "simulated (2 ranks)".
  virtual std::string describe() const = 0;
};

// The process's communicator (see the top of this file). MPI is initialised on
// the first call and finalised at exit.
Communicator& world();
// Whether this build can talk MPI at all (NORMLAB_MPI).
bool built_with_mpi();
// world() if it was already asked for and has more than one rank, else nullptr
// (the CLI's error handler: a rank that fails alone must end the job).
Communicator* world_if_parallel();

// What agree_on_errors throws: every rank knows, so no rank needs to abort the job.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Runs fn(comm) on K threads (1 <= K <= 64), rank r's comm.rank() == r; rethrows
// the first exception after all threads end. A rank that throws leaves the
// others' collectives: they throw too ("a simulated rank failed"), never hang.
void run_simulated_ranks(int K, const std::function<void(Communicator&)>& fn);

// Runs fn on every rank and agrees on the outcome: if it threw an Error on any
// rank, every rank throws an Error that names each failing rank and its
// message ("rank 1 of 3: ..."), so that bad input is reported by every rank and
// no rank waits in a collective for one that already left. One allgather.
void agree_on_errors(Communicator& comm, const std::function<void()>& fn);

}  // namespace normlab
