// shardlm: the command-line entry point. Exit codes: 0 success, 2 usage
// error (bad flag or request), 1 data error (bad file, value or runtime fault).
#include <fmt/core.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <thread>

#include "collectives/world.hpp"
#include "launch/commands.hpp"
#include "launch/openmp_wait.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

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
  shardlm::choose_openmp_wait(argv);  // may start this binary again; first, before any work
  for (int s : {SIGINT, SIGTERM}) std::signal(s, end_on_interrupt);
  CLI::App app{
      "shardlm: sharded LLM inference after Pope et al., Efficiently Scaling Transformer "
      "Inference"};
  shardlm::add_all_commands(app);
  try {
    shardlm::refuse_empty_values(app, argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(e.what(), 2);
  } catch (const shardlm::UsageError& e) {
    return fail(e.what(), 2);
  } catch (const std::filesystem::filesystem_error& e) {
    // The library's own text repeats itself ("filesystem error: ... [path]");
    // the path and the system's reason say it all.
    std::string paths = e.path1().string();
    if (!e.path2().empty()) paths += " -> " + e.path2().string();
    return fail(fmt::format("{}: {}", paths, e.code().message()).c_str(), 1);
  } catch (const std::bad_alloc&) {
    return fail(
        "out of memory: an allocation failed (generate checks its needs against --memory-limit "
        "or the node's available memory before loading; this need was not foreseen)",
        1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
  if (shardlm::World::launched_by_mpi()) shardlm::World::get().finalize();
  return 0;
}
