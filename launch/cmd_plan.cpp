// `shardlm plan`: placeholder until the partition planner lands.
#include "launch/commands.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

void add_plan_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("plan", "choose a partitioning layout (not yet available)");
  cmd->callback([] { throw UsageError("plan: not implemented yet"); });
}

}  // namespace shardlm
