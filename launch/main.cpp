// shardlm: the command-line entry point. Exit codes: 0 success, 2 usage
// error (bad flag or request), 1 data error (bad file, value or runtime fault).
#include <fmt/core.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <string_view>
#include <thread>

#include "collectives/world.hpp"
#include "launch/commands.hpp"
#include "runtime/errors.hpp"
#include "runtime/npy.hpp"

namespace {

// One line on stderr; under MPI it names the rank and ends the whole job, so
// the other ranks never wait for this one in a collective.
int fail(const char* message, int exit_code) {
  if (!shardlm::World::launched_by_mpi()) {
    fmt::print(stderr, "shardlm: error: {}\n", message);
    return exit_code;
  }
  shardlm::World& world = shardlm::World::get();
  if (world.size() == 1) {
    fmt::print(stderr, "shardlm: error: {}\n", message);
    world.abort(exit_code);
  }
  // An error every rank meets alike (a bad flag, mesh or config) is said once,
  // by rank 0, whose MPI_Abort ends the others while they wait here. Should
  // rank 0 not have met it after all, the rank says it itself.
  if (world.errors_agree() && !world.is_root())
    std::this_thread::sleep_for(std::chrono::seconds(5));
  fmt::print(stderr, "shardlm: error: {}: {}\n", world.rank_name(world.rank()), message);
  world.abort(exit_code);
}

// Ctrl-C (mpirun passes it on as SIGTERM) ends the rank without leaving a
// half-written output file behind.
void end_on_interrupt(int signal) {
  shardlm::remove_partial_output();
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

}  // namespace

int main(int argc, char** argv) {
  for (int s : {SIGINT, SIGTERM}) std::signal(s, end_on_interrupt);
  CLI::App app{
      "shardlm: sharded LLM inference after Pope et al., Efficiently Scaling Transformer "
      "Inference"};
  app.require_subcommand(1);
  // A flag given twice takes its last value, as most command lines do.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  shardlm::add_make_model_command(app);
  shardlm::add_generate_command(app);
  shardlm::add_plan_command(app);
  shardlm::add_layouts_command(app);
  shardlm::add_calibrate_command(app);
  shardlm::add_bench_command(app);
  shardlm::add_tokenize_commands(app);
  shardlm::add_sweep_command(app);
  shardlm::add_report_command(app);
  shardlm::add_doctor_command(app);
  try {
    // CLI11 reads "--flag=" as a flag still waiting for its value and takes the
    // next argument; refuse it here so the message names the flag.
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg = argv[i];
      if (arg.starts_with("--") && arg.ends_with("=") && arg.find('=') == arg.size() - 1)
        throw shardlm::UsageError(fmt::format("{}: empty value", arg.substr(0, arg.size() - 1)));
    }
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(e.what(), 2);
  } catch (const shardlm::UsageError& e) {
    return fail(e.what(), 2);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
  if (shardlm::World::launched_by_mpi()) shardlm::World::get().finalize();
  return 0;
}
