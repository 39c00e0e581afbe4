// normlab eval: loss and accuracy of a saved model on a dataset split.
#include <iostream>

#include "commands.hpp"
#include "data_flags.hpp"
#include "normlab/checkpoint.hpp"
#include "normlab/data.hpp"
#include "normlab/error.hpp"
#include "normlab/model_spec.hpp"
#include "normlab/train.hpp"
#include "normlab/training_run.hpp"

namespace normlab::cli {

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "Test accuracy of a model.safetensors or checkpoint");
  auto path = std::make_shared<std::string>();
  auto model = std::make_shared<std::string>();
  auto split = std::make_shared<std::string>("test");
  auto batch = std::make_shared<int64_t>(1000);
  auto threads = std::make_shared<int64_t>(0);
  auto data = std::make_shared<DataFlags>();
  cmd->add_option("checkpoint", *path, "model.safetensors or checkpoint.safetensors")->required();
  cmd->add_option("--model,-m", *model, "Model spec or preset (default: the one in the file)");
  add_data_flags(cmd, *data);
  cmd->add_option("--split", *split, "test or train")->capture_default_str();
  cmd->add_option("--batch-size,-b", *batch, "Evaluation batch size")->capture_default_str();
  cmd->add_option("--threads,-t", *threads, "Threads (0: OpenMP's default)")->capture_default_str();

  cmd->callback([=] {
    if (*split != "test" && *split != "train")
      fail("--split must be test or train, got '", *split, "'");
    if (*batch <= 0 || *batch > kMaxBatchSize)
      fail("--batch-size must be between 1 and ", kMaxBatchSize, ", got ", *batch);
    set_threads(*threads);
    std::string spec = *model;
    if (spec.empty()) {
      const SafetensorsFile file = read_safetensors(*path);
      spec = metadata_string(file.metadata, kModelSpecKey, *path);
    }
    const Dataset ds =
        load_dataset(resolve_data_dir(*data), *split == "test" ? Split::Test : Split::Train);
    const int64_t D = ds.features();
    Rng rng(0);  // initial values are overwritten by the file
    std::unique_ptr<Sequential<float>> net;
    try {
      net = build_model<float>(spec, Shape{*batch, D}, rng);
    } catch (const Error& e) {
      if (!model->empty()) throw;
      fail(*path, ": the model spec in its metadata does not build: ", e.what());
    }
    load_model(*path, net->state());

    std::vector<int64_t> index(static_cast<size_t>(ds.size()));
    for (int64_t i = 0; i < ds.size(); ++i) index[i] = i;
    std::vector<float> x(static_cast<size_t>(ds.size() * D));
    std::vector<int32_t> y(static_cast<size_t>(ds.size()));
    ds.gather(index, x.data(), y.data());
    Tensor<float> buffer;
    const EvalResult r = evaluate(*net, buffer, x.data(), y.data(), ds.size(), D, *batch);
    std::printf("%s on %s (%s, %lld samples): loss %.4f  accuracy %.2f%%\n", spec.c_str(),
                data->dataset.c_str(), split->c_str(), static_cast<long long>(r.count), r.loss,
                100.0 * r.accuracy());
  });
}

}  // namespace normlab::cli
