#pragma once
// How `generate` picks its per-phase layouts — pinned by flags, or asked of
// the planner for the mesh it runs on — and the planner's prediction for the
// layouts it runs, recorded beside the measured times.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "partitioning/cost_model.hpp"

namespace shardlm {

struct LayoutFlags {
  bool plan_auto = false;
  // Empty: not pinned (planner's choice under --plan auto, else the default).
  std::string ffn_prefill, ffn_decode, attn_prefill, attn_decode;
  std::string hardware;  // spec for the planner and the prediction
  bool hardware_given = false;
  std::vector<int> rank_nodes;  // node of each rank of the job (empty: by the spec's nodes)
};

struct LayoutChoice {
  PhaseConfig prefill, decode;
  std::optional<HardwareSpec> hardware;  // absent when no spec was found
  std::string why;                       // the planner's reasoning, under --plan auto
};

// `weights` is the cost model's dtype name of the weights as stored.
LayoutChoice choose_layouts(const LayoutFlags& flags, const ModelConfig& config, const Mesh& mesh,
                            const Workload& workload, const std::string& weights);

// {"hardware", "prefill": phase_cost_json, "decode": ...}, or null without a spec.
nlohmann::json predicted_costs(const LayoutChoice& choice, const ModelConfig& config,
                               const Workload& workload);

}  // namespace shardlm
