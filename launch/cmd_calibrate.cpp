// `shardlm calibrate --out FILE`: measure this machine and write a hardware
// spec for the planner. Under `mpirun -n N` it also measures collectives
// between the ranks; alone it says so and starts nothing.
#include <fmt/core.h>
#include <mpi.h>

#include <fstream>
#include <memory>
#include <string>

#include "collectives/world.hpp"
#include "launch/commands.hpp"
#include "partitioning/calibrate.hpp"
#include "partitioning/hardware.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

struct CalibrateOptions {
  std::string out, name = "local";
  bool quick = false;
};

// Ranks sharing this rank's machine (MPI shared-memory split).
int ranks_on_this_node(World& world) {
  if (world.size() == 1) return 1;
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node);
  int n = 1;
  MPI_Comm_size(node, &n);
  MPI_Comm_free(&node);
  return n;
}

void run_calibrate(const CalibrateOptions& o) {
  if (o.out.empty()) throw UsageError("calibrate: --out FILE is required");
  // MPI starts here, and only when launched by mpirun (World decides).
  World& world = World::get();
  if (world.is_root()) {
    if (world.size() == 1)
      fmt::print(stderr,
                 "calibrate: 1 rank: measuring matmul and memory only; run under `mpirun -n N "
                 "shardlm calibrate` to measure collectives between ranks\n");
    else
      fmt::print(stderr, "calibrate: {} ranks: measuring matmul, memory and collectives\n",
                 world.size());
  }
  Calibration c = calibrate(world.all(), ranks_on_this_node(world), o.name, o.quick);
  if (world.is_root()) {
    const std::string yaml = to_yaml(c);
    std::ofstream file(o.out);
    if (!(file << yaml)) throw DataError(fmt::format("{}: cannot write", o.out));
    file.close();
    HardwareSpec::load(o.out);  // what we wrote must load
    fmt::print("{}", yaml);
    fmt::print(stderr, "calibrate: wrote {}\n", o.out);
  }
  world.finalize();
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  auto* cmd =
      app.add_subcommand("calibrate", "measure this machine and write a hardware spec for `plan`");
  cmd->add_option("--out", o->out, "hardware YAML to write")->required();
  cmd->add_option("--name", o->name, "the spec's name")->capture_default_str();
  cmd->add_flag("--quick", o->quick, "smaller sizes: a rough spec in a few seconds");
  cmd->callback([o] { run_calibrate(*o); });
}

}  // namespace shardlm
