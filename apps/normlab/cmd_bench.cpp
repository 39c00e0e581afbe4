// Placeholder until the bench subcommand lands; it refuses to run rather than pretend.
#include "commands.hpp"
#include "normlab/error.hpp"

namespace normlab::cli {

void add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "(not yet available)");
  cmd->callback([] { fail("normlab bench is not implemented yet"); });
}

}  // namespace normlab::cli
