// Placeholder until the depth subcommand lands; it refuses to run rather than pretend.
#include "commands.hpp"
#include "normlab/error.hpp"

namespace normlab::cli {

void add_depth_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("depth", "(not yet available)");
  cmd->callback([] { fail("normlab depth is not implemented yet"); });
}

}  // namespace normlab::cli
