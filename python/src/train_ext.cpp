// normlab._normlab's training side: run_training (the same run directory as
// `normlab train`: metrics.jsonl, loss.png, accuracy.png, model.safetensors,
// checkpoint.safetensors), evaluation of a saved model as `normlab eval`, and
// the CLI's dataset lookup. python/normlab/train.py wraps these as normlab.Model.
// normlab::Error becomes a Python ValueError with the same message.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "normlab/checkpoint.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/safetensors.hpp"
#include "normlab/sequential.hpp"
#include "normlab/train.hpp"
#include "normlab/training_run.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Calls a Python callable (or nothing) at the end of every epoch.
class PyObserver : public normlab::TrainingObserver {
 public:
  explicit PyObserver(nb::object on_epoch) : on_epoch_(std::move(on_epoch)) {}
  void on_epoch(const normlab::EpochMetrics& m) override {
    if (on_epoch_.is_none()) return;
    nb::gil_scoped_acquire locked;
    on_epoch_(m.epoch, m.train_loss, m.train_accuracy, m.test_loss, m.test_accuracy);
  }

 private:
  nb::object on_epoch_;
};

nb::list run_training(const std::string& model, const std::string& data_dir,
                      const std::string& dataset, int64_t epochs, int64_t batch_size,
                      const std::string& optimizer, std::optional<double> lr,
                      std::optional<double> weight_decay, std::optional<double> momentum,
                      uint64_t seed, int64_t limit_train, int64_t limit_test,
                      const std::string& out_dir, const std::string& resume,
                      const std::string& wn_init, const std::string& weight_norm_keys,
                      nb::object on_epoch) {
  normlab::TrainConfig c;
  c.model = model;
  c.data_dir = data_dir;
  c.dataset = dataset;
  c.epochs = epochs;
  c.batch_size = batch_size;
  c.optimizer = optimizer;
  c.optim.lr = lr;
  c.optim.weight_decay = weight_decay;
  c.optim.momentum = momentum;
  c.seed = seed;
  c.limit_train = limit_train;
  c.limit_test = limit_test;
  c.out_dir = out_dir;
  c.resume = resume;
  c.wn_init = wn_init;
  const auto keys = normlab::weight_norm_keys_from_name(weight_norm_keys);
  if (!keys)
    throw nb::value_error(
        ("weight_norm_keys must be legacy or parametrizations, got '" + weight_norm_keys + "'")
            .c_str());
  c.weight_norm_keys = *keys;
  PyObserver observer(on_epoch);
  std::vector<normlab::EpochMetrics> history;
  {
    nb::gil_scoped_release unlocked;
    history = normlab::run_training(c, observer);
  }
  nb::list out;
  for (const auto& m : history) {
    nb::dict d;
    d["epoch"] = m.epoch;
    d["steps"] = m.steps;
    d["train_loss"] = m.train_loss;
    d["train_accuracy"] = m.train_accuracy;
    d["test_loss"] = m.test_loss;
    d["test_accuracy"] = m.test_accuracy;
    d["train_seconds"] = m.train_seconds;
    d["eval_seconds"] = m.eval_seconds;
    d["skipped_steps"] = m.skipped_steps;
    out.append(d);
  }
  return out;
}

std::string model_spec_of(const std::string& path) {
  const normlab::SafetensorsFile file = normlab::read_safetensors(path);
  return normlab::metadata_string(file.metadata, normlab::kModelSpecKey, path);
}

// `normlab eval`: loss and accuracy of a model.safetensors / checkpoint.safetensors.
nb::dict evaluate_file(const std::string& path, const std::string& spec,
                       const std::string& data_dir, const std::string& split, int64_t batch_size) {
  if (split != "test" && split != "train")
    throw nb::value_error(("split must be test or train, got '" + split + "'").c_str());
  if (batch_size <= 0 || batch_size > normlab::kMaxBatchSize)
    throw nb::value_error(("batch_size must be between 1 and " +
                           std::to_string(normlab::kMaxBatchSize) + ", got " +
                           std::to_string(batch_size))
                              .c_str());
  normlab::EvalResult r;
  {
    nb::gil_scoped_release unlocked;
    const std::string s = spec.empty() ? model_spec_of(path) : spec;
    const normlab::Dataset ds = normlab::load_dataset(
        data_dir, split == "test" ? normlab::Split::Test : normlab::Split::Train);
    const int64_t D = ds.features();
    normlab::Rng rng(0);  // the file's values overwrite the initial ones
    auto net = normlab::build_model<float>(s, normlab::Shape{batch_size, D}, rng);
    normlab::load_model(path, net->state());
    std::vector<int64_t> index(static_cast<size_t>(ds.size()));
    for (int64_t i = 0; i < ds.size(); ++i) index[static_cast<size_t>(i)] = i;
    std::vector<float> x(static_cast<size_t>(ds.size() * D));
    std::vector<int32_t> y(static_cast<size_t>(ds.size()));
    ds.gather(index, x.data(), y.data());
    normlab::Tensor<float> buffer;
    r = normlab::evaluate(*net, buffer, x.data(), y.data(), ds.size(), D, batch_size);
  }
  nb::dict d;
  d["loss"] = r.loss;
  d["accuracy"] = r.accuracy();
  d["correct"] = r.correct;
  d["count"] = r.count;
  return d;
}

}  // namespace

void add_training(nb::module_& m) {
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const normlab::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  m.def("run_training", &run_training, "model"_a, "data_dir"_a, "dataset"_a, "epochs"_a,
        "batch_size"_a, "optimizer"_a, "lr"_a.none(), "weight_decay"_a.none(), "momentum"_a.none(),
        "seed"_a, "limit_train"_a, "limit_test"_a, "out_dir"_a, "resume"_a, "wn_init"_a,
        "weight_norm_keys"_a, "on_epoch"_a.none());
  m.def("evaluate_file", &evaluate_file, "path"_a, "spec"_a, "data_dir"_a, "split"_a,
        "batch_size"_a);
  m.def("model_spec_of", &model_spec_of, "path"_a);
  m.def(
      "default_data_dir",
      [](const std::string& dataset, const std::string& repo_dir) {
        return normlab::default_data_dir(dataset, repo_dir);
      },
      "dataset"_a, "repo_dir"_a);
}
