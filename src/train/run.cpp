// The training run: see include/normlab/training_run.hpp for the contract.
#include "normlab/training_run.hpp"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "normlab/atomic_file.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/data.hpp"
#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/plot.hpp"
#include "normlab/profile.hpp"
#include "normlab/train.hpp"
#include "normlab/weight_norm_init.hpp"

namespace normlab {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The metadata key of the data-dependent init's record (training_run.hpp).
constexpr const char* kWnInitKey = "wn_init";

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

json options_to_json(const OptimizerOptions& o) {
  json j = json::object();
  auto put = [&](const char* k, const auto& v) {
    if (v) j[k] = *v;
  };
  put("lr", o.lr), put("beta1", o.beta1), put("beta2", o.beta2), put("eps", o.eps);
  put("weight_decay", o.weight_decay), put("amsgrad", o.amsgrad), put("momentum", o.momentum);
  put("dampening", o.dampening), put("nesterov", o.nesterov);
  return j;
}

OptimizerOptions options_from_json(const json& j) {
  OptimizerOptions o;
  auto get = [&](const char* k, auto& v) {
    if (j.contains(k)) v = j.at(k).get<typename std::decay_t<decltype(v)>::value_type>();
  };
  get("lr", o.lr), get("beta1", o.beta1), get("beta2", o.beta2), get("eps", o.eps);
  get("weight_decay", o.weight_decay), get("amsgrad", o.amsgrad), get("momentum", o.momentum);
  get("dampening", o.dampening), get("nesterov", o.nesterov);
  return o;
}

json metrics_to_json(const EpochMetrics& m) {
  return {{"epoch", m.epoch},
          {"steps", m.steps},
          {"train_loss", m.train_loss},
          {"train_accuracy", m.train_accuracy},
          {"test_loss", m.test_loss},
          {"test_accuracy", m.test_accuracy},
          {"train_seconds", m.train_seconds},
          {"eval_seconds", m.eval_seconds},
          {"skipped_steps", m.skipped_steps},
          {"loss_curve", m.loss_curve}};
}

// JSON has no NaN: nlohmann writes it as null (e.g. the train loss of an epoch
// whose every step was skipped), so null reads back as NaN.
double number(const json& j, const char* key) {
  const json& v = j.at(key);
  return v.is_null() ? NAN : v.get<double>();
}

EpochMetrics metrics_from_json(const json& j) {
  EpochMetrics m;
  m.epoch = j.at("epoch"), m.steps = j.at("steps");
  m.train_loss = number(j, "train_loss"), m.train_accuracy = number(j, "train_accuracy");
  m.test_loss = number(j, "test_loss"), m.test_accuracy = number(j, "test_accuracy");
  m.train_seconds = number(j, "train_seconds"), m.eval_seconds = number(j, "eval_seconds");
  m.skipped_steps = j.at("skipped_steps");
  for (const json& v : j.at("loss_curve"))
    m.loss_curve.push_back(v.is_null() ? NAN : v.get<double>());
  return m;
}

// Where a run stands inside an epoch; stored in checkpoints so a resumed run
// continues the same sums and reports the same epoch metrics.
struct Position {
  int64_t epoch = 0;  // 0-based epoch in progress (== completed epochs at an epoch end)
  int64_t batch = 0;  // batches done in it
  double loss_sum = 0;
  int64_t correct = 0, count = 0, skipped = 0;
  std::vector<double> curve;
};

void write_metrics(const std::string& dir, const std::vector<EpochMetrics>& history) {
  std::string text;
  for (const auto& m : history) text += metrics_to_json(m).dump() + "\n";
  write_file_atomic(dir + "/metrics.jsonl", text);
}

void plot_curves(const std::string& dir, const std::vector<EpochMetrics>& history,
                 const std::string& title) {
  Series train{"train loss (running)", {}, {}, {}}, test{"test loss", {}, {}, {}};
  Series acc{"test accuracy (%)", {}, {}, {}}, train_acc{"train accuracy (%)", {}, {}, {}};
  for (const auto& m : history) {
    const size_t k = m.loss_curve.size();
    for (size_t i = 0; i < k; ++i) {
      train.x.push_back(static_cast<double>(m.epoch - 1) + static_cast<double>(i + 1) / k);
      train.y.push_back(m.loss_curve[i]);
    }
    test.x.push_back(static_cast<double>(m.epoch));
    test.y.push_back(m.test_loss);
    acc.x.push_back(static_cast<double>(m.epoch));
    acc.y.push_back(100.0 * m.test_accuracy);
    train_acc.x.push_back(static_cast<double>(m.epoch));
    train_acc.y.push_back(100.0 * m.train_accuracy);
  }
  plot_lines(dir + "/loss.png", {title + ": loss", "epoch", "cross-entropy", true}, {train, test});
  plot_lines(dir + "/accuracy.png", {title + ": accuracy", "epoch", "accuracy (%)", false},
             {train_acc, acc});
}

std::string meta_json(const Metadata& meta, const std::string& key, const std::string& path) {
  return metadata_string(meta, key, path);
}

// Fault injection for the tests of the non-finite paths (tests/test_train_nonfinite.cpp):
// NORMLAB_FAULT_BATCHES lists batch numbers of the run (1-based, counted over all
// epochs, e.g. "7,9") whose first input value becomes NaN, so that the step meets
// a non-finite value at a known place, as a diverging run does at an unknown one.
std::set<int64_t> fault_batches() {
  std::set<int64_t> out;
  const char* env = std::getenv("NORMLAB_FAULT_BATCHES");
  if (!env) return out;
  std::stringstream ss(env);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 1)
      fail("NORMLAB_FAULT_BATCHES='", env, "': expected batch numbers >= 1 separated by commas");
    out.insert(v);
  }
  return out;
}

// Fault injection for the multi-process tests (tests/scripts/mpi_train_test.sh):
// NORMLAB_DEBUG_KILL_AT="STEP:RANK" makes rank RANK kill itself (SIGKILL, as a
// crashed machine would vanish) just before training step STEP.
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

void debug_fail_at_step(int64_t step, int rank) {
  static const char* env = std::getenv("NORMLAB_DEBUG_KILL_AT");
  if (!env) return;
  long long s = 0;
  int r = 0;
  if (std::sscanf(env, "%lld:%d", &s, &r) != 2)
    fail("NORMLAB_DEBUG_KILL_AT='", env, "': expected STEP:RANK");
  if (s == step && r == rank) std::raise(SIGKILL);
}

// Runs f; its Error becomes an AgreedError (prefixed): for the steps that
// depend only on the flags, which every rank shares, so under mpirun every
// rank reports the same reason and nobody aborts the job.
template <typename F>
auto agreed(F&& f, const std::string& prefix = "") -> decltype(f()) {
  try {
    return f();
  } catch (const AgreedError&) {
    throw;
  } catch (const Error& e) {
    throw AgreedError(prefix + e.what());
  }
}

}  // namespace

TrainConfig config_from_checkpoint(const std::string& path) {
  const SafetensorsFile file = read_safetensors(path);
  const Metadata& meta = file.metadata;
  TrainConfig c;
  try {
    const json cfg = json::parse(meta_json(meta, "train_config", path));
    c.model = cfg.at("model");
    c.dataset = cfg.at("dataset");
    c.batch_size = cfg.at("batch_size");
    c.optimizer = cfg.at("optimizer");
    c.optim = options_from_json(cfg.at("optimizer_options"));
    c.seed = cfg.at("seed");
    c.limit_train = cfg.at("limit_train");
    c.limit_test = cfg.at("limit_test");
    c.epochs = cfg.at("epochs");
    // Absent in checkpoints written before the option existed: legacy keys then.
    const std::string keys = cfg.value("weight_norm_keys", std::string("legacy"));
    const auto parsed = weight_norm_keys_from_name(keys);
    if (!parsed)
      fail(path, ": the training configuration says weight_norm_keys '", keys,
           "', expected legacy or parametrizations");
    c.weight_norm_keys = *parsed;
    // Absent in checkpoints written before --wn-init existed: PyTorch's init then.
    c.wn_init = cfg.value("wn_init", std::string("pytorch"));
    c.sync_bn = cfg.value("sync_bn", false);
  } catch (const json::exception& e) {
    fail(path, ": the training configuration in the checkpoint's metadata is damaged (", e.what(),
         ")");
  }
  return c;
}

std::vector<EpochMetrics> run_training(const TrainConfig& cfg, TrainingObserver& observer) {
  if (cfg.epochs <= 0 || cfg.epochs > kMaxEpochs)
    fail("--epochs must be between 1 and ", kMaxEpochs, ", got ", cfg.epochs);
  if (cfg.batch_size <= 0 || cfg.batch_size > kMaxBatchSize)
    fail("--batch-size must be between 1 and ", kMaxBatchSize, ", got ", cfg.batch_size);
  if (cfg.eval_batch_size <= 0 || cfg.eval_batch_size > kMaxBatchSize)
    fail("--eval-batch-size must be between 1 and ", kMaxBatchSize, ", got ", cfg.eval_batch_size);
  if (cfg.limit_train < 0) fail("--limit-train must not be negative, got ", cfg.limit_train);
  if (cfg.limit_test < 0) fail("--limit-test must not be negative, got ", cfg.limit_test);
  if (cfg.checkpoint_every < 0)
    fail("--checkpoint-every must not be negative, got ", cfg.checkpoint_every);
  if (cfg.wn_init != "pytorch" && cfg.wn_init != "data")
    fail("--wn-init must be pytorch or data, got '", cfg.wn_init, "'");

  Communicator& comm = world();
  const int rank = comm.rank(), ranks = comm.size();
  agreed([&] { comm.set_transport(mpi_transport_from_name(cfg.mpi_transport)); });
  const bool lead = rank == 0;  // rank 0 reports and writes; the only one in a plain run
  TrainingObserver quiet;
  TrainingObserver& report = lead ? observer : quiet;

  // Data first: a bad data directory should fail before anything is written.
  // Under mpirun every rank learns which ranks could not read it.
  Dataset train_set, test_set;
  agree_on_errors(comm, [&] {
    train_set = load_dataset(cfg.data_dir, Split::Train);
    test_set = load_dataset(cfg.data_dir, Split::Test);
  });
  const int64_t D = train_set.features();
  if (test_set.features() != D)
    fail(test_set.images_file(), ": images have ", test_set.features(),
         " pixels, the training images ", D);
  const int64_t n_train =
      cfg.limit_train ? std::min(cfg.limit_train, train_set.size()) : train_set.size();
  const int64_t n_test =
      cfg.limit_test ? std::min(cfg.limit_test, test_set.size()) : test_set.size();
  if (n_train < 2)
    fail("the training set needs at least 2 samples, got ", n_train,
         n_train < train_set.size()
             ? " (--limit-train " + std::to_string(cfg.limit_train) + ")"
             : " (" + train_set.images_file() + " holds " + std::to_string(train_set.size()) + ")");
  BatchSampler sampler(n_train, cfg.batch_size, /*shuffle=*/true, cfg.seed, LastBatch::MergeSingle);
  if (ranks > 1) {
    // Batch sizes do not depend on the epoch: the last one is the smallest
    // (or, merged with a single leftover sample, the largest).
    const int64_t smallest =
        std::min<int64_t>(static_cast<int64_t>(sampler.batch(sampler.num_batches() - 1).size()),
                          static_cast<int64_t>(sampler.batch(0).size()));
    // Every rank finds this alike: an agreed error, no rank aborts the job.
    if (smallest < ranks)
      throw AgreedError(
          concat(ranks, " ranks need at least one sample each from every batch, but --batch-size ",
                 cfg.batch_size, " over ", n_train, " training samples gives a batch of ", smallest,
                 smallest < cfg.batch_size ? " (the last of each epoch)" : "", "; use at most ",
                 smallest, " ranks or another --batch-size"));
  }

  // From the flags alone, alike on every rank: agreed errors.
  Rng rng(cfg.seed);
  // Named where the spec came from: the flag, or the checkpoint being resumed.
  std::vector<LayerPlan> plan = agreed(
      [&] {
        return plan_model(cfg.model, Shape{cfg.batch_size, D});
      },
      cfg.resume.empty() ? "--model: " : cfg.resume + ": its model spec: ");
  if (cfg.sync_bn) agreed([&] { sync_batch_norms(plan); });
  auto model = agreed([&] { return build_model<float>(plan, rng); });
  const Shape out_shape = model->output_shape({cfg.batch_size, D});
  if (out_shape.size() != 2 || out_shape[1] != train_set.num_classes())
    throw AgreedError(concat("model '", cfg.model, "' outputs shape ", shape_str(out_shape),
                             " for a batch; a classifier of ", cfg.dataset, " needs (N, ",
                             train_set.num_classes(), ")"));
  std::vector<StateEntry<float>> model_state = model->state();
  auto optimizer = agreed([&] { return make_optimizer(cfg.optimizer, cfg.optim, model_state); });
  // On one node (the shared-memory transport) the flat gradient block, and
  // with the sharded optimizer the weights too, live in the window the other
  // ranks read directly: the reduce-scatter and all-gather then copy nothing
  // into it (docs/distributed.md, "Shared memory on one node"); before any
  // forward pass (a layer may keep its weights' addresses). The unsharded
  // all-reduce sums into the window's second block, so the weights stay put.
  if (ranks > 1) {
    const int64_t flat = static_cast<int64_t>(optimizer->values().size());
    float* g = comm.shared_block(flat, 0);
    float* v = cfg.shard_optimizer ? comm.shared_block(flat, 1) : nullptr;
    const auto borrowed = [](float* p) {
      return p ? std::shared_ptr<float[]>(p, [](float*) {}) : nullptr;  // the window owns it
    };
    if (g) optimizer->adopt_flat_blocks(borrowed(v), borrowed(g));
  }
  std::vector<StateEntry<float>> optim_state = optimizer->state();
  Trainer trainer(*model, *optimizer);
  trainer.set_communicator(&comm);
  // NORMLAB_ALLREDUCE_BUCKET_BYTES: overlap the gradient all-reduce with backward
  // in buckets of at least this many bytes (Trainer::set_allreduce_bucket_bytes;
  // 0, the default, = one blocking all-reduce after backward), for
  // bench/mpi_speed.sh, the tests and machines where it pays.
  if (const char* env = std::getenv("NORMLAB_ALLREDUCE_BUCKET_BYTES")) {
    char* end = nullptr;
    const long long bytes = std::strtoll(env, &end, 10);
    if (!*env || *end || bytes < 0)
      fail("NORMLAB_ALLREDUCE_BUCKET_BYTES='", env, "': expected a number of bytes >= 0");
    if (bytes > 0 && ranks > 1 && cfg.shard_optimizer)
      throw AgreedError(
          concat("NORMLAB_ALLREDUCE_BUCKET_BYTES=", env,
                 " overlaps the gradient all-reduce, which the sharded optimizer replaces by a "
                 "reduce-scatter; add --no-shard-optimizer or unset it"));
    trainer.set_allreduce_bucket_bytes(bytes);
  }

  const json train_config = {{"model", cfg.model},
                             {"model_spec", resolve_spec(cfg.model)},
                             {"dataset", cfg.dataset},
                             {"batch_size", cfg.batch_size},
                             {"optimizer", cfg.optimizer},
                             {"optimizer_options", options_to_json(cfg.optim)},
                             {"seed", cfg.seed},
                             {"limit_train", cfg.limit_train},
                             {"limit_test", cfg.limit_test},
                             {"epochs", cfg.epochs},
                             {"weight_norm_keys", weight_norm_keys_name(cfg.weight_norm_keys)},
                             {"wn_init", cfg.wn_init},
                             {"sync_bn", cfg.sync_bn}};

  Position pos;
  std::vector<EpochMetrics> history;
  std::string wn_init_record;  // JSON: what the data-dependent init did (--wn-init data)
  // Every rank reads the checkpoint and agrees on what was wrong with it: a
  // refused resume ends the job with the reason, not with an MPI_Abort.
  if (!cfg.resume.empty())
    agree_on_errors(comm, [&] {
      const TrainConfig saved = config_from_checkpoint(cfg.resume);
      auto differs = [&](const char* flag, const auto& mine, const auto& theirs) {
        if (mine != theirs)
          fail("--resume ", cfg.resume, ": the checkpoint was trained with ", flag, " ", theirs,
               ", this run asks for ", mine, "; continue with the same settings");
      };
      differs("--model", cfg.model, saved.model);
      differs("--batch-size", cfg.batch_size, saved.batch_size);
      differs("--optimizer", cfg.optimizer, saved.optimizer);
      differs("--seed", cfg.seed, saved.seed);
      differs("--limit-train", cfg.limit_train, saved.limit_train);
      differs("--wn-init", cfg.wn_init, saved.wn_init);
      differs("--optimizer options", options_to_json(cfg.optim).dump(),
              options_to_json(saved.optim).dump());
      const Metadata meta = load_checkpoint(cfg.resume, model_state, optim_state);
      try {
        const json p = json::parse(meta_json(meta, "position", cfg.resume));
        pos.epoch = p.at("epoch"), pos.batch = p.at("batch"), pos.loss_sum = p.at("loss_sum");
        pos.correct = p.at("correct"), pos.count = p.at("count"), pos.skipped = p.at("skipped");
        pos.curve = p.at("curve").get<std::vector<double>>();
        for (const auto& m : json::parse(meta_json(meta, "history", cfg.resume)))
          history.push_back(metrics_from_json(m));
      } catch (const json::exception& e) {
        fail("--resume ", cfg.resume, ": the run position in the checkpoint is damaged (", e.what(),
             ")");
      }
      if (pos.epoch < 0 || pos.batch < 0 || pos.batch >= sampler.num_batches() || pos.count < 0 ||
          pos.correct < 0 || pos.correct > pos.count || pos.skipped < 0)
        fail("--resume ", cfg.resume, ": the run position in the checkpoint is damaged (epoch ",
             pos.epoch, ", batch ", pos.batch, " of ", sampler.num_batches(), ", ", pos.correct,
             " correct of ", pos.count, ", ", pos.skipped, " skipped)");
      if (pos.epoch >= cfg.epochs)
        fail("--resume ", cfg.resume, ": the run in the checkpoint ended after epoch ", pos.epoch,
             "; ask for more with --epochs (now ", cfg.epochs, ")");
      // The init happened when the run started; its record travels with the run.
      if (const auto it = meta.find(kWnInitKey); it != meta.end()) wn_init_record = it->second;
    });

  // The weight-norm data-dependent init (Salimans & Kingma 2016, sec. 3) on the
  // first training batch of epoch 1, the batch the first step then trains on:
  // once, at the start of a run, never on --resume (the weights come from the
  // checkpoint). Before anything is written, so a refused init leaves no trace.
  std::string wn_init_note;
  if (cfg.resume.empty() && cfg.wn_init == "data") {
    sampler.set_epoch(0);
    const auto idx = sampler.batch(0);
    const int64_t B = static_cast<int64_t>(idx.size());
    Tensor<float> xb({B, D});
    std::vector<int32_t> yb(static_cast<size_t>(B));
    train_set.gather(idx, xb.data(), yb.data());
    WeightNormInitReport r;
    try {
      r = data_dependent_init(*model, xb, rng);
    } catch (const Error& e) {
      fail("--wn-init data: ", e.what());
    }
    json layers = json::array();
    for (const auto& l : r.layers)
      layers.push_back({{"path", l.path}, {"layer", l.name}, {"units", l.units}, {"rows", l.rows}});
    wn_init_record = json{
        {"method", "data"},
        {"source", "Salimans & Kingma 2016, section 3"},
        {"batch", "the first training batch of epoch 1"},
        {"samples", B},
        {"v_std", WeightNormInitOptions{}.v_std},
        {"layers",
         layers}}.dump();
    wn_init_note =
        "weight-norm data-dependent init (Salimans & Kingma 2016, sec. 3) on the first "
        "training batch (" +
        std::to_string(B) + " samples): " + r.summary();
  } else if (!wn_init_record.empty()) {
    wn_init_note =
        "weight-norm data-dependent init: done when the run started, not redone "
        "(weights from the checkpoint)";
  }

  // Every rank starts from rank 0's weights, buffers and optimizer state (the
  // same seed builds the same model everywhere; this makes it so whatever the
  // ranks read).
  if (ranks > 1) {
    auto share = [&](std::vector<StateEntry<float>>& entries) {
      for (auto& e : entries) {
        if (e.value)
          comm.broadcast(e.value->data(), e.value->numel() * static_cast<int64_t>(sizeof(float)),
                         0);
        if (e.count) comm.broadcast(e.count, sizeof(int64_t), 0);
      }
    };
    share(model_state);
    share(optim_state);
  }
  // The sharded optimizer: each rank keeps the (just shared) state of its slice only.
  if (ranks > 1 && cfg.shard_optimizer) {
    const auto [lo, hi] =
        Optimizer::shard_range(static_cast<int64_t>(optimizer->values().size()), rank, ranks);
    optimizer->shard(lo, hi);
    optim_state.clear();  // its tensors are gone: save() gathers the state
  }

  // Only now, with every input checked, does the run touch the disk. The
  // directories it creates (--out and missing parents, deepest first) go again
  // if it stops before its first save: a refused run leaves nothing behind.
  struct RemoveIfEmpty {
    std::vector<std::filesystem::path> made;
    ~RemoveIfEmpty() {
      std::error_code e;
      for (const auto& d : made)
        if (!std::filesystem::is_empty(d, e) || e || !std::filesystem::remove(d, e)) break;
    }
  } cleanup;
  std::error_code ec;
  agree_on_errors(comm, [&] {
    if (!lead) return;
    for (std::filesystem::path d = cfg.out_dir; !d.empty() && !std::filesystem::exists(d, ec);
         d = d.parent_path())
      cleanup.made.push_back(d);
    std::filesystem::create_directories(cfg.out_dir, ec);
    if (ec || !std::filesystem::is_directory(cfg.out_dir))
      fail("--out ", cfg.out_dir, ": cannot create the directory",
           ec ? ": " + ec.message() : std::string(" (a file of that name exists)"));
    remove_stale_temporaries(cfg.out_dir, {"metrics.jsonl", "loss.png", "accuracy.png",
                                           "model.safetensors", "checkpoint.safetensors"});
  });

  int64_t n_params = 0;
  for (const auto& e : model_state)
    if (e.is_param()) n_params += e.value->numel();
  report.on_start(model->name(), n_params, n_train, n_test, pos.epoch + 1);
  // Under mpirun: how many ranks, whether the optimizer is sharded, which transport.
  if (ranks > 1)
    report.on_note(concat("data parallel: ", ranks, " MPI ranks, ",
                          cfg.shard_optimizer
                              ? "sharded optimizer (ZeRO stage 1: gradients reduce-scattered, "
                                "weights all-gathered; --no-shard-optimizer to turn off)"
                              : "optimizer not sharded (gradients all-reduced)",
                          "; transport: ", comm.transport()));
  if (!wn_init_note.empty()) report.on_note(wn_init_note);
  if (const int64_t last = static_cast<int64_t>(sampler.batch(sampler.num_batches() - 1).size());
      last > cfg.batch_size)
    // Said on screen because otherwise the step count looks one short.
    report.on_note(concat("batches: ", sampler.num_batches(),
                          " per epoch; the one sample left over by --batch-size ", cfg.batch_size,
                          " joins the last batch (", last,
                          " samples), because a batch of 1 has no batch statistics"));

  // The test set stays as bytes too: each evaluation batch is converted when it is used.
  std::vector<int64_t> test_index(static_cast<size_t>(n_test));
  for (int64_t i = 0; i < n_test; ++i) test_index[i] = i;
  const int64_t eval_rows = std::min(cfg.eval_batch_size, n_test);
  std::vector<float> eval_x(static_cast<size_t>(eval_rows * D));
  std::vector<int32_t> eval_y(static_cast<size_t>(eval_rows));
  // Under mpirun each rank evaluates its contiguous slice of the test set with
  // rank 0's buffers (the running statistics the files hold; its own are put
  // back after) and the sums are all-reduced: rank 0's whole-set figures, in
  // 1 / K of the time.
  std::vector<std::pair<Tensor<float>*, Tensor<float>>> own_buffers;
  if (ranks > 1)
    for (auto& e : model_state)
      if (e.value && !e.grad) own_buffers.push_back({e.value, *e.value});
  auto evaluate_test_set = [&] {
    if (ranks > 1)
      for (auto& [t, copy] : own_buffers) {
        std::copy(t->data(), t->data() + t->numel(), copy.data());
        comm.broadcast(t->data(), t->numel() * static_cast<int64_t>(sizeof(float)), 0);
      }
    const int64_t lo = n_test * rank / ranks, hi = n_test * (rank + 1) / ranks;
    EvalResult total;
    double loss_sum = 0;
    for (int64_t start = lo; start < hi; start += eval_rows) {
      const int64_t b = std::min(eval_rows, hi - start);
      test_set.gather(std::span<const int64_t>(test_index.data() + start, static_cast<size_t>(b)),
                      eval_x.data(), eval_y.data());
      const EvalResult r = trainer.evaluate(eval_x.data(), eval_y.data(), b, D, b);
      loss_sum += r.loss * static_cast<double>(r.count);
      total.correct += r.correct;
      total.count += r.count;
    }
    if (ranks > 1) {
      double sums[3] = {loss_sum, static_cast<double>(total.correct),
                        static_cast<double>(total.count)};
      comm.allreduce_sum(sums, 3);
      loss_sum = sums[0];
      total.correct = static_cast<int64_t>(std::llround(sums[1]));
      total.count = static_cast<int64_t>(std::llround(sums[2]));
      for (auto& [t, copy] : own_buffers)
        std::copy(copy.data(), copy.data() + copy.numel(), t->data());
    }
    total.loss = loss_sum / static_cast<double>(total.count);
    return total;
  };

  Tensor<float> x({sampler.max_batch_size(), D});
  std::vector<int32_t> y(static_cast<size_t>(sampler.max_batch_size()));

  // Buffers the forward pass updates (BatchNorm running statistics): a skipped
  // step puts them back, so a bad batch leaves no trace.
  std::vector<std::pair<Tensor<float>*, Tensor<float>>> buffer_backup;
  std::vector<std::pair<int64_t*, int64_t>> count_backup;
  if (cfg.skip_nonfinite)
    for (auto& e : model_state) {
      if (e.value && !e.grad) buffer_backup.push_back({e.value, *e.value});
      if (e.count) count_backup.push_back({e.count, *e.count});
    }

  const std::set<int64_t> faults = fault_batches();
  bool saved = !cfg.resume.empty();  // is there a checkpoint of this run on disk?
  auto save = [&](const Position& p) {
    // Sharded, the optimizer state is spread over the ranks: every rank takes
    // part in collecting it, and the files are those of an unsharded run.
    Optimizer::GatheredState gathered;
    if (optimizer->sharded()) gathered = optimizer->gather_state(comm);
    const std::vector<StateEntry<float>>& optim_entries =
        optimizer->sharded() ? gathered.entries : optim_state;
    if (!lead) return;  // rank 0 writes the run directory
    json pj = {{"epoch", p.epoch},     {"batch", p.batch}, {"loss_sum", p.loss_sum},
               {"correct", p.correct}, {"count", p.count}, {"skipped", p.skipped},
               {"curve", p.curve}};
    json hj = json::array();
    for (const auto& m : history) hj.push_back(metrics_to_json(m));
    Metadata meta = {{kModelSpecKey, cfg.model},
                     {kSeedKey, std::to_string(cfg.seed)},
                     {kEpochKey, std::to_string(p.epoch)},
                     {kStepKey, std::to_string(optimizer->steps())},
                     {"train_config", train_config.dump()},
                     {"position", pj.dump()},
                     {"history", hj.dump()}};
    if (!wn_init_record.empty()) meta[kWnInitKey] = wn_init_record;
    // The checkpoint first: it holds the model too, so once it is accepted (every
    // value finite) the model file is too, and a refusal leaves both files as they were.
    try {
      save_checkpoint(cfg.out_dir + "/checkpoint.safetensors", model_state, optim_entries, meta);
      save_model(cfg.out_dir + "/model.safetensors", model_state, meta,
                 {.weight_norm_keys = cfg.weight_norm_keys});
    } catch (const Error& e) {
      const std::string where = p.batch == 0 ? "at the end of epoch " + std::to_string(p.epoch)
                                             : "in epoch " + std::to_string(p.epoch + 1) +
                                                   ", after batch " + std::to_string(p.batch);
      fail("training stopped after step ", optimizer->steps(), " (", where, "): ", e.what());
    }
    saved = true;
  };

  for (int64_t epoch = pos.epoch; epoch < cfg.epochs; ++epoch) {
    sampler.set_epoch(epoch);
    const int64_t batches = sampler.num_batches();
    const int64_t curve_every = std::max<int64_t>(1, batches / 20);
    const auto t0 = Clock::now();
    auto last_report = t0;
    int64_t samples_this_process = 0;
    const int64_t first_batch = pos.batch;
    if (cfg.profile) {
      profile::reset();
      profile::set_enabled(true);
    }
    for (int64_t b = pos.batch; b < batches; ++b) {
      const auto all = sampler.batch(b);
      const int64_t B = static_cast<int64_t>(all.size());  // the global batch
      // This rank's contiguous slice of it (all of it in one process).
      const int64_t lo = B * rank / ranks, hi = B * (rank + 1) / ranks;
      const auto idx = all.subspan(static_cast<size_t>(lo), static_cast<size_t>(hi - lo));
      {
        const profile::Scope timer("data");
        x.resize({hi - lo, D});
        train_set.gather(idx, x.data(), y.data());
      }
      if (faults.count(epoch * batches + b + 1) && lo == 0) x.data()[0] = NAN;
      debug_fail_at_step(optimizer->steps() + 1, rank);
      if (cfg.skip_nonfinite) {
        for (auto& [t, copy] : buffer_backup)
          std::copy(t->data(), t->data() + t->numel(), copy.data());
        for (auto& [c, copy] : count_backup) copy = *c;
      }
      try {
        const StepResult r = trainer.train_step(x, y.data(), B);
        pos.loss_sum += r.loss * static_cast<double>(B);
        pos.correct += r.correct;
        pos.count += B;
      } catch (const NonFiniteError& e) {
        if (!cfg.skip_nonfinite)
          fail("training stopped at step ", e.step, " (epoch ", epoch + 1, ", batch ", b + 1,
               "): ", e.what(),
               saved ? "; the last checkpoint in " + cfg.out_dir + " is kept" : "");
        for (auto& [t, copy] : buffer_backup)
          std::copy(copy.data(), copy.data() + copy.numel(), t->data());
        for (auto& [c, copy] : count_backup) *c = copy;
        optimizer->zero_grad();
        ++pos.skipped;
        report.on_skipped_step(e.step, e.what());
      } catch (const Error& e) {  // e.g. BatchNorm on a batch of one: say where and which batch
        fail("training stopped at step ", optimizer->steps() + 1, " (epoch ", epoch + 1, ", batch ",
             b + 1, " of ", B, " samples, --batch-size ", cfg.batch_size, "): ", e.what(),
             saved ? "; the last checkpoint in " + cfg.out_dir + " is kept" : "");
      }
      pos.batch = b + 1;
      samples_this_process += B;
      if ((b + 1) % curve_every == 0 && pos.count > 0)
        pos.curve.push_back(pos.loss_sum / pos.count);
      if (seconds_since(last_report) > 0.2 || b + 1 == batches) {
        last_report = Clock::now();
        const double s = seconds_since(t0);
        report.on_progress({epoch + 1, cfg.epochs, b + 1, batches,
                            pos.count ? pos.loss_sum / pos.count : 0.0, s,
                            s > 0 ? samples_this_process / s : 0.0});
      }
      if (cfg.checkpoint_every && optimizer->steps() % cfg.checkpoint_every == 0 && b + 1 < batches)
        save(pos);
    }
    const double train_seconds = seconds_since(t0);
    profile::set_enabled(false);
    const auto t1 = Clock::now();
    const EvalResult ev = evaluate_test_set();
    EpochMetrics m;
    m.epoch = epoch + 1;
    m.steps = optimizer->steps();
    m.train_loss = pos.count ? pos.loss_sum / pos.count : NAN;
    m.train_accuracy = pos.count ? static_cast<double>(pos.correct) / pos.count : 0.0;
    m.test_loss = ev.loss;
    m.test_accuracy = ev.accuracy();
    m.train_seconds = train_seconds;
    m.eval_seconds = seconds_since(t1);
    m.skipped_steps = pos.skipped;
    m.loss_curve = pos.curve;
    if (cfg.profile) m.profile = profile::report(train_seconds, batches - first_batch);
    // Under mpirun every rank's breakdown (rank 0's goes with the epoch's report):
    // where one rank waits for another shows as its all-reduce time.
    if (cfg.profile && !lead)
      std::fprintf(stderr, "profile of rank %d of %d, epoch %lld:\n%s", rank, ranks,
                   static_cast<long long>(epoch + 1), m.profile.c_str());
    history.push_back(m);
    pos = Position{};
    pos.epoch = epoch + 1;
    save(pos);
    if (lead) {
      write_metrics(cfg.out_dir, history);
      plot_curves(cfg.out_dir, history, cfg.model + " on " + cfg.dataset);
    }
    report.on_epoch(m);
  }
  // No rank leaves before rank 0 has written the last files (a failure there ends the job).
  comm.barrier();
  return history;
}

}  // namespace normlab
