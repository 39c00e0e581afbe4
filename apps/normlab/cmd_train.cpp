// Placeholder until the train subcommand lands; it refuses to run rather than pretend.
#include "commands.hpp"
#include "normlab/error.hpp"

namespace normlab::cli {

void add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "(not yet available)");
  cmd->callback([] { fail("normlab train is not implemented yet"); });
}

}  // namespace normlab::cli
