#include "launch/layout_choice.hpp"

#include <fmt/format.h>

#include "launch/flags.hpp"
#include "partitioning/plan_report.hpp"
#include "partitioning/planner.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
LayoutChoice choose_layouts(const LayoutFlags& flags, const ModelConfig& config, const Mesh& mesh,
                            bool mesh_pinned, const Workload& workload, const std::string& weights,
                            const std::string& kv_dtype, const std::string& activation_dtype) {
  LayoutChoice choice;
  const auto ffn_prefill =
      parse_optional_flag<FfnLayout>("--ffn-layout-prefill", flags.ffn_prefill, parse_ffn_layout);
  const auto ffn_decode =
      parse_optional_flag<FfnLayout>("--ffn-layout-decode", flags.ffn_decode, parse_ffn_layout);
  const auto attn_prefill = parse_optional_flag<AttnLayout>("--attn-layout-prefill",
                                                            flags.attn_prefill, parse_attn_layout);
  const auto attn_decode =
      parse_optional_flag<AttnLayout>("--attn-layout-decode", flags.attn_decode, parse_attn_layout);
  // Predictions need a spec; without --hardware a missing default spec only
  // drops the prediction, while --plan auto cannot do without one.
  if (flags.hardware_given || flags.plan_auto) {
    choice.hardware = HardwareSpec::load(resolve_config(flags.hardware, "hardware"));
  } else {
    try {
      choice.hardware = HardwareSpec::load(resolve_config(flags.hardware, "hardware"));
    } catch (const DataError&) {
    }
  }
  // Collectives are priced by the links the job's groups actually cross.
  if (choice.hardware) choice.hardware->rank_nodes = flags.rank_nodes;
  choice.prefill = {ffn_prefill.value_or(FfnLayout::k2D),
                    attn_prefill.value_or(AttnLayout::kHeads),
                    weights,
                    mesh,
                    0,
                    kv_dtype,
                    activation_dtype};
  choice.decode = {ffn_decode.value_or(FfnLayout::k2D),
                   attn_decode.value_or(AttnLayout::kHeads),
                   weights,
                   mesh,
                   0,
                   kv_dtype,
                   activation_dtype};
  if (!flags.plan_auto) return choice;

  PlanRequest request;
  request.workload = workload;
  request.chips = mesh.size();
  request.weights = weights;
  request.kv_dtype = kv_dtype;
  request.activation_dtype = activation_dtype;
  if (mesh_pinned) request.mesh = mesh;
  request.ffn_prefill = ffn_prefill;
  request.ffn_decode = ffn_decode;
  request.attn_prefill = attn_prefill;
  request.attn_decode = attn_decode;
  const Plan plan = make_plan(ModelSpec::from_config(config, "model"), *choice.hardware, request);
  choice.prefill = plan.prefill.chosen.config;
  choice.decode = plan.decode.chosen.config;
  choice.why = fmt::format("prefill: {}; decode: {}", plan.prefill.why, plan.decode.why);
  return choice;
}

StageSplit choose_stage_split(const std::string& pp_layers, const ModelConfig& config,
                              const LayoutChoice& choice, const Workload& workload) {
  const int pp = choice.decode.mesh.pp;
  if (!pp_layers.empty()) return parse_stage_split(pp_layers, pp, config.num_layers);
  // Memory: weights held (the embedding table and the LM head are each
  // vocab x hidden). Time: the predicted decode step, where the head is a
  // matmul and the embedding a row lookup; by weight bytes without a spec.
  const double table = double(config.vocab_size * config.hidden_size);
  const StageCosts memory{double(config.params_per_layer()), table + double(config.hidden_size),
                          table};
  StageCosts time{memory.layer, memory.head, 0.0};
  if (choice.hardware) {
    const PhaseCost cost = estimate_phase(ModelSpec::from_config(config, "model"), *choice.hardware,
                                          workload, Phase::kDecode, choice.decode);
    time = {cost.layer.latency_s, cost.edges.latency_s, 0.0};
  }
  return balanced_stage_split(config.num_layers, pp, time, memory);
}

nlohmann::json predicted_costs(const LayoutChoice& choice, const ModelConfig& config,
                               const Workload& workload) {
  if (!choice.hardware) return nullptr;
  const ModelSpec model = ModelSpec::from_config(config, "model");
  const Workload steps = decode_workload(workload);
  return {{"hardware", choice.hardware->name},
          {"prefill", phase_cost_json(estimate_phase(model, *choice.hardware, workload,
                                                     Phase::kPrefill, choice.prefill))},
          {"decode", phase_cost_json(estimate_phase(model, *choice.hardware, steps, Phase::kDecode,
                                                    choice.decode))}};
}

}  // namespace shardlm
