// normlab train: trains a model (spec or preset) on MNIST-like data; see
// include/normlab/training_run.hpp for what the run directory holds.
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "commands.hpp"
#include "data_flags.hpp"
#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/training_run.hpp"

namespace normlab::cli {
namespace {

std::string clock_text(double s) {
  if (!std::isfinite(s) || s < 0) return "--:--";
  const int t = static_cast<int>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d", t / 60, t % 60);
  return buf;
}

// Progress on stderr: a redrawn bar on a terminal, nothing in between epochs otherwise.
class ConsoleObserver : public TrainingObserver {
 public:
  explicit ConsoleObserver(bool bar) : bar_(bar) {}

  void on_start(const std::string& model, int64_t parameters, int64_t n_train, int64_t n_test,
                int64_t first_epoch) override {
    std::cout << "model: " << model << "\n"
              << "parameters: " << parameters << ", train samples: " << n_train
              << ", test samples: " << n_test << "\n";
    if (first_epoch > 1) std::cout << "resuming at epoch " << first_epoch << "\n";
    std::cout.flush();
  }

  void on_progress(const Progress& p) override {
    if (!bar_) return;
    const int width = 30;
    const int filled = static_cast<int>(width * p.batch / std::max<int64_t>(1, p.batches));
    const double left = p.samples_per_second > 0 && p.batch > 0
                            ? p.seconds * static_cast<double>(p.batches - p.batch) / p.batch
                            : NAN;
    std::fprintf(stderr, "\repoch %lld/%lld [%s%s] %lld/%lld  %.0f samples/s  loss %.4f  left %s ",
                 static_cast<long long>(p.epoch), static_cast<long long>(p.epochs),
                 std::string(filled, '#').c_str(), std::string(width - filled, '.').c_str(),
                 static_cast<long long>(p.batch), static_cast<long long>(p.batches),
                 p.samples_per_second, p.running_loss, clock_text(left).c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

  void on_epoch(const EpochMetrics& m) override {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
    std::printf(
        "epoch %lld  train loss %.4f  train acc %.2f%%  test loss %.4f  test acc %.2f%%  "
        "%.2f s (+%.2f s eval)%s\n",
        static_cast<long long>(m.epoch), m.train_loss, 100 * m.train_accuracy, m.test_loss,
        100 * m.test_accuracy, m.train_seconds, m.eval_seconds,
        m.skipped_steps ? (" skipped " + std::to_string(m.skipped_steps) + " steps").c_str() : "");
    if (!m.profile.empty())
      std::printf("where epoch %lld's training time went:\n%s", static_cast<long long>(m.epoch),
                  m.profile.c_str());
    std::fflush(stdout);
  }

  void on_note(const std::string& text) override {
    std::cout << text << "\n";
    std::cout.flush();
  }

  void on_skipped_step(int64_t step, const std::string& why) override {
    if (drawn_) std::fprintf(stderr, "\r\033[K");
    drawn_ = false;
    std::fprintf(stderr, "normlab: warning: skipped step %lld: %s\n", static_cast<long long>(step),
                 why.c_str());
  }

 private:
  bool bar_;
  bool drawn_ = false;
};

}  // namespace

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "Train a model on MNIST or Fashion-MNIST");
  auto cfg = std::make_shared<TrainConfig>();
  auto data = std::make_shared<DataFlags>();
  auto threads = std::make_shared<int64_t>(0);
  auto progress = std::make_shared<std::string>("auto");
  auto on_nonfinite = std::make_shared<std::string>("stop");
  auto lr = std::make_shared<double>(0), wd = std::make_shared<double>(0);
  auto momentum = std::make_shared<double>(0);
  auto nesterov = std::make_shared<bool>(false);
  auto wn_keys = std::make_shared<std::string>("legacy");
  auto no_shard = std::make_shared<bool>(false);
  auto shard_yes = std::make_shared<bool>(false);  // --shard-optimizer: the default anyway

  add_data_flags(cmd, *data);
  cmd->add_option("--model,-m", cfg->model, "Model spec or preset (see `normlab model --help`)")
      ->capture_default_str();
  cmd->add_option("--epochs,-e", cfg->epochs, "Epochs to train")->capture_default_str();
  cmd->add_option(
         "--batch-size,-b", cfg->batch_size,
         "Training batch size (a single leftover sample joins the last batch of the epoch)")
      ->capture_default_str();
  cmd->add_option("--eval-batch-size", cfg->eval_batch_size, "Evaluation batch size")
      ->capture_default_str();
  cmd->add_option("--optimizer,-o", cfg->optimizer, "adam, adamw or sgd")->capture_default_str();
  auto* lr_opt = cmd->add_option("--lr", *lr, "Learning rate (adam/adamw default 1e-3)");
  auto* wd_opt = cmd->add_option("--weight-decay", *wd, "Weight decay (adamw default 0.01)");
  auto* mom_opt = cmd->add_option("--momentum", *momentum, "SGD momentum");
  auto* nes_opt = cmd->add_flag("--nesterov", *nesterov, "SGD with Nesterov momentum");
  cmd->add_option("--seed,-s", cfg->seed, "Seed of initialisation and batch order")
      ->capture_default_str();
  cmd->add_option("--threads,-t", *threads, "Threads (0: OpenMP's default)")->capture_default_str();
  cmd->add_option("--out", cfg->out_dir, "Run directory for metrics, plots and checkpoints")
      ->capture_default_str();
  cmd->add_option(
      "--resume", cfg->resume,
      "Continue from this checkpoint.safetensors (settings come from it; --out defaults to "
      "its directory)");
  cmd->add_option("--checkpoint-every", cfg->checkpoint_every,
                  "Also checkpoint every N steps (0: at the end of each epoch only)");
  cmd->add_option("--limit-train", cfg->limit_train,
                  "Use only the first N training samples (0: all)");
  cmd->add_option("--limit-test", cfg->limit_test, "Use only the first N test samples");
  cmd->add_option("--on-nonfinite", *on_nonfinite,
                  "stop: end the run at a NaN/inf loss or gradient; skip: skip that step")
      ->capture_default_str();
  cmd->add_flag(
      "--profile", cfg->profile,
      "Print where each epoch's training time goes (timers around every phase of a step)");
  cmd->add_option("--weight-norm-keys", *wn_keys,
                  "Weight-norm keys in model.safetensors: legacy (weight_g, weight_v: "
                  "torch.nn.utils.weight_norm) or parametrizations "
                  "(parametrizations.weight.original0/1: PyTorch >= 2.1's "
                  "torch.nn.utils.parametrizations.weight_norm)")
      ->capture_default_str();
  cmd->add_option("--wn-init", cfg->wn_init,
                  "How weight-norm layers start: pytorch (weight_norm(nn.Linear)'s init) or data "
                  "(Salimans & Kingma 2016, sec. 3: v ~ N(0, 0.05^2), then g and bias set so that "
                  "every pre-activation has mean 0 and std 1 on the first training batch; "
                  "wnlinear with dim=0 and a bias only; not redone on --resume)")
      ->capture_default_str();
  cmd->add_flag("--sync-bn", cfg->sync_bn,
                "Every batchnorm and batchnorm2d becomes a SyncBatchNorm and every batchrenorm "
                "a SyncBatchRenorm1d: under mpirun -np K, batch statistics of the global batch "
                "(ghostbatchnorm and mean_only_batchnorm are refused; docs/distributed.md)");
  // Two flags, not CLI11's "--shard-optimizer,!--no-shard-optimizer": its help
  // line "--shard-optimizer,--no-shard-optimizer{false}" read as "off by
  // default" although sharding is the default under mpirun.
  auto* shard_on = cmd->add_flag(
      "--shard-optimizer", *shard_yes,
      "Under mpirun (the default): each rank updates only its 1/K slice of the parameters and "
      "keeps the optimizer state of that slice (ZeRO stage 1: gradients reduce-scattered, "
      "weights all-gathered). The same weights and files as --no-shard-optimizer "
      "(docs/distributed.md)");
  cmd->add_flag("--no-shard-optimizer", *no_shard,
                "Under mpirun: every rank all-reduces the gradients and updates all the "
                "parameters (the optimizer not sharded)")
      ->excludes(shard_on);
  cmd->add_option("--mpi-transport", cfg->mpi_transport,
                  "Under mpirun, how ranks exchange gradients and weights: auto (shared memory "
                  "when every rank is on one node, else ring), ring (MPI_Sendrecv rings, any "
                  "nodes) or shm (MPI-3 shared memory, one node only) (docs/distributed.md)")
      ->capture_default_str();
  cmd->add_option("--progress", *progress, "auto (a bar on a terminal), always or never")
      ->capture_default_str();

  cmd->callback([=] {
    TrainConfig c = *cfg;
    if (!c.resume.empty()) {
      // Settings come from the checkpoint; a flag given here must agree (checked by the run).
      const TrainConfig saved = config_from_checkpoint(c.resume);
      if (!cmd->count("--model")) c.model = saved.model;
      if (!cmd->count("--batch-size")) c.batch_size = saved.batch_size;
      if (!cmd->count("--optimizer")) c.optimizer = saved.optimizer;
      if (!cmd->count("--seed")) c.seed = saved.seed;
      if (!cmd->count("--limit-train")) c.limit_train = saved.limit_train;
      if (!cmd->count("--limit-test")) c.limit_test = saved.limit_test;
      if (!cmd->count("--epochs")) c.epochs = saved.epochs;
      if (!cmd->count("--dataset") && !cmd->count("--data")) data->dataset = saved.dataset;
      c.optim = saved.optim;
      c.weight_norm_keys = saved.weight_norm_keys;
      if (!cmd->count("--wn-init")) c.wn_init = saved.wn_init;
      if (!cmd->count("--sync-bn")) c.sync_bn = saved.sync_bn;
      // The run continues where its checkpoint lives, not in the default --out
      // (where it could replace another run's files).
      if (!cmd->count("--out")) {
        const std::filesystem::path dir = std::filesystem::path(c.resume).parent_path();
        c.out_dir = dir.empty() ? "." : dir.string();
      }
    }
    if (cmd->count("--weight-norm-keys")) {
      const auto keys = weight_norm_keys_from_name(*wn_keys);
      if (!keys)
        fail("--weight-norm-keys must be legacy or parametrizations, got '", *wn_keys, "'");
      c.weight_norm_keys = *keys;
    }
    if (lr_opt->count()) c.optim.lr = *lr;
    if (wd_opt->count()) c.optim.weight_decay = *wd;
    if (mom_opt->count()) c.optim.momentum = *momentum;
    if (nes_opt->count()) c.optim.nesterov = *nesterov;
    if (*on_nonfinite != "stop" && *on_nonfinite != "skip")
      fail("--on-nonfinite must be stop or skip, got '", *on_nonfinite, "'");
    c.skip_nonfinite = *on_nonfinite == "skip";
    c.shard_optimizer = !*no_shard;
    if (*progress != "auto" && *progress != "always" && *progress != "never")
      fail("--progress must be auto, always or never, got '", *progress, "'");
    set_threads(*threads);
    c.dataset = data->dataset;
    // Under mpirun every rank says which ranks cannot find their data.
    agree_on_errors(world(), [&] { c.data_dir = resolve_data_dir(*data); });
    ConsoleObserver observer(*progress == "always" || (*progress == "auto" && isatty(2)));
    const auto history = run_training(c, observer);
    if (world().rank() != 0) return;  // under mpirun rank 0 speaks
    std::cout << "wrote " << c.out_dir << "/{metrics.jsonl, loss.png, accuracy.png, "
              << "model.safetensors, checkpoint.safetensors}\n";
    (void)history;
  });
}

}  // namespace normlab::cli
