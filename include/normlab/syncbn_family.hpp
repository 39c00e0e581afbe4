// SyncBatchRenorm1d: Batch Renormalization with the global batch's statistics
// under mpirun (issue 13; docs/distributed.md). Its own header, not included
// from normlab/layers.hpp: bn_family.hpp includes layers.hpp, so a class
// derived from BatchRenorm1d cannot be defined from layers.hpp's tail.
#pragma once
#include "normlab/bn_family.hpp"
#include "normlab/distributed.hpp"
#include "normlab/syncbn.hpp"

namespace normlab {

// SyncBatchRenorm1d: Batch Renormalization (BatchRenorm1d, normlab/bn_family.hpp;
// Ioffe 2017, Algorithm 1) whose training statistics are the global batch's
// over the ranks of a communicator: what `normlab train --sync-bn` makes of a
// `batchrenorm` (no spec name of its own; PyTorch has no Batch Renorm).
// Training forward: SyncBatchNorm's exact (count, mean, M2) merge in double,
// then r and d from the global mean and biased variance against the running
// statistics (the same on every rank), y = gamma ((x - mean) rstd r + d) +
// beta; running_mean / running_var move with the global mean and unbiased
// variance, as one process with the whole batch. Backward (r, d constant):
// SyncBatchNorm's with gamma r (global sums of dy and dy (x - mean));
// weight gradient r rstd sum dy (x - mean) + d sum dy, bias sum dy, this
// rank's own (the trainer adds them up). Eval mode, a communicator of one
// rank: BatchRenorm1d's exactly
// (last_r()/last_d() report those forwards only; synced_r()/synced_d() the
// synchronised ones). Options, errors and state_dict keys: BatchRenorm1d's;
// a global batch of one value per channel is refused on every rank.
template <typename T>
class SyncBatchRenorm1d : public BatchRenorm1d<T> {
 public:
  // comm: the ranks to synchronise over; nullptr means world() (taken at each training forward).
  explicit SyncBatchRenorm1d(int64_t C, BatchRenormOptions opt = {}, Communicator* comm = nullptr);
  std::string name() const override;
  const Tensor<T>& backward(const Tensor<T>& dy) override;
  void set_communicator(Communicator* comm) { comm_ = comm; }
  // For gradient checks, as BatchRenorm1d's (call it on this type): synchronised
  // training forwards use these r and d too.
  void freeze_correction(Tensor<T> r, Tensor<T> d) {
    frozen_r_ = r, frozen_d_ = d;
    BatchRenorm1d<T>::freeze_correction(std::move(r), std::move(d));
  }
  const std::vector<double>& synced_r() const { return r_; }
  const std::vector<double>& synced_d() const { return d_; }

 protected:
  const Tensor<T>& forward_impl(const Tensor<T>& x) override;

 private:
  int64_t C_;
  BatchRenormOptions opt_;
  Communicator* comm_;
  const Tensor<T>* x_ = nullptr;
  bool synced_ = false;
  double count_ = 0;
  std::vector<double> mean_, rstd_, scale_, r_, d_, moments_, all_, sums_;
  Tensor<T> y_, dx_, shift_, gr_, frozen_r_, frozen_d_;
};

}  // namespace normlab
