// The communicators of include/normlab/distributed.hpp: single process,
// simulated ranks (threads) and, in a build with NORMLAB_MPI, MPI_COMM_WORLD.
#include "normlab/distributed.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef NORMLAB_MPI
#include <mpi.h>
#include <omp.h>

#include "kernels/simd.hpp"
#endif

namespace normlab {
namespace {

// The slices' layout must be one every rank agrees on: one count a rank, none negative.
void check_slices(std::span<const int64_t> counts, int ranks, const char* what) {
  if (static_cast<int64_t>(counts.size()) != ranks)
    fail(what, ": ", counts.size(), " slice counts for ", ranks, " ranks");
  for (size_t r = 0; r < counts.size(); ++r)
    if (counts[r] < 0) fail(what, ": slice ", r, " has a negative count ", counts[r]);
}

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, int64_t) override {}
  void allreduce_sum(double*, int64_t) override {}
  void allgather(const void* send, int64_t bytes, void* recv) override {
    if (bytes > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(bytes));
  }
  void broadcast(void*, int64_t, int) override {}
  void reduce_scatter_sum(const float* send, float* recv,
                          std::span<const int64_t> counts) override {
    check_slices(counts, 1, "reduce_scatter_sum");
    if (counts[0] > 0 && send != recv)
      std::memmove(recv, send, static_cast<size_t>(counts[0]) * sizeof(float));
  }
  void allgather_slices(float*, std::span<const int64_t> counts) override {
    check_slices(counts, 1, "allgather_slices");
  }
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
  std::string describe() const override { return "single process"; }
};

// ---------------------------------------------------------------- simulated ranks

struct SimulatedGroup {
  explicit SimulatedGroup(int K) : K(K), slots(static_cast<size_t>(K)) {}
  const int K;
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0;
  int64_t generation = 0;
  bool broken = false;
  std::vector<const void*> slots;

  void wait() {
    std::unique_lock<std::mutex> lk(m);
    if (broken) throw Error("a simulated rank failed");
    const int64_t g = generation;
    if (++arrived == K) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lk, [&] { return generation != g || broken; });
      if (generation == g) throw Error("a simulated rank failed");
    }
  }
  void fail() {
    std::lock_guard<std::mutex> lk(m);
    broken = true;
    cv.notify_all();
  }
};

class Simulated final : public Communicator {
 public:
  Simulated(SimulatedGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.K; }
  void allreduce_sum(float* data, int64_t n) override { sum(data, n); }
  void allreduce_sum(double* data, int64_t n) override { sum(data, n); }
  void allgather(const void* send, int64_t bytes, void* recv) override {
    g_.slots[rank_] = send;
    g_.wait();
    for (int r = 0; r < g_.K; ++r)
      std::memcpy(static_cast<char*>(recv) + r * bytes, g_.slots[r], static_cast<size_t>(bytes));
    g_.wait();
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    g_.slots[rank_] = data;
    g_.wait();
    if (rank_ != root) std::memcpy(data, g_.slots[root], static_cast<size_t>(bytes));
    g_.wait();
  }
  // Rank order, as sum(): the slice is the one every rank's allreduce_sum would give.
  void reduce_scatter_sum(const float* send, float* recv,
                          std::span<const int64_t> counts) override {
    check_slices(counts, g_.K, "reduce_scatter_sum");
    int64_t at = 0;
    for (int r = 0; r < rank_; ++r) at += counts[r];
    const int64_t n = counts[rank_];
    g_.slots[rank_] = send;
    g_.wait();
    std::fill(recv, recv + n, 0.0f);
    for (int r = 0; r < g_.K; ++r) {
      const float* s = static_cast<const float*>(g_.slots[r]) + at;
      for (int64_t i = 0; i < n; ++i) recv[i] += s[i];
    }
    g_.wait();
  }
  // Each rank reads the others' own slices while they write other slices of their blocks.
  void allgather_slices(float* data, std::span<const int64_t> counts) override {
    check_slices(counts, g_.K, "allgather_slices");
    g_.slots[rank_] = data;
    g_.wait();
    int64_t at = 0;
    for (int r = 0; r < g_.K; ++r) {
      if (r != rank_)
        std::copy_n(static_cast<const float*>(g_.slots[r]) + at, counts[r], data + at);
      at += counts[r];
    }
    g_.wait();
  }
  void barrier() override { g_.wait(); }
  [[noreturn]] void abort(int code) override {
    g_.fail();
    throw Error("simulated rank " + std::to_string(rank_) + " aborted with code " +
                std::to_string(code));
  }
  std::string describe() const override { return "simulated (" + std::to_string(g_.K) + " ranks)"; }

 private:
  // Rank order: every rank adds the same values in the same order, so all end
  // with bitwise the same sums.
  template <typename T>
  void sum(T* data, int64_t n) {
    g_.slots[rank_] = data;
    g_.wait();
    std::vector<T> out(static_cast<size_t>(n), T(0));
    for (int r = 0; r < g_.K; ++r) {
      const T* s = static_cast<const T*>(g_.slots[r]);
      for (int64_t i = 0; i < n; ++i) out[i] += s[i];
    }
    g_.wait();
    std::copy(out.begin(), out.end(), data);
  }
  SimulatedGroup& g_;
  int rank_;
};

// ---------------------------------------------------------------- MPI

#ifdef NORMLAB_MPI
// Largest count per MPI call: counts are int, and buckets of 4 Mi elements
// (16 MiB of float) keep each message a size the transports stream well.
constexpr int64_t kBucket = int64_t(1) << 22;

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("MPI ", what, " failed: ", std::string(msg, static_cast<size_t>(len)));
  }
}

class Mpi final : public Communicator {
 public:
  Mpi() {
    int provided = 0;
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // Errors come back as codes (check() turns them into Errors) instead of
    // MPI's default of aborting without a word on which call.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    // The ranks on this rank's node, in world-rank order: when they are all
    // of them, node rank == world rank and the shared-memory path is possible.
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_),
          "MPI_Comm_split_type");
    MPI_Comm_set_errhandler(node_, MPI_ERRORS_RETURN);
    int node_size = 0;
    MPI_Comm_size(node_, &node_size);
    one_node_ = node_size == size_;
    shm_ = one_node_ && size_ > 1;
    live_ = this;
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (finalized) return;
      // The window and the node communicator go before MPI_Finalize on every
      // exit path (a normal end, an agreed error: every rank passes here).
      if (live_) live_->release();
      MPI_Finalize();
    });
  }
  ~Mpi() override {
    release();
    live_ = nullptr;
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  // Large float sums (the unsharded trainer's gradient block) go through the
  // shared-memory window on one node: reduce-scatter + all-gather.
  void allreduce_sum(float* data, int64_t n) override {
    if (shm_ && size_ > 1 && n >= kShmMinFloats && window_fits(n)) return shm_allreduce(data, n);
    sum(data, n, MPI_FLOAT);
  }
  void allreduce_sum(double* data, int64_t n) override { sum(data, n, MPI_DOUBLE); }
  void allgather(const void* send, int64_t bytes, void* recv) override {
    check(MPI_Allgather(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes),
                        MPI_BYTE, MPI_COMM_WORLD),
          "MPI_Allgather");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    for (int64_t at = 0; at < bytes; at += kBucket)
      check(
          MPI_Bcast(static_cast<char*>(data) + at, static_cast<int>(std::min(kBucket, bytes - at)),
                    MPI_BYTE, root, MPI_COMM_WORLD),
          "MPI_Bcast");
  }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  // Both as a ring of MPI_Sendrecv between neighbours (rank r sends to r + 1,
  // receives from r - 1), K - 1 steps each: measured on this project's
  // 2-core machine as fast as one MPI_Allreduce of the whole block and
  // 1.5-2x faster than Open MPI 4.1's MPI_Reduce_scatter + MPI_Allgatherv
  // with any of its tuned algorithms (docs/distributed.md, bench/mpi/allreduce.cpp).
  // The reduce-scatter: at step s rank r sends its partial sum of slice
  // r - s - 1 and adds the received partial sum of slice r - s - 2 into its
  // own; after K - 1 steps it holds the sum of slice r, which it alone
  // computes. send is only read.
  void reduce_scatter_sum(const float* send, float* recv,
                          std::span<const int64_t> counts) override {
    slices(counts, "reduce_scatter_sum");
    const int K = size_;
    const float* own = send + displs_[rank_];
    if (K == 1) {
      std::copy_n(own, counts[0], recv);
      return;
    }
    if (shm_ && window_fits(displs_.back() + counts.back()))
      return shm_reduce_scatter(send, recv, counts);
    // The partial sum passed on at the next step (K > 2), and the one received.
    const size_t largest = static_cast<size_t>(*std::max_element(counts.begin(), counts.end()));
    incoming_.resize(largest);
    if (K > 2) partial_.resize(largest);
    const int next = (rank_ + 1) % K, prev = (rank_ + K - 1) % K;
    for (int s = 0; s + 1 < K; ++s) {
      const int out = ring(rank_ - s - 1), in = ring(rank_ - s - 2);
      const float* outgoing = s == 0 ? send + displs_[out] : partial_.data();
      check(MPI_Sendrecv(outgoing, static_cast<int>(counts[out]), MPI_FLOAT, next, 0,
                         incoming_.data(), static_cast<int>(counts[in]), MPI_FLOAT, prev, 0,
                         MPI_COMM_WORLD, MPI_STATUS_IGNORE),
            "MPI_Sendrecv (reduce-scatter)");
      const float* a = send + displs_[in];
      const float* b = incoming_.data();
      float* sum = s + 2 == K ? recv : partial_.data();  // the last step: this rank's slice
      for (int64_t j = 0; j < counts[in]; ++j) sum[j] = a[j] + b[j];
    }
  }
  // At step s rank r passes slice r - s on and receives slice r - s - 1 in place.
  void allgather_slices(float* data, std::span<const int64_t> counts) override {
    slices(counts, "allgather_slices");
    if (shm_ && size_ > 1 && window_fits(displs_.back() + counts.back()))
      return shm_allgather(data, counts);
    const int K = size_, next = (rank_ + 1) % K, prev = (rank_ + K - 1) % K;
    for (int s = 0; s + 1 < K; ++s) {
      const int out = ring(rank_ - s), in = ring(rank_ - s - 1);
      check(MPI_Sendrecv(data + displs_[out], static_cast<int>(counts[out]), MPI_FLOAT, next, 1,
                         data + displs_[in], static_cast<int>(counts[in]), MPI_FLOAT, prev, 1,
                         MPI_COMM_WORLD, MPI_STATUS_IGNORE),
            "MPI_Sendrecv (allgather)");
    }
  }
  void start_allreduce_sum(float* data, int64_t n) override {
    for (int64_t at = 0; at < n; at += kBucket) {
      MPI_Request r;
      check(MPI_Iallreduce(MPI_IN_PLACE, data + at, static_cast<int>(std::min(kBucket, n - at)),
                           MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
            "MPI_Iallreduce");
      requests_.push_back(r);
    }
  }
  void progress() override {
    if (requests_.empty()) return;
    int done = 0;
    check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                      MPI_STATUSES_IGNORE),
          "MPI_Testall");
    if (done) requests_.clear();
  }
  void wait_all() override {
    if (requests_.empty()) return;
    const int rc =
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    requests_.clear();
    check(rc, "MPI_Waitall");
  }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }
  std::string describe() const override { return "MPI (" + std::to_string(size_) + " ranks)"; }
  void set_transport(MpiTransport t) override {
    if (t == MpiTransport::Shm && !one_node_)
      throw AgreedError(
          "--mpi-transport shm: the " + std::to_string(size_) +
          " ranks do not all run on one node (shared memory needs them to); use auto or ring");
    shm_ = t == MpiTransport::Shm || (t == MpiTransport::Auto && one_node_ && size_ > 1);
  }
  float* shared_block(int64_t n, int which) override {
    if (!shm_ || size_ == 1 || n < 0 || (which != 0 && which != 1)) return nullptr;
    ensure_window(n);
    pinned_ = true;  // handed out: the window never moves again
    return which == 0 ? grads_of(rank_) : values_of(rank_);
  }
  std::string transport() const override {
    if (size_ == 1) return "single rank";
    return shm_ ? "shared memory (one node)"
                : std::string("ring (MPI_Sendrecv") +
                      (one_node_ ? ")" : "; ranks on several nodes)");
  }

 private:
  // ---- shared memory on one node (docs/distributed.md, "Shared memory on one node")
  //
  // One MPI-3 window over the node communicator (every rank of the job): rank
  // p's segment holds three blocks of cap_ floats at 64-byte lines: the
  // gradients it publishes (the other ranks' slices of its flat block; or the
  // trainer's flat gradient block itself, shared_block(n, 0)), the weights
  // (the trainer's flat value block with the sharded optimizer,
  // shared_block(n, 1)), and a scratch block for the slice it publishes
  // otherwise (its slice of allgather_slices' data, of allreduce_sum's sum),
  // each at the slice's place.
  // Synchronisation as in the MPI-3 standard's shared-memory example
  // (passive target: Win_lock_all once, then Win_sync + Barrier + Win_sync).
  // A rank writes only its own segment and the others read it only between
  // the sync that follows and the next one, so one sync per collective is
  // enough: a rank's gradient block is rewritten by its next backward, after
  // the all-gather's sync, which every peer reaches only once it has summed
  // from that block; its weight (or scratch) slice is rewritten at its next
  // step (or collective), after the next sync, which every peer reaches only
  // once it has copied that slice. So two syncs a step, whoever runs ahead.
  static constexpr int64_t kShmMinFloats = 16384;  // 64 KiB: smaller sums are MPI_Allreduce's
  static constexpr int64_t kSumBlock = 4096;       // floats a block of the K-way sum (16 KiB)

  // Whether n floats go through the window: always, unless it was handed out
  // (shared_block) at a smaller size; then the caller takes the ring / MPI path
  // (every rank alike: same calls, same sizes).
  bool window_fits(int64_t n) const { return !pinned_ || n <= cap_; }
  // The window holds at least n floats a block (collective: every rank asks alike).
  void ensure_window(int64_t n) {
    if (n <= cap_ && win_ != MPI_WIN_NULL) return;
    if (pinned_) fail("shared-memory window: ", n, " floats asked for, ", cap_, " handed out");
    // A larger block: no rank may still be reading a peer's old segment.
    if (win_ != MPI_WIN_NULL) check(MPI_Barrier(node_), "MPI_Barrier (shared memory)");
    free_window();
    const int64_t cap = std::max<int64_t>(16, (n + 15) / 16 * 16);  // 64-byte lines
    MPI_Info info;
    MPI_Info_create(&info);
    // Each segment on its own pages (the rank touches them first: its node memory).
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    void* base = nullptr;
    const int rc = MPI_Win_allocate_shared(static_cast<MPI_Aint>((3 * cap + 16) * sizeof(float)),
                                           sizeof(float), info, node_, &base, &win_);
    MPI_Info_free(&info);
    check(rc, "MPI_Win_allocate_shared");
    MPI_Win_set_errhandler(win_, MPI_ERRORS_RETURN);
    check(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_), "MPI_Win_lock_all");
    segs_.assign(static_cast<size_t>(size_), nullptr);
    for (int r = 0; r < size_; ++r) {
      MPI_Aint bytes = 0;
      int unit = 0;
      void* p = nullptr;
      check(MPI_Win_shared_query(win_, r, &bytes, &unit, &p), "MPI_Win_shared_query");
      // Open MPI aligns a segment to 8 bytes only: start at its first 64-byte
      // line (the offset within the shared pages is the same in every process).
      const uintptr_t at = reinterpret_cast<uintptr_t>(p);
      segs_[r] = reinterpret_cast<float*>((at + 63) / 64 * 64);
    }
    cap_ = cap;
  }
  void free_window() {
    if (win_ == MPI_WIN_NULL) return;
    MPI_Win_unlock_all(win_);
    MPI_Win_free(&win_);
    win_ = MPI_WIN_NULL;
    segs_.clear();
    cap_ = 0;
  }
  void release() {
    free_window();
    if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
    node_ = MPI_COMM_NULL;
  }
  // Every rank's writes to its segment before this are seen by every rank after it.
  void shm_sync() {
    MPI_Win_sync(win_);
    check(MPI_Barrier(node_), "MPI_Barrier (shared memory)");
    MPI_Win_sync(win_);
  }
  // n floats; nothing for n = 0, where the pointers may be null (empty vectors).
  static void copy_floats(float* to, const float* from, int64_t n) {
    if (n > 0) std::memcpy(to, from, static_cast<size_t>(n) * sizeof(float));
  }
  float* grads_of(int r) const { return segs_[r]; }
  float* values_of(int r) const { return segs_[r] + cap_; }
  float* sums_of(int r) const { return segs_[r] + 2 * cap_; }
  // out[j] = src[0][j] + src[1][j] + ... + src[K-1][j], added in that order
  // (rank order: the same bits on every rank and every run), in blocks of
  // kSumBlock floats that stay in L1 while the K sources stream through,
  // vectorised (kernels/simd.hpp) and spread over the rank's OpenMP threads.
  static void sum_in_rank_order(float* out, const float* const* src, int K, int64_t n) {
    const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
    const auto add = [](auto a, auto b) { return a + b; };
#pragma omp parallel for schedule(static) if (blocks >= 8 && omp_get_max_threads() > 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t at = b * kSumBlock, m = std::min(kSumBlock, n - at);
      detail::map_row(out + at, m, false, add, src[0] + at, src[1] + at);
      for (int k = 2; k < K; ++k) detail::map_row(out + at, m, false, add, out + at, src[k] + at);
    }
  }
  // Publishes the other ranks' slices of `send` (its own stays private: only
  // this rank sums it), then sums slice rank_ over the K blocks into recv.
  void shm_publish(const float* send, int64_t n) {
    float* mine = grads_of(rank_);
    if (send == mine) return;  // the caller's block is the window's (shared_block(n, 0))
    const int64_t lo = displs_[rank_], hi = lo + own_count_;
    if (lo > 0) copy_floats(mine, send, lo);
    if (hi < n) copy_floats(mine + hi, send + hi, n - hi);
  }
  void shm_sum_own(const float* send, float* recv) {
    const int64_t at = displs_[rank_];
    srcs_.resize(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) srcs_[r] = (r == rank_ ? send : grads_of(r)) + at;
    sum_in_rank_order(recv, srcs_.data(), size_, own_count_);
  }
  void shm_reduce_scatter(const float* send, float* recv, std::span<const int64_t> counts) {
    const int64_t n = displs_.back() + counts.back();
    ensure_window(n);
    own_count_ = counts[rank_];
    shm_publish(send, n);
    shm_sync();
    shm_sum_own(send, recv);
  }
  // Publishes this rank's slice, then copies every other rank's. A caller
  // whose block is the window's values block (shared_block(n, 1)) publishes
  // nothing and reads the peers' values blocks; any other block goes through
  // the scratch block (the optimizer's gathered state, for one).
  void shm_allgather(float* data, std::span<const int64_t> counts) {
    const int64_t n = displs_.back() + counts.back();
    ensure_window(n);
    const int64_t at = displs_[rank_];
    const bool own = data == values_of(rank_);
    if (!own) copy_floats(sums_of(rank_) + at, data + at, counts[rank_]);
    shm_sync();
    for (int r = 0; r < size_; ++r)
      if (r != rank_)
        copy_floats(data + displs_[r], (own ? values_of(r) : sums_of(r)) + displs_[r], counts[r]);
  }
  // The unsharded all-reduce: slices of whole 16-float lines as the sharded
  // optimizer's, each rank sums its own into its published block, all copy.
  void shm_allreduce(float* data, int64_t n) {
    shm_counts_.resize(static_cast<size_t>(size_));
    const int64_t lines = (n + 15) / 16;
    for (int r = 0; r < size_; ++r)
      shm_counts_[r] =
          std::min(n, lines * (r + 1) / size_ * 16) - std::min(n, lines * r / size_ * 16);
    slices(shm_counts_, "allreduce_sum");
    ensure_window(n);
    own_count_ = shm_counts_[rank_];
    shm_publish(data, n);
    shm_sync();
    const int64_t at = displs_[rank_];
    shm_sum_own(data, sums_of(rank_) + at);
    copy_floats(data + at, sums_of(rank_) + at, own_count_);
    shm_sync();
    for (int r = 0; r < size_; ++r)
      if (r != rank_) copy_floats(data + displs_[r], sums_of(r) + displs_[r], shm_counts_[r]);
  }

  template <typename T>
  void sum(T* data, int64_t n, MPI_Datatype type) {
    for (int64_t at = 0; at < n; at += kBucket)
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, static_cast<int>(std::min(kBucket, n - at)),
                          type, MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
  }
  int ring(int r) const {
    return (r % size_ + size_) % size_;
  }
  // Where each slice starts; every count must fit MPI's int.
  void slices(std::span<const int64_t> counts, const char* what) {
    check_slices(counts, size_, what);
    displs_.resize(counts.size());
    int64_t at = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      if (counts[r] > std::numeric_limits<int>::max())
        fail(what, ": slice ", r, " holds ", counts[r], " values; MPI counts them in int (at most ",
             std::numeric_limits<int>::max(), ")");
      displs_[r] = at;
      at += counts[r];
    }
  }
  int rank_ = 0, size_ = 1;
  static inline Mpi* live_ = nullptr;  // for the atexit handler (release() before MPI_Finalize)
  MPI_Comm node_ = MPI_COMM_NULL;      // the ranks on this node
  bool one_node_ = false;              // every rank of the job is on this node
  bool shm_ = false;                   // the shared-memory path is in use
  MPI_Win win_ = MPI_WIN_NULL;
  int64_t cap_ = 0;           // floats a block of each rank's segment
  std::vector<float*> segs_;  // every rank's segment, mapped here
  std::vector<const float*> srcs_;
  std::vector<int64_t> shm_counts_;
  int64_t own_count_ = 0;
  bool pinned_ = false;  // shared_block handed the window out: it never moves
  std::vector<int64_t> displs_;
  std::vector<float> incoming_, partial_;  // kept: a step allocates nothing
  std::vector<MPI_Request> requests_;      // started by start_allreduce_sum, not yet waited for
};

bool started_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE") || std::getenv("PMIX_RANK");
}
#endif

Communicator* g_world = nullptr;

}  // namespace

MpiTransport mpi_transport_from_name(const std::string& name) {
  if (name == "auto") return MpiTransport::Auto;
  if (name == "ring") return MpiTransport::Ring;
  if (name == "shm") return MpiTransport::Shm;
  fail("--mpi-transport must be auto, ring or shm, got '", name, "'");
}

bool built_with_mpi() {
#ifdef NORMLAB_MPI
  return true;
#else
  return false;
#endif
}

Communicator& world() {
  static const std::unique_ptr<Communicator> w = []() -> std::unique_ptr<Communicator> {
#ifdef NORMLAB_MPI
    if (started_by_mpirun()) return std::make_unique<Mpi>();
#endif
    return std::make_unique<SingleProcess>();
  }();
  g_world = w.get();
  return *w;
}

Communicator* world_if_parallel() {
  return g_world && g_world->size() > 1 ? g_world : nullptr;
}

void run_simulated_ranks(int K, const std::function<void(Communicator&)>& fn) {
  if (K < 1 || K > 64) fail("run_simulated_ranks: K must be between 1 and 64, got ", K);
  SimulatedGroup group(K);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(K));
  std::vector<std::thread> threads;
  for (int r = 0; r < K; ++r)
    threads.emplace_back([&, r] {
      Simulated comm(group, r);
      try {
        fn(comm);
      } catch (...) {
        errors[r] = std::current_exception();
        group.fail();
      }
    });
  for (auto& t : threads) t.join();
  // The first rank's own failure, not a "simulated rank failed" of another one.
  for (const auto& e : errors)
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const Error& err) {
        if (std::string(err.what()) == "a simulated rank failed") continue;
        throw;
      }
    }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

void agree_on_errors(Communicator& comm, const std::function<void()>& fn) {
  constexpr size_t kMessage = 1024;
  std::string mine;
  bool failed = false;
  try {
    fn();
  } catch (const Error& e) {
    failed = true;
    mine = e.what();
  }
  if (comm.size() == 1) {
    if (failed) throw Error(mine);
    return;
  }
  std::vector<char> send(kMessage + 1, 0), recv((kMessage + 1) * comm.size(), 0);
  send[0] = failed ? 1 : 0;
  std::memcpy(send.data() + 1, mine.data(), std::min(mine.size(), kMessage - 1));
  comm.allgather(send.data(), static_cast<int64_t>(send.size()), recv.data());
  std::string all;
  int failing = 0;
  bool alike = true;  // every failing rank gave the same message
  for (int r = 0; r < comm.size(); ++r) {
    const char* m = recv.data() + r * (kMessage + 1);
    if (!m[0]) continue;
    alike = alike && (failing == 0 || std::strcmp(m + 1, recv.data() + 1) == 0);
    ++failing;
    all += (all.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + " of " +
           std::to_string(comm.size()) + ": " + std::string(m + 1);
  }
  // The same reason on every rank (a bad checkpoint or flag) is said once.
  if (failing == comm.size() && alike) throw AgreedError(std::string(recv.data() + 1));
  if (!all.empty()) throw AgreedError(all);
}

}  // namespace normlab
