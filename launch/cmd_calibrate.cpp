// `shardlm calibrate --out FILE`: measure this machine and write a hardware
// spec for the planner. Under `mpirun -n N` it also measures collectives
// between the ranks; alone it says so and starts nothing.
#include <fmt/core.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "collectives/world.hpp"
#include "launch/commands.hpp"
#include "models/model_weights.hpp"
#include "models/presets.hpp"
#include "models/random_checkpoint.hpp"
#include "partitioning/calibrate.hpp"
#include "partitioning/cost_model.hpp"
#include "partitioning/hardware.hpp"
#include "runtime/engine.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"
#include "runtime/parallel.hpp"

namespace shardlm {
namespace {

struct CalibrateOptions {
  std::string out, name = "local";
  bool quick = false;
};

// The time a forward pass takes beyond what the cost model prices from the
// measured matmul, memory and collective rates: the engine runs a synthetic
// model (the `small` preset's widths, 4 layers, a 4096-token vocabulary) on
// all ranks as one tensor-parallel job, prefill and decode at a few row
// counts and (several ranks) two layouts with different collective counts,
// across nodes also a mesh with x inside a node and y across; the
// difference per layer and forward pass is fitted to layer + token x rows
// + collective x (collectives inside a node) + inter x (collectives across
// nodes) and written into `c.spec.measured`.
void measure_overheads(World& world, Calibration& c, bool quick) {
  ModelConfig config = *find_preset("small");
  config.num_layers = 4;
  config.vocab_size = 4096;
  namespace fs = std::filesystem;
  // Every rank writes its own copy: nodes need not share a file system.
  const fs::path dir =
      fs::temp_directory_path() / fmt::format("shardlm-calibrate-{}-{}", getpid(), world.rank());
  write_random_checkpoint(config, dir, {DType::BF16, 7, 1});
  const Checkpoint checkpoint(dir.string());
  const ModelSpec model = ModelSpec::from_config(config, "calibration");
  const LayoutShape shape{config.num_heads, config.num_kv_heads, config.parallel_block, true};
  // Priced where the job's ranks actually sit.
  HardwareSpec spec = c.spec;
  spec.rank_nodes = world.node_of_ranks();
  // All ranks on x (1d: its collectives span every rank; 2d: fewer of them);
  // across nodes also x inside a node and y across, so that collectives
  // inside and across nodes are told apart.
  std::vector<std::pair<Mesh, FfnLayout>> runs = {{Mesh{1, world.size(), 1, 1}, FfnLayout::k1D}};
  if (world.size() > 1) runs.push_back({Mesh{1, world.size(), 1, 1}, FfnLayout::k2D});
  if (world.nodes() > 1 && world.size() > world.nodes())
    runs.push_back({Mesh{1, world.size() / world.nodes(), world.nodes(), 1}, FfnLayout::k2D});
  // Weights gathered every pass: the buffers the gathers fill.
  if (world.size() > 1) runs.push_back({Mesh{1, world.size(), 1, 1}, FfnLayout::kWgX});
  const int reps = quick ? 3 : 6;
  std::vector<OverheadSample> samples;
  for (const auto& [mesh, ffn] : runs) {
    ParallelContext ctx(world, mesh);
    const Layout layout = make_layout(ffn, AttnLayout::kHeads, shape, mesh);
    std::unique_ptr<Backend> backend = make_cpu_backend({omp_get_max_threads(), std::nullopt});
    Engine engine(*backend, ctx, config, layout, layout,
                  load_model_weights(checkpoint, config, *backend, layout, ctx,
                                     {0, config.num_layers, true, true}));
    for (const auto& [batch, prompt] : {std::pair{1, 16}, std::pair{8, 64}}) {
      GenerationRequest request;
      for (int b = 0; b < batch; ++b) {
        std::vector<int32_t> ids(static_cast<size_t>(prompt));
        for (int i = 0; i < prompt; ++i) ids[size_t(i)] = int32_t(1 + (i * 389 + b * 97) % 4000);
        request.prompts.push_back(ids);
      }
      request.max_new_tokens = 9;
      std::vector<double> prefill, decode;
      for (int r = 0; r <= reps; ++r) {  // the first run warms up and is not counted
        const GenerationResult result = engine.generate(request);
        if (r == 0) continue;
        prefill.push_back(result.prefill_s);
        decode.push_back(result.decode_s);
      }
      const Workload w{batch, prompt, request.max_new_tokens - 1};
      for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
        const PhaseCost cost =
            estimate_phase(model, spec, w, phase, {ffn, AttnLayout::kHeads, "bf16", mesh, 0});
        OverheadSample s;
        s.what = fmt::format("mesh {} {} {} batch {} prompt {}", mesh.str(), name(ffn), name(phase),
                             batch, prompt);
        s.rows = cost.layer.rows();
        for (const CollectiveCost& coll : cost.layer.collectives) {
          if (!coll.first_of_group) continue;  // collectives run as one pay one start-up
          s.collectives += 1;
          s.inter_node_collectives += spec.group_spans_nodes(mesh, coll.axes);
        }
        for (const CollectiveCost& coll : cost.layer.collectives) {
          if (coll.weight) s.gathered_weight_bytes += coll.bytes;
          if (spec.group_spans_nodes(mesh, coll.axes)) s.inter_node_bytes += coll.bytes;
        }
        // The median run: what a typical run loses beyond the priced work on
        // a machine shared with other work (the rates above are best-of: what
        // the hardware can do; the loss to others' work lands here).
        auto times = phase == Phase::kPrefill ? prefill : decode;
        std::nth_element(times.begin(), times.begin() + long(times.size() / 2), times.end());
        s.measured_s = times[times.size() / 2];
        s.predicted_s = cost.latency_s;
        const double layer_passes = double(config.num_layers * cost.forward_passes);
        s.per_layer_pass_s = (s.measured_s - s.predicted_s) / layer_passes;
        // Relative errors count: a decode step weighs as much as a long prefill.
        s.weight = std::pow(layer_passes / s.measured_s, 2);
        samples.push_back(s);
      }
    }
  }
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  // Every rank measured its own times; rank 0's go into the file.
  const std::array<double, 6> coef = fit_overheads(samples, world.size() > 1);
  MeasuredEfficiency& m = c.spec.measured;
  m.layer_overhead_s = coef[0];
  m.token_overhead_s = coef[1];
  m.overhead_width = double(config.hidden_size + config.intermediate_size);
  m.collective_overhead_s = coef[2];
  m.inter_node_collective_overhead_s = coef[3];
  m.weight_gather_s_per_byte = coef[4];
  m.inter_node_s_per_byte = coef[5];
  for (const auto& s : samples)
    c.overhead_notes.push_back(fmt::format(
        "{}: {:.0f} rows, {:.0f} collectives per layer ({:.0f} across nodes): measured {:.4g} s, "
        "priced {:.4g} s, {:+.3g} s per layer and pass",
        s.what, s.rows, s.collectives, s.inter_node_collectives, s.measured_s, s.predicted_s,
        s.per_layer_pass_s));
}

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
  groups.self = &world.group({world.rank()});
  if (groups.nodes > 1) {
    if (groups.ranks_per_node > 1) groups.in_node = &world.group(same_node);
    groups.across = &world.group(same_local);
    if (world.is_root())
      fmt::print(stderr, "calibrate: {} nodes x {} ranks: inside and across nodes separately\n",
                 groups.nodes, groups.ranks_per_node);
  }
  Calibration c = calibrate(groups, o.name, o.quick);
  world.all().barrier();
  measure_overheads(world, c, o.quick);
  world.all().barrier();
  c.probe_end = measure_speed_probe(world.all(), o.quick);
  if (world.is_root()) {
    const std::string drift = speed_drift_warning(c.probe_start, c.probe_end);
    if (!drift.empty()) fmt::print(stderr, "calibrate: warning: {}\n", drift);
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
