// `shardlm plan`: choose mesh, per-phase layouts, weight dtype and pipeline
// depth for a model on some hardware, and show the arithmetic (issue 4).
// Also `--paper-table FILE` / `--fit-paper FILE`: the fidelity table of the
// cost model against published results, and the fit of its efficiency constants.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "launch/commands.hpp"
#include "launch/flags.hpp"
#include "partitioning/paper_fit.hpp"
#include "partitioning/plan_report.hpp"
#include "partitioning/planner.hpp"
#include "runtime/dtype.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

struct PlanOptions {
  std::string model, hardware = "tpu-v4", objective = "latency", weights = "auto";
  std::string kv_dtype = default_kv_dtype_flag(), activations = "auto";
  int chips = 0, pp = 0;
  int64_t batch = 1, prompt_len = 0, gen_len = 0;
  double latency_target_ms = 0;
  std::string ffn_prefill, ffn_decode, attn_prefill, attn_decode, mesh;
  bool json = false, show_layouts = false, hardware_given = false;
  std::vector<std::string> paper_table, fit_paper;
};

std::string seconds(double s) {
  return format_seconds(s);
}

std::string gigabytes(double b) {
  return fmt::format("{:.2f} GB", b / 1e9);
}

std::string megabytes(double b) {
  return fmt::format("{:.3g} MB", b / 1e6);
}

void print_phase(const PhasePlan& p) {
  const PhaseCost& c = p.chosen;
  fmt::print("\n{}: ffn {}, attention {}, {} weights, mesh {}, pp={}\n", name(c.phase),
             name(c.config.ffn), name(c.config.attn), c.config.weights, c.config.mesh.str(),
             c.config.mesh.pp);
  const std::string chunks =
      c.micro_batches > 1 ? fmt::format(", batch in {} micro-batches", c.micro_batches) : "";
  fmt::print(
      "  latency {} for {} tokens ({} forward pass{}{}), MFU {:.1f}%, {:.4g} chip-ms/token\n",
      seconds(c.latency_s), c.tokens, c.forward_passes, c.forward_passes == 1 ? "" : "es", chunks,
      c.mfu * 100, c.cost_chip_ms_per_token);
  fmt::print("  why: {}\n", p.why);
  fmt::print("  {:<26} {:>12} {:>12}   {:>12}\n", "roofline (per chip)", "per layer", "phase total",
             "efficiency");
  auto row = [&](const char* what, double layer, double edge, double eff_layer, double eff_edge) {
    fmt::print("  {:<26} {:>12} {:>12}   {:>12}\n", what, seconds(layer),
               seconds(phase_total(c, layer, edge)), seconds(phase_total(c, eff_layer, eff_edge)));
  };
  row("compute", c.layer.compute_s, c.edges.compute_s, c.layer.compute_eff_s,
      c.edges.compute_eff_s);
  row("weight load", c.layer.weight_mem_s, c.edges.weight_mem_s,
      c.layer.memory_eff_s * c.layer.weight_mem_s /
          std::max(1e-30, c.layer.weight_mem_s + c.layer.kv_mem_s),
      0);
  row("KV-cache load", c.layer.kv_mem_s, c.edges.kv_mem_s,
      c.layer.memory_eff_s * c.layer.kv_mem_s /
          std::max(1e-30, c.layer.weight_mem_s + c.layer.kv_mem_s),
      0);
  row("communication", c.layer.comm_s, c.edges.comm_s, c.layer.comm_eff_s, c.edges.comm_eff_s);
  row("  hidden by overlap", 0, 0, -c.layer.overlap_s, -c.edges.overlap_s);
  row("  per-layer overhead", 0, 0, c.layer.overhead_s, 0);
  fmt::print("  collectives per layer and forward pass (per chip: bytes, roofline, priced):\n");
  for (const auto& col : c.layer.collectives)
    fmt::print("    {:<16} {:<4} {:<20} {:>10} {:>10} {:>10}{}\n", name(col.kind), col.axes,
               col.tensor, megabytes(col.bytes), seconds(col.seconds), seconds(col.priced_s),
               col.fusion_group >= 0 ? fmt::format("  [fused #{}]", col.fusion_group) : "");
  fmt::print("  memory per chip: weights {}, KV cache {}, activations {} of {} usable\n",
             gigabytes(c.memory.weights), gigabytes(c.memory.kv_cache),
             gigabytes(c.memory.activations), gigabytes(c.memory.available));
  fmt::print("  runners-up:\n    {:<7} {:<6} {:>10} {:>7}  lost because\n", "ffn", "attn",
             "latency", "MFU");
  for (const auto& a : p.runners_up)
    fmt::print("    {:<7} {:<6} {:>10} {:>6.1f}%  {}\n", name(a.cost.config.ffn),
               name(a.cost.config.attn), a.cost.problem.empty() ? seconds(a.cost.latency_s) : "-",
               a.cost.mfu * 100, a.lost_because);
}

void run_paper(const PlanOptions& o) {
  const std::vector<std::string>& files = o.fit_paper.empty() ? o.paper_table : o.fit_paper;
  PublishedSet set = PublishedSet::load(files);
  const std::string local_hw = set.config_root + "/hardware/" + set.hardware + ".yaml";
  HardwareSpec hw =
      HardwareSpec::load(o.hardware_given ? resolve_config(o.hardware, "hardware") : local_hw);
  if (!o.fit_paper.empty()) {
    hw = fit_efficiency(set, hw);
    fmt::print("# fitted to {} results of {}; paste into {}:\n{}\n", set.results.size(),
               fmt::join(set.data_sets, ", "), hw.source_file,
               format_efficiency_yaml(hw.efficiency));
  }
  std::vector<FidelityRow> rows = evaluate(set, hw);
  cross_validate(set, hw, rows);
  fmt::print("{}", format_fidelity(rows, hw));
  fmt::print(
      "\nThe planner left free (mesh, layouts, pipeline depth; published weight dtype) "
      "against the fastest published configuration:\n\n{}",
      format_free_choices(free_choices(set, hw)));
}

void run_plan(const PlanOptions& o) {
  if (!o.paper_table.empty() || !o.fit_paper.empty()) return run_paper(o);
  if (o.model.empty())
    throw UsageError(
        "plan: --model is required (a name from configs/models, a YAML file, or a model "
        "directory)");
  if (o.chips < 1) throw UsageError("plan: --chips N (N >= 1) is required");
  if (o.prompt_len < 1 || o.gen_len < 1)
    throw UsageError("plan: --prompt-len and --gen-len (>= 1) are required");
  if (o.batch < 1) throw UsageError("plan: --batch must be at least 1");
  ModelSpec model = ModelSpec::resolve(o.model);
  HardwareSpec hw = HardwareSpec::load(resolve_config(o.hardware, "hardware"));

  PlanRequest req;
  req.workload = {o.batch, o.prompt_len, o.gen_len};
  req.chips = o.chips;
  if (o.objective != "latency" && o.objective != "cost")
    throw UsageError(fmt::format("--objective '{}': expected latency or cost", o.objective));
  req.objective = o.objective == "cost" ? Objective::kCost : Objective::kLatency;
  if (o.latency_target_ms > 0) req.latency_target_s = o.latency_target_ms / 1e3;
  req.weights = o.weights;
  req.kv_dtype = std::string(weight_dtype_name(parse_kv_dtype(o.kv_dtype)));
  if (const std::optional<DType> activations = parse_activation_dtype(o.activations))
    req.activation_dtype = std::string(weight_dtype_name(*activations));
  req.ffn_prefill =
      parse_optional_flag<FfnLayout>("--ffn-layout-prefill", o.ffn_prefill, parse_ffn_layout);
  req.ffn_decode =
      parse_optional_flag<FfnLayout>("--ffn-layout-decode", o.ffn_decode, parse_ffn_layout);
  req.attn_prefill =
      parse_optional_flag<AttnLayout>("--attn-layout-prefill", o.attn_prefill, parse_attn_layout);
  req.attn_decode =
      parse_optional_flag<AttnLayout>("--attn-layout-decode", o.attn_decode, parse_attn_layout);
  if (o.pp > 0) req.pp = o.pp;
  req.mesh = parse_optional_flag<Mesh>("--mesh", o.mesh, Mesh::parse);
  if (req.mesh) req.mesh->pp = o.pp > 0 ? o.pp : 1;

  Plan plan = make_plan(model, hw, req);
  if (o.json) {
    nlohmann::json j = plan_json(plan, hw);
    fmt::print("{}\n", j.dump(2));
    return;
  }
  fmt::print("shardlm plan: {} ({:.4g}B params, {} layers, {}, {} block) on {} x {}\n", model.name,
             model.num_params() / 1e9, model.config.num_layers, model.attention_kind(),
             model.config.parallel_block ? "parallel" : "serial", o.chips, hw.name);
  fmt::print("workload: batch {}, prompt {} tokens, generate {} tokens; objective {}\n", o.batch,
             o.prompt_len, o.gen_len, o.objective);
  fmt::print("chosen: mesh {} pp={}, {} weights; total latency {}, {:.4g} chip-ms/token\n",
             plan.mesh.str(), plan.mesh.pp, plan.weights, seconds(plan.latency_s()),
             plan.cost_chip_ms_per_token());
  fmt::print("why: {}\n", plan.why);
  for (const auto& n : plan.notes) fmt::print("note: {}\n", n);
  print_phase(plan.prefill);
  print_phase(plan.decode);
  if (!plan.other_setups.empty()) {
    fmt::print("\nother setups (best layouts on each):\n");
    for (const auto& a : plan.other_setups) fmt::print("  {}\n", a.lost_because);
  }
  if (o.show_layouts) {
    for (const PhasePlan* p : {&plan.prefill, &plan.decode}) {
      const PhaseCost& c = p->chosen;
      Layout l = make_layout(c.config.ffn, c.config.attn, layout_shape(model), c.config.mesh);
      fmt::print(
          "\n{} {}", name(c.phase),
          format_layout(l, phase_dims(model, req.workload, c.phase, o.batch / c.micro_batches),
                        c.config.mesh));
    }
  }
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  auto* cmd = app.add_subcommand(
      "plan", "choose mesh, per-phase layouts and weight dtype, and explain the choice");
  cmd->add_option("--model", o->model,
                  "model: configs/models NAME, a YAML file, or a directory with config.json");
  cmd->add_option("--hardware", o->hardware, "hardware: configs/hardware NAME or a YAML file")
      ->capture_default_str();
  cmd->add_option("--chips", o->chips, "number of chips (the budget for --objective cost)");
  cmd->add_option("--batch", o->batch, "sequences per batch")->capture_default_str();
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence (prefill)");
  cmd->add_option("--gen-len", o->gen_len, "generated tokens per sequence (decode)");
  cmd->add_option("--objective", o->objective, "latency or cost")->capture_default_str();
  cmd->add_option("--latency-target-ms", o->latency_target_ms, "prefill + decode latency to meet");
  cmd->add_option("--weights", o->weights, "bf16, int8, f32 or auto")->capture_default_str();
  cmd->add_option("--kv-dtype", o->kv_dtype, kv_dtype_flag_help())->capture_default_str();
  cmd->add_option("--activations", o->activations,
                  "activations as the runtime stores and moves them: f32 or bf16 (auto: the "
                  "hardware spec's activation_dtype)")
      ->capture_default_str();
  cmd->add_option("--ffn-layout-prefill", o->ffn_prefill, "pin: 1d, 2d, wg-x, wg-xy, wg-xyz");
  cmd->add_option("--ffn-layout-decode", o->ffn_decode, "pin: 1d, 2d, wg-x, wg-xy, wg-xyz");
  cmd->add_option("--attn-layout-prefill", o->attn_prefill, "pin: heads or batch");
  cmd->add_option("--attn-layout-decode", o->attn_decode, "pin: heads or batch");
  cmd->add_option("--mesh", o->mesh, "pin the tensor-parallel mesh X,Y,Z");
  cmd->add_option("--pp", o->pp, "pin the number of pipeline stages");
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->add_flag("--show-layouts", o->show_layouts,
                "print the chosen layouts' partition specs and steps");
  cmd->add_option("--paper-table", o->paper_table,
                  "predicted vs published (in sample and leave-one-out) for configs/paper files");
  cmd->add_option("--fit-paper", o->fit_paper,
                  "fit the efficiency constants to configs/paper files of one hardware");
  cmd->callback([o, cmd] {
    o->hardware_given = cmd->count("--hardware") > 0;
    run_plan(*o);
  });
}

}  // namespace shardlm
