// The study framework's engine: one unit = one short training run recorded at
// fixed steps; units are cached under OUT/runs/<key>/ and run side by side in
// threads (each with its own OpenMP thread count) when the machine has more
// threads than one unit uses.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "normlab/atomic_file.hpp"
#include "normlab/build_info.hpp"
#include "normlab/data.hpp"
#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "normlab/loss.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/sequential.hpp"
#include "normlab/study.hpp"
#include "normlab/train.hpp"

namespace normlab {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <typename V>
std::string opt_str(const std::optional<V>& v) {
  if (!v) return "default";
  if constexpr (std::is_same_v<V, bool>)
    return *v ? "true" : "false";
  else
    return num(*v);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "normlab 0.1.0" from the build summary: a new version invalidates every cached unit.
std::string version_tag() {
  const std::string s = build_summary();
  return s.substr(0, s.find(','));
}

// Percentile q (0..100) of v by linear interpolation (numpy's default).
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

// "Small Gaussian initial weights": Linear weights (rank-2 "X.weight") from
// N(0, std^2), their biases ("X.bias") zero; norm parameters keep theirs.
void gaussian_init(Sequential<float>& model, double stddev, uint64_t seed) {
  auto state = model.state();
  std::map<std::string, Tensor<float>*> by_name;
  for (auto& e : state)
    if (e.value) by_name[e.name] = e.value;
  Rng rng = Rng(seed).fork(0x51u);
  for (auto& e : state) {
    if (!e.is_param() || e.value->rank() != 2) continue;
    const std::string& n = e.name;
    if (n.size() < 6 || n.compare(n.size() - 6, 6, "weight") != 0) continue;
    rng.fill_normal(e.value->data(), e.value->numel(), 0.0, stddev);
    auto b = by_name.find(n.substr(0, n.size() - 6) + "bias");
    if (b != by_name.end())
      std::fill(b->second->data(), b->second->data() + b->second->numel(), 0.f);
  }
}

struct Data {
  Dataset train, test;
};

// The model's buffers (running statistics, step counters): a forward pass in
// training mode updates them, so the recording passes save and restore them.
class BufferSnapshot {
 public:
  explicit BufferSnapshot(Sequential<float>& model) : state_(model.state()) {
    for (auto& e : state_) {
      if (e.is_param()) continue;
      if (e.value) values_.emplace_back(e.value->data(), e.value->data() + e.value->numel());
      if (e.count) counts_.push_back(*e.count);
    }
  }
  ~BufferSnapshot() {
    size_t v = 0, c = 0;
    for (auto& e : state_) {
      if (e.is_param()) continue;
      if (e.value) {
        std::copy(values_[v].begin(), values_[v].end(), e.value->data());
        ++v;
      }
      if (e.count) *e.count = counts_[c++];
    }
  }
  BufferSnapshot(const BufferSnapshot&) = delete;
  BufferSnapshot& operator=(const BufferSnapshot&) = delete;

 private:
  std::vector<StateEntry<float>> state_;
  std::vector<std::vector<float>> values_;
  std::vector<int64_t> counts_;
};

// Test accuracy over the first n test images with the model in training mode
// (batch statistics over batches of `batch` images); buffers restored.
double train_mode_accuracy(Sequential<float>& model, const Dataset& test, int64_t n,
                           int64_t batch) {
  const BufferSnapshot keep(model);
  const bool was_training = model.training();
  model.set_training(true);
  const int64_t D = test.features();
  Tensor<float> x;
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  std::vector<int64_t> idx;
  int64_t correct = 0, seen = 0;
  for (int64_t start = 0; start + batch <= n; start += batch) {  // whole batches only
    idx.resize(static_cast<size_t>(batch));
    for (int64_t i = 0; i < batch; ++i) idx[static_cast<size_t>(i)] = start + i;
    x.resize({batch, D});
    test.gather(idx, x.data(), labels.data());
    const Tensor<float>& logits = model.forward(x);
    correct += count_correct(logits.data(), labels.data(), batch, logits.dim(1));
    seen += batch;
  }
  model.set_training(was_training);
  return seen ? static_cast<double>(correct) / static_cast<double>(seen) : std::nan("");
}

bool is_relu(const Layer<float>& l) {
  return l.name().rfind("ReLU", 0) == 0;
}

// The per-layer norms after a step (StudyUnit::layer_stats): each ReLU's
// output on x in training mode (buffers restored), each Linear weight's gradient.
LayerStatsPoint layer_stats(Sequential<float>& model, const Tensor<float>& x, int64_t step) {
  LayerStatsPoint p;
  p.step = step;
  for (auto& e : model.state()) {
    if (!e.is_param() || e.grad->rank() != 2) continue;
    const std::string& n = e.name;
    if (n.size() < 6 || n.compare(n.size() - 6, 6, "weight") != 0) continue;
    double s = 0;
    for (int64_t i = 0; i < e.grad->numel(); ++i) s += double((*e.grad)[i]) * (*e.grad)[i];
    p.gradient.push_back(std::sqrt(s));
  }
  const BufferSnapshot keep(model);
  const bool was_training = model.training();
  model.set_training(true);
  const double rows = static_cast<double>(x.dim(0));
  const Tensor<float>* t = &x;
  for (size_t i = 0; i < model.size(); ++i) {
    t = &model[i].forward(*t);
    if (!is_relu(model[i])) continue;
    double s = 0;
    for (int64_t k = 0; k < t->numel(); ++k) s += double((*t)[k]) * (*t)[k];
    p.activation.push_back(std::sqrt(s / rows));
  }
  model.set_training(was_training);
  return p;
}

// One optimizer step over micro-batches of m rows (StudyUnit::micro_batch):
// zero_grad, forward + backward per micro-batch with its loss gradient scaled
// by rows / N, the finiteness checks of Trainer::train_step, one update.
double micro_batch_step(Sequential<float>& model, Optimizer& optimizer, const float* x,
                        const int32_t* y, int64_t N, int64_t D, int64_t m, Tensor<float>& chunk,
                        Tensor<float>& dlogits) {
  const int64_t step = optimizer.steps() + 1;
  model.set_training(true);
  optimizer.zero_grad();
  double loss_sum = 0;
  for (int64_t start = 0; start < N; start += m) {
    const int64_t b = std::min(m, N - start);
    chunk.resize({b, D});
    std::copy(x + start * D, x + (start + b) * D, chunk.data());
    const Tensor<float>& logits = model.forward(chunk);
    const double loss = cross_entropy(
        logits, std::span<const int32_t>(y + start, static_cast<size_t>(b)), &dlogits);
    if (!std::isfinite(loss))
      throw NonFiniteError(
          step, "training step " + std::to_string(step) + ": the loss is " + std::to_string(loss));
    const float scale = static_cast<float>(static_cast<double>(b) / static_cast<double>(N));
    for (int64_t j = 0; j < dlogits.numel(); ++j) dlogits[j] *= scale;
    model.backward(dlogits);
    loss_sum += loss * static_cast<double>(b);
  }
  const std::span<const float> g = optimizer.grads();
  if (first_non_finite(g.data(), static_cast<int64_t>(g.size())) >= 0)
    throw NonFiniteError(
        step, "training step " + std::to_string(step) + ": a gradient holds a NaN or infinity");
  optimizer.step();
  return loss_sum / static_cast<double>(N);
}

// Test accuracy/loss over the first n test images, layer by layer (eval mode),
// with the percentiles of unit 0 of the probed layer's output on the first
// probe_images images.
StudyPoint record(Sequential<float>& model, const Dataset& test, const StudyUnit& u, int64_t step) {
  StudyPoint p;
  p.step = step;
  p.p15 = p.p50 = p.p85 = std::nan("");
  p.train_mode_accuracy = std::nan("");
  const int64_t n = u.eval_images > 0 ? std::min(u.eval_images, test.size()) : test.size();
  const int64_t D = test.features(), B = 1000;
  const bool was_training = model.training();
  model.set_training(false);
  Tensor<float> batch;
  std::vector<int32_t> labels(B);
  std::vector<int64_t> idx;
  std::vector<double> probe;
  double loss_sum = 0;
  int64_t correct = 0;
  for (int64_t start = 0; start < n; start += B) {
    const int64_t b = std::min(B, n - start);
    idx.resize(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) idx[static_cast<size_t>(i)] = start + i;
    batch.resize({b, D});
    test.gather(idx, batch.data(), labels.data());
    const Tensor<float>* t = &batch;
    for (size_t i = 0; i < model.size(); ++i) {
      t = &model[i].forward(*t);
      if (static_cast<int64_t>(i) == u.probe_layer && start < u.probe_images) {
        const int64_t width = t->numel() / b;
        for (int64_t r = 0; r < b && start + r < u.probe_images; ++r)
          probe.push_back((*t)[r * width]);
      }
    }
    loss_sum += cross_entropy(*t, std::span<const int32_t>(labels.data(), static_cast<size_t>(b))) *
                static_cast<double>(b);
    correct += count_correct(t->data(), labels.data(), b, t->dim(1));
  }
  model.set_training(was_training);
  p.test_accuracy = static_cast<double>(correct) / static_cast<double>(n);
  p.test_loss = loss_sum / static_cast<double>(n);
  if (!probe.empty()) {
    p.p15 = percentile(probe, 15);
    p.p50 = percentile(probe, 50);
    p.p85 = percentile(probe, 85);
  }
  if (u.train_mode_batch > 0)
    p.train_mode_accuracy = train_mode_accuracy(model, test, n, u.train_mode_batch);
  return p;
}

UnitResult run_unit(const StudyUnit& u, const Data& data, std::atomic<int64_t>& step_out) {
  const auto t0 = Clock::now();
  const int64_t D = data.train.features();
  Rng rng(u.seed);
  auto model = build_model<float>(u.model, Shape{u.batch_size, D}, rng);
  if (u.init_std > 0) gaussian_init(*model, u.init_std, u.seed);
  if (u.probe_layer >= static_cast<int64_t>(model->size()))
    fail("study unit '", u.label, "': probe layer ", u.probe_layer, " but the model has ",
         model->size(), " layers");
  auto optimizer = make_optimizer(u.optimizer, u.optim, model->state());
  Trainer trainer(*model, *optimizer);
  BatchSampler sampler(data.train.size(), u.batch_size, true, u.seed, LastBatch::Drop);
  std::vector<float> x(static_cast<size_t>(u.batch_size * D));
  std::vector<int32_t> y(static_cast<size_t>(u.batch_size));

  if (u.micro_batch < 0 || u.micro_batch > u.batch_size)
    fail("study unit '", u.label, "': micro-batch ", u.micro_batch, " must be 0..batch size ",
         u.batch_size);
  if (u.train_mode_batch < 0)
    fail("study unit '", u.label, "': train-mode batch ", u.train_mode_batch);
  Tensor<float> chunk, dlogits, xt;

  UnitResult r;
  if (u.layer_stats) {
    // Step 0: the gradients of the first batch, without an update.
    const auto idx = sampler.batch(0);
    data.train.gather(idx, x.data(), y.data());
    const int64_t n = static_cast<int64_t>(idx.size());
    xt.resize({n, D});
    std::copy(x.data(), x.data() + n * D, xt.data());
    {
      const BufferSnapshot keep(*model);
      model->set_training(true);
      optimizer->zero_grad();
      const Tensor<float>& logits = model->forward(xt);
      cross_entropy(logits, std::span<const int32_t>(y.data(), static_cast<size_t>(n)), &dlogits);
      model->backward(dlogits);
    }
    r.layers.push_back(layer_stats(*model, xt, 0));
    optimizer->zero_grad();
  }
  StudyPoint first = record(*model, data.test, u, 0);
  first.train_loss = std::nan("");
  r.points.push_back(first);
  int64_t epoch = 0, b = 0;
  double loss_sum = 0;
  int64_t loss_n = 0;
  for (int64_t step = 1; step <= u.steps; ++step) {
    if (b == sampler.num_batches()) {
      sampler.set_epoch(++epoch);
      b = 0;
    }
    const auto idx = sampler.batch(b++);
    data.train.gather(idx, x.data(), y.data());
    const int64_t n = static_cast<int64_t>(idx.size());
    try {
      const double loss = u.micro_batch > 0 && u.micro_batch < n
                              ? micro_batch_step(*model, *optimizer, x.data(), y.data(), n, D,
                                                 u.micro_batch, chunk, dlogits)
                              : trainer.train_step(x.data(), y.data(), n, D).loss;
      loss_sum += loss;
      ++loss_n;
    } catch (const NonFiniteError& e) {
      r.diverged = true;
      r.diverged_step = step;
      break;
    }
    step_out.store(step, std::memory_order_relaxed);
    if (step % u.eval_every == 0 || step == u.steps) {
      if (u.layer_stats) {
        xt.resize({n, D});
        std::copy(x.data(), x.data() + n * D, xt.data());
        r.layers.push_back(layer_stats(*model, xt, step));
      }
      StudyPoint p = record(*model, data.test, u, step);
      p.train_loss = loss_n ? loss_sum / static_cast<double>(loss_n) : std::nan("");
      loss_sum = 0;
      loss_n = 0;
      r.points.push_back(p);
    }
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

}  // namespace

std::string StudyUnit::settings_text() const {
  std::string s;
  s += "label=" + label + "\n";
  s += "model=" + resolve_spec(model) + "\n";
  s += "optimizer=" + optimizer + "\n";
  s += "lr=" + opt_str(optim.lr) + "\nbeta1=" + opt_str(optim.beta1) +
       "\nbeta2=" + opt_str(optim.beta2) + "\neps=" + opt_str(optim.eps) +
       "\nweight_decay=" + opt_str(optim.weight_decay) + "\namsgrad=" + opt_str(optim.amsgrad) +
       "\nmomentum=" + opt_str(optim.momentum) + "\ndampening=" + opt_str(optim.dampening) +
       "\nnesterov=" + opt_str(optim.nesterov) + "\n";
  s += "batch_size=" + std::to_string(batch_size) + "\nsteps=" + std::to_string(steps) +
       "\neval_every=" + std::to_string(eval_every) +
       "\neval_images=" + std::to_string(eval_images) + "\nseed=" + std::to_string(seed) +
       "\ninit_std=" + num(init_std) + "\nprobe_layer=" + std::to_string(probe_layer) +
       "\nprobe_images=" + std::to_string(probe_images) + "\n";
  // Settings added later appear only when set, so earlier studies keep their keys.
  if (micro_batch > 0) s += "micro_batch=" + std::to_string(micro_batch) + "\n";
  if (train_mode_batch > 0) s += "train_mode_batch=" + std::to_string(train_mode_batch) + "\n";
  if (layer_stats) s += "layer_stats=1\n";
  s += "dataset=mnist\nversion=" + version_tag() + "\n";
  return s;
}

std::string StudyUnit::key() const {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64
  for (unsigned char c : settings_text()) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string unit_result_csv(const UnitResult& r) {
  std::string s = "# diverged=" + std::to_string(r.diverged ? 1 : 0) +
                  " diverged_step=" + std::to_string(r.diverged_step) +
                  " seconds=" + num(r.seconds) +
                  "\nstep,test_accuracy,test_loss,train_loss,p15,p50,p85,train_mode_accuracy\n";
  for (const auto& p : r.points)
    s += std::to_string(p.step) + "," + num(p.test_accuracy) + "," + num(p.test_loss) + "," +
         num(p.train_loss) + "," + num(p.p15) + "," + num(p.p50) + "," + num(p.p85) + "," +
         num(p.train_mode_accuracy) + "\n";
  return s;
}

UnitResult parse_unit_result_csv(const std::string& text, const std::string& path) {
  UnitResult r;
  std::istringstream in(text);
  std::string line;
  int d = 0;
  long long ds = 0;
  double sec = 0;
  if (!std::getline(in, line) ||
      std::sscanf(line.c_str(), "# diverged=%d diverged_step=%lld seconds=%lf", &d, &ds, &sec) != 3)
    fail(path, ": not a study unit result (first line: '", line, "')");
  r.diverged = d != 0;
  r.diverged_step = ds;
  r.seconds = sec;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    StudyPoint p;
    std::vector<double> v;
    std::istringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) v.push_back(std::strtod(cell.c_str(), nullptr));
    // 7 values: written before train_mode_accuracy existed.
    if (v.size() != 7 && v.size() != 8)
      fail(path, ": a row with ", v.size(), " values, expected 8: '", line, "'");
    p.step = static_cast<int64_t>(v[0]);
    p.test_accuracy = v[1];
    p.test_loss = v[2];
    p.train_loss = v[3];
    p.p15 = v[4];
    p.p50 = v[5];
    p.p85 = v[6];
    p.train_mode_accuracy = v.size() > 7 ? v[7] : std::nan("");
    r.points.push_back(p);
  }
  return r;
}

std::string layer_stats_csv(const std::vector<LayerStatsPoint>& layers) {
  std::string s = "step,kind,layer,value\n";
  for (const auto& p : layers) {
    for (size_t i = 0; i < p.activation.size(); ++i)
      s += std::to_string(p.step) + ",activation," + std::to_string(i) + "," +
           num(p.activation[i]) + "\n";
    for (size_t i = 0; i < p.gradient.size(); ++i)
      s += std::to_string(p.step) + ",gradient," + std::to_string(i) + "," + num(p.gradient[i]) +
           "\n";
  }
  return s;
}

std::vector<LayerStatsPoint> parse_layer_stats_csv(const std::string& text,
                                                   const std::string& path) {
  std::vector<LayerStatsPoint> out;
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != "step,kind,layer,value")
    fail(path, ": not a layer statistics file (first line: '", line, "')");
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    long long step = 0, layer = 0;
    char kind[32] = {};
    double value = 0;
    if (std::sscanf(line.c_str(), "%lld,%31[a-z],%lld,%lf", &step, kind, &layer, &value) != 4 ||
        layer < 0)
      fail(path, ": bad row '", line, "'");
    if (out.empty() || out.back().step != step) {
      out.emplace_back();
      out.back().step = step;
    }
    auto& v = std::string(kind) == "activation" ? out.back().activation : out.back().gradient;
    if (static_cast<size_t>(layer) != v.size())
      fail(path, ": row '", line, "': layer ", layer, " out of order");
    v.push_back(value);
  }
  return out;
}

// A finished run's files in OUT/runs/<key>/: settings, the per-layer norms if
// the unit records them, and result.csv last (its presence marks the run done).
static void write_unit_cache(const StudyOptions& options, const StudyUnit& unit,
                             const std::string& result_csv, const std::string& layers_csv) {
  const std::string dir = options.out_dir + "/runs/" + unit.key();
  fs::create_directories(dir);
  write_file_atomic(dir + "/settings.txt", unit.settings_text());
  if (unit.layer_stats) write_file_atomic(dir + "/layers.csv", layers_csv);
  write_file_atomic(dir + "/result.csv", result_csv);  // last
}

static void run_units_here(const std::vector<StudyUnit>& units, const std::vector<size_t>& todo,
                           const StudyOptions& options, StudyObserver& observer,
                           std::vector<UnitResult>& results, int64_t cached, bool write_cache);

std::vector<UnitResult> run_units(const std::vector<StudyUnit>& units, const StudyOptions& options,
                                  StudyObserver& observer) {
  const int64_t total = static_cast<int64_t>(units.size());
  std::vector<UnitResult> results(units.size());
  std::vector<size_t> todo;
  for (size_t i = 0; i < units.size(); ++i) {
    const std::string dir = options.out_dir + "/runs/" + units[i].key();
    const std::string file = dir + "/result.csv";
    if (fs::is_regular_file(file) && read_text(dir + "/settings.txt") == units[i].settings_text()) {
      results[i] = parse_unit_result_csv(read_text(file), file);
      if (units[i].layer_stats)
        results[i].layers =
            parse_layer_stats_csv(read_text(dir + "/layers.csv"), dir + "/layers.csv");
      results[i].cached = true;
    } else {
      todo.push_back(i);
    }
  }
  // Under mpirun (docs/distributed.md): rank 0's cache decides what runs; rank
  // r of K runs the units todo[r], todo[r + K], ... (each single-process, side
  // by side in threads as below), and rank 0 gathers every result and alone
  // writes the cache and the report (the other ranks leave run_study with
  // StudyRankDone).
  Communicator& comm = world();
  const int rank = comm.rank(), ranks = comm.size();
  if (ranks > 1) {
    int64_t n = static_cast<int64_t>(todo.size());
    comm.broadcast(&n, sizeof n, 0);
    std::vector<int64_t> t(todo.begin(), todo.end());
    t.resize(static_cast<size_t>(n));
    comm.broadcast(t.data(), n * static_cast<int64_t>(sizeof(int64_t)), 0);
    todo.assign(t.begin(), t.end());
  }
  const int64_t cached = total - static_cast<int64_t>(todo.size());
  if (cached)
    observer.on_note(std::to_string(cached) + " of " + std::to_string(total) +
                     " runs already done (cached in " + options.out_dir + "/runs)");
  if (todo.empty()) {
    if (ranks > 1 && rank != 0) throw StudyRankDone{};
    return results;
  }
  if (ranks > 1) {
    observer.on_note(std::to_string(todo.size()) + " runs over " + std::to_string(ranks) +
                     " ranks (the progress line shows rank 0's)");
    const std::vector<size_t> all = todo;
    std::vector<size_t> mine;
    for (size_t k = static_cast<size_t>(rank); k < all.size(); k += static_cast<size_t>(ranks))
      mine.push_back(all[k]);
    // A failing run on any rank: every rank reports it (no rank waits for one that left).
    agree_on_errors(
        comm, [&] { run_units_here(units, mine, options, observer, results, cached, false); });
    for (size_t k = 0; k < all.size(); ++k) {
      const size_t i = all[k];
      const int owner = static_cast<int>(k % static_cast<size_t>(ranks));
      const bool mine_here = owner == rank;
      auto share = [&](std::string text) {  // owner's text, on every rank
        int64_t bytes = static_cast<int64_t>(text.size());
        comm.broadcast(&bytes, sizeof bytes, owner);
        text.resize(static_cast<size_t>(bytes));
        comm.broadcast(text.data(), bytes, owner);
        return text;
      };
      const std::string text = share(mine_here ? unit_result_csv(results[i]) : "");
      const std::string layers = units[i].layer_stats
                                     ? share(mine_here ? layer_stats_csv(results[i].layers) : "")
                                     : std::string();
      if (rank != 0) continue;
      if (owner != 0) {
        const std::string from = "rank " + std::to_string(owner);
        results[i] = parse_unit_result_csv(text, from);
        if (units[i].layer_stats) results[i].layers = parse_layer_stats_csv(layers, from);
      }
      write_unit_cache(options, units[i], text, layers);
    }
    if (rank != 0) throw StudyRankDone{};
    return results;
  }
  run_units_here(units, todo, options, observer, results, cached, true);
  return results;
}

// Runs units[todo...] side by side in threads, into results; with write_cache
// each result also goes to OUT/runs/<key>/ as it finishes.
static void run_units_here(const std::vector<StudyUnit>& units, const std::vector<size_t>& todo,
                           const StudyOptions& options, StudyObserver& observer,
                           std::vector<UnitResult>& results, int64_t cached, bool write_cache) {
  const auto t0 = Clock::now();
  const int64_t total = static_cast<int64_t>(units.size());
  const Data data{load_dataset(options.data_dir, Split::Train),
                  load_dataset(options.data_dir, Split::Test)};

  const int total_threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const int workers =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(total_threads, todo.size())));
  const int per_unit = std::max(1, total_threads / workers);

  struct Slot {
    std::atomic<int64_t> step{0};
    std::atomic<int64_t> unit{-1};
  };
  std::vector<Slot> slots(static_cast<size_t>(workers));
  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{cached};
  std::atomic<int> running{workers};
  std::unique_ptr<std::atomic<bool>[]> finished(new std::atomic<bool>[units.size()]);
  for (size_t i = 0; i < units.size(); ++i) finished[i].store(false);
  std::mutex error_mutex;
  std::string first_error;

  auto worker = [&](int w) {
    omp_set_num_threads(per_unit);
    Slot& slot = slots[static_cast<size_t>(w)];
    for (;;) {
      const size_t k = next.fetch_add(1);
      if (k >= todo.size()) break;
      {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error.empty()) break;
      }
      const size_t i = todo[k];
      slot.step.store(0);
      slot.unit.store(static_cast<int64_t>(i));
      try {
        results[i] = run_unit(units[i], data, slot.step);
        if (write_cache)
          write_unit_cache(options, units[i], unit_result_csv(results[i]),
                           units[i].layer_stats ? layer_stats_csv(results[i].layers) : "");
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (first_error.empty()) first_error = "study run '" + units[i].label + "': " + e.what();
      }
      finished[i].store(true);
      slot.unit.store(-1);
      done.fetch_add(1);
    }
    running.fetch_sub(1);
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) threads.emplace_back(worker, w);

  // Progress: runs done, the running ones' steps, and the time left from the
  // fraction of this invocation's steps done so far.
  int64_t steps_todo = 0;
  for (size_t i : todo) steps_todo += units[i].steps;
  while (running.load() > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    StudyProgress p;
    p.done = done.load();
    p.total = total;
    p.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    double steps_done = 0;
    for (size_t i : todo)
      if (finished[i].load()) steps_done += static_cast<double>(units[i].steps);
    for (auto& s : slots) {
      const int64_t u = s.unit.load();
      if (u < 0) continue;
      const int64_t st = s.step.load();
      steps_done += static_cast<double>(st);
      if (p.current.empty()) {
        p.current = units[static_cast<size_t>(u)].label;
        p.step = st;
        p.steps = units[static_cast<size_t>(u)].steps;
      } else {
        p.current += " | " + units[static_cast<size_t>(u)].label;
      }
    }
    if (steps_done > 0 && steps_todo > 0) {
      const double f = std::min(1.0, steps_done / static_cast<double>(steps_todo));
      p.eta_seconds = p.seconds * (1 - f) / f;
    }
    observer.on_progress(p);
  }
  for (auto& t : threads) t.join();
  if (!first_error.empty()) fail(first_error);
}

}  // namespace normlab
