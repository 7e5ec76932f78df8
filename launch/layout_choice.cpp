#include "launch/layout_choice.hpp"

#include <fmt/format.h>

#include "partitioning/plan_report.hpp"
#include "partitioning/planner.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

template <typename T, typename Parse>
std::optional<T> pinned(const std::string& text, const char* flag, Parse parse) {
  if (text.empty()) return std::nullopt;
  try {
    return parse(text);
  } catch (const std::invalid_argument& e) {
    throw UsageError(fmt::format("{} {}: {}", flag, text, e.what()));
  }
}

}  // namespace

LayoutChoice choose_layouts(const LayoutFlags& flags, const ModelConfig& config, const Mesh& mesh,
                            const Workload& workload, const std::string& weights) {
  LayoutChoice choice;
  const auto ffn_prefill = pinned<FfnLayout>(flags.ffn_prefill, "--ffn-layout-prefill", parse_ffn_layout);
  const auto ffn_decode = pinned<FfnLayout>(flags.ffn_decode, "--ffn-layout-decode", parse_ffn_layout);
  const auto attn_prefill = pinned<AttnLayout>(flags.attn_prefill, "--attn-layout-prefill", parse_attn_layout);
  const auto attn_decode = pinned<AttnLayout>(flags.attn_decode, "--attn-layout-decode", parse_attn_layout);
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
  choice.prefill = {ffn_prefill.value_or(FfnLayout::k2D), attn_prefill.value_or(AttnLayout::kHeads),
                    weights, mesh};
  choice.decode = {ffn_decode.value_or(FfnLayout::k2D), attn_decode.value_or(AttnLayout::kHeads),
                   weights, mesh};
  if (!flags.plan_auto) return choice;

  PlanRequest request;
  request.workload = workload;
  request.chips = mesh.size();
  request.weights = weights;
  request.mesh = mesh;
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

nlohmann::json predicted_costs(const LayoutChoice& choice, const ModelConfig& config,
                               const Workload& workload) {
  if (!choice.hardware) return nullptr;
  const ModelSpec model = ModelSpec::from_config(config, "model");
  return {{"hardware", choice.hardware->name},
          {"prefill", phase_cost_json(estimate_phase(model, *choice.hardware, workload,
                                                     Phase::kPrefill, choice.prefill))},
          {"decode", phase_cost_json(estimate_phase(model, *choice.hardware, workload,
                                                    Phase::kDecode, choice.decode))}};
}

}  // namespace shardlm
