// Placeholder until the eval subcommand lands; it refuses to run rather than pretend.
#include "commands.hpp"
#include "normlab/error.hpp"

namespace normlab::cli {

void add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "(not yet available)");
  cmd->callback([] { fail("normlab eval is not implemented yet"); });
}

}  // namespace normlab::cli
