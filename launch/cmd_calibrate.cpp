// `shardlm calibrate --out FILE`: measure this machine and write a hardware
// spec for the planner. Under `mpirun -n N` it also measures collectives
// between the ranks; alone it says so and starts nothing.
#include <fmt/core.h>
#include <omp.h>

#include <memory>
#include <string>
#include <vector>

#include "collectives/world.hpp"
#include "launch/commands.hpp"
#include "partitioning/calibrate.hpp"
#include "partitioning/hardware.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {
namespace {

struct CalibrateOptions {
  std::string out, name = "local";
  bool quick = false;
};

void run_calibrate(const CalibrateOptions& o) {
  if (o.out.empty()) throw UsageError("calibrate: --out FILE is required");
  // MPI starts here, and only when launched by mpirun (World decides).
  World& world = World::get();
  // Rank 0 writes the spec: its path is checked there, before measuring.
  if (world.is_root()) check_output_file(o.out, "--out");
  if (world.is_root()) {
    if (world.size() == 1)
      fmt::print(stderr,
                 "calibrate: 1 rank: measuring matmul and memory only; run under `mpirun -n N "
                 "shardlm calibrate` to measure collectives between ranks\n");
    else
      fmt::print(stderr, "calibrate: {} ranks: measuring matmul, memory and collectives\n",
                 world.size());
  }
  // Each rank computes with its share of its node's cores, as generate does.
  omp_set_num_threads(world.default_threads(world.rank()));
  CalibrationGroups groups;
  groups.all = &world.all();
  groups.nodes = world.nodes();
  groups.ranks_per_node = world.ranks_on_node(world.node(world.rank()));
  std::vector<int> same_node, same_local;
  for (int r = 0; r < world.size(); ++r) {
    if (world.ranks_on_node(world.node(r)) != groups.ranks_per_node)
      throw UsageError(fmt::format(
          "calibrate: {} has {} ranks and {} has {}: give every node the same number of ranks",
          world.host(world.rank()), groups.ranks_per_node, world.host(r),
          world.ranks_on_node(world.node(r))));
    if (world.node(r) == world.node(world.rank())) same_node.push_back(r);
    if (world.local_rank(r) == world.local_rank(world.rank())) same_local.push_back(r);
  }
  if (groups.nodes > 1) {
    if (groups.ranks_per_node > 1) groups.in_node = &world.group(same_node);
    groups.across = &world.group(same_local);
    if (world.is_root())
      fmt::print(stderr, "calibrate: {} nodes x {} ranks: inside and across nodes separately\n",
                 groups.nodes, groups.ranks_per_node);
  }
  Calibration c = calibrate(groups, o.name, o.quick);
  if (world.is_root()) {
    const std::string yaml = to_yaml(c);
    write_file_atomically(o.out, yaml);
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
