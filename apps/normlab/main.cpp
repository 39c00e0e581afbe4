// normlab: the command-line front end. Library errors (normlab::Error) become a
// one-line message on stderr and exit code 2; flag errors are CLI11's (exit 105+).
#include <cstdio>
#include <exception>
#include <iostream>

#include "commands.hpp"
#include "normlab/build_info.hpp"
#include "normlab/distributed.hpp"
#include "normlab/error.hpp"
#include "strict_numbers.hpp"
#include "wait_policy.hpp"

int main(int argc, char** argv) {
  normlab::cli::choose_wait_policy(argc, argv);  // may re-execute with OMP_WAIT_POLICY set
  CLI::App app{"normlab: normalization layers, trained and studied"};
  app.require_subcommand(1);
  std::string summary;
  try {
    summary =
        normlab::build_summary();  // a bad NORMLAB_CPU_CAPABILITY fails here, for every command
  } catch (const normlab::Error& e) {
    std::cerr << std::string("normlab: error: ") + e.what() + "\n";
    return 2;
  }
  app.set_version_flag("--version", summary);
  normlab::cli::add_depth_command(app);
  normlab::cli::add_train_command(app);
  normlab::cli::add_eval_command(app);
  normlab::cli::add_bench_command(app);
  normlab::cli::add_model_command(app);
  normlab::cli::add_study_command(app);
  normlab::cli::make_numbers_strict(app);
  // CLI11 answers an unknown subcommand with "A subcommand is required", which
  // does not say what was wrong; name it.
  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      found = found || sub->check_name(argv[1]);
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!found) {
      std::cerr << "normlab: error: unknown subcommand '" << argv[1] << "'; known: " << known
                << "\n";
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const normlab::Error& e) {
    // Under mpirun, an error only this rank met (not one every rank agreed on)
    // ends the whole job: the other ranks would wait for it in their next collective.
    normlab::Communicator* comm = normlab::world_if_parallel();
    const bool agreed = dynamic_cast<const normlab::AgreedError*>(&e) != nullptr;
    // One write per message: under mpirun every rank's stderr goes to the same
    // terminal, and pieces written separately interleave with another rank's.
    if (comm && !agreed)
      std::cerr << "normlab: error (rank " + std::to_string(comm->rank()) + " of " +
                       std::to_string(comm->size()) + "): " + e.what() + "\n";
    else
      std::cerr << std::string("normlab: error: ") + e.what() + "\n";
    if (comm && !agreed) {
      std::cerr.flush();
      comm->abort(2);
    }
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "normlab: internal error: " << e.what() << "\n";
    if (normlab::Communicator* comm = normlab::world_if_parallel()) comm->abort(3);
    return 3;
  }
  return 0;
}
