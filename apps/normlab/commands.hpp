// One function per subcommand, each in its own cmd_<name>.cpp. Each adds its
// subcommand to the app and sets a callback that throws normlab::Error on bad input.
#pragma once
#include <CLI/CLI.hpp>

namespace normlab::cli {

void add_depth_command(CLI::App& app);  // seed-000: output norm vs depth
void add_train_command(CLI::App& app);  // train a model on MNIST / Fashion-MNIST
void add_eval_command(CLI::App& app);   // test accuracy of a checkpoint
void add_bench_command(CLI::App& app);  // kernel timings beside a plain copy
void add_model_command(CLI::App& app);  // layers and state_dict keys of a model spec
void add_study_command(CLI::App& app);  // the papers' small experiments (src/study/)

}  // namespace normlab::cli
