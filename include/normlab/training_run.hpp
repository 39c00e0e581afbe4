// A whole training run: data -> model -> epochs of steps -> metrics, plots and
// checkpoints in one output directory. The CLI (`normlab train`) is a thin
// front end over run_training(); what a person sees comes through the observer.
//
// The run directory holds, each written atomically:
//   metrics.jsonl            one JSON object per finished epoch
//   loss.png, accuracy.png   the training curves (gnuplot)
//   model.safetensors        the model's state_dict (loads in PyTorch; weight-norm
//                            keys as TrainConfig::weight_norm_keys says)
//   checkpoint.safetensors   model + optimizer + position: what --resume needs
// Both .safetensors files carry the training configuration in their metadata
// ("train_config"), and with --wn-init data a "wn_init" record of the init
// (method, paper section, batch, rows and layers).
//
// Determinism: for a given seed and thread count the run is bitwise
// reproducible, and a run resumed from any checkpoint it wrote ends with
// exactly the weights of a run that was never stopped (the batch order of an
// epoch depends only on (seed, epoch); the position inside the epoch and the
// epoch's running sums are stored in the checkpoint).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "normlab/optim.hpp"
#include "normlab/state_dict.hpp"

namespace normlab {

// Limits that make a setting absurd rather than merely big.
inline constexpr int64_t kMaxEpochs = 1000000;
inline constexpr int64_t kMaxBatchSize = int64_t(1) << 20;  // the model planner's largest dim

struct TrainConfig {
  std::string model = "seed001";  // spec or preset
  std::string dataset = "mnist";  // for messages and metadata
  std::string data_dir;           // directory with the four IDX files
  int64_t epochs = 5;
  int64_t batch_size = 128;
  int64_t eval_batch_size = 1000;
  std::string optimizer = "adam";
  OptimizerOptions optim;
  uint64_t seed = 0;
  int64_t limit_train = 0;       // use only the first n training samples (0: all)
  int64_t limit_test = 0;        // likewise for the test set
  int64_t checkpoint_every = 0;  // also checkpoint every n steps (0: at epoch ends only)
  bool skip_nonfinite = false;   // skip a step with a NaN/inf loss or gradient instead of stopping
  bool profile = false;          // time the phases of every step (EpochMetrics::profile)
  std::string out_dir = "out/train";
  std::string resume;  // path of a checkpoint.safetensors to continue from ("" : fresh run)
  // The weight-norm keys of model.safetensors (for PyTorch; checkpoint.safetensors
  // always has normlab's legacy weight_g / weight_v): state_dict.hpp.
  WeightNormKeys weight_norm_keys = WeightNormKeys::Legacy;
  // How the weight-norm layers start: "pytorch" (weight_norm(nn.Linear)'s own
  // init, as built) or "data" (the paper's data-dependent init,
  // weight_norm_init.hpp, on the first training batch of epoch 1, once, before
  // the first step; a resumed run takes its weights from the checkpoint).
  std::string wn_init = "pytorch";
  // Every BatchNorm layer (batchnorm/bn) of the model becomes a SyncBatchNorm
  // (normlab/syncbn.hpp): under mpirun the batch statistics are those of the
  // global batch. Same state_dict keys, so checkpoints move between both.
  bool sync_bn = false;
  // Under mpirun: the sharded optimizer (ZeRO stage 1, docs/distributed.md):
  // gradients reduce-scattered, each rank updates its 1 / K of the parameters
  // and keeps the optimizer state of those only, then the weights are
  // all-gathered; the default, as it measured faster on one machine. Off
  // (--no-shard-optimizer): every rank all-reduces the gradients and updates
  // all. The files are the same either way; no effect in one process.
  bool shard_optimizer = true;
  // Under mpirun: how the ranks exchange gradients and weights (--mpi-transport,
  // docs/distributed.md): "auto" (shared memory when every rank is on one node,
  // else rings of MPI_Sendrecv), "ring" or "shm". Not saved in checkpoints: it
  // changes the order of float additions only, not the run.
  std::string mpi_transport = "auto";
};

struct EpochMetrics {
  int64_t epoch = 0;  // 1-based
  int64_t steps = 0;  // optimizer steps so far in the run
  double train_loss = 0, train_accuracy = 0;
  double test_loss = 0, test_accuracy = 0;
  double train_seconds = 0, eval_seconds = 0;
  int64_t skipped_steps = 0;
  std::vector<double> loss_curve;  // running train loss at ~20 points of the epoch
  std::string profile;  // with TrainConfig::profile: where train_seconds went (profile::report)
};

struct Progress {
  int64_t epoch = 0, epochs = 0;   // 1-based epoch
  int64_t batch = 0, batches = 0;  // batches done in this epoch
  double running_loss = 0;         // mean train loss so far in this epoch
  double seconds = 0;              // since this epoch started (this process)
  double samples_per_second = 0;
};

class TrainingObserver {
 public:
  virtual ~TrainingObserver() = default;
  virtual void on_start(const std::string& /*model*/, int64_t /*parameters*/,
                        int64_t /*train_samples*/, int64_t /*test_samples*/,
                        int64_t /*first_epoch*/) {}
  virtual void on_progress(const Progress&) {}  // a few times a second at most
  virtual void on_epoch(const EpochMetrics&) {}
  virtual void on_skipped_step(int64_t /*step*/, const std::string& /*why*/) {}
  // A line for the run's log, e.g. what the weight-norm init did (after on_start).
  virtual void on_note(const std::string& /*text*/) {}
};

// Under mpirun (world() has K > 1 ranks; docs/distributed.md) every rank runs
// this with the same configuration: rank r trains on the contiguous slice
// [B r / K, B (r + 1) / K) of every global batch of B samples (the batch
// order is the one-process run's), the weights, buffers and optimizer state
// start as rank 0's (broadcast), gradients are summed over the ranks by the
// trainer, and only rank 0 evaluates, reports through the observer and writes
// the run directory; without --sync-bn each rank's BatchNorm keeps its own
// running statistics and the files hold rank 0's. Every batch must give each
// rank a sample (K <= the smallest batch, else an Error on every rank); a data
// set a rank cannot read is an Error on every rank, naming the rank.
// Runs (or resumes) the training; returns the metrics of every epoch of the
// run, including those before a resume. Throws Error on bad configuration,
// data or checkpoints, and on a non-finite step unless skip_nonfinite (the
// message names the step; the last checkpoint is left as it was).
std::vector<EpochMetrics> run_training(const TrainConfig& config, TrainingObserver& observer);

// Reads the training configuration stored in a checkpoint's metadata
// (model, seed, batch size, optimizer and its options, dataset, limits).
TrainConfig config_from_checkpoint(const std::string& path);

}  // namespace normlab
