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
#include "runtime/pipeline.hpp"

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
  PhaseConfig prefill, decode;           // both on the mesh to run (pp included)
  std::optional<HardwareSpec> hardware;  // absent when no spec was found
  std::string why;                       // the planner's reasoning, under --plan auto
};

// `weights` and `kv_dtype` are the cost model's dtype names of the weights
// and the KV cache as stored. Under
// --plan auto with `mesh_pinned` false the planner also picks the mesh
// (pipeline depth included) for mesh.size() ranks.
LayoutChoice choose_layouts(const LayoutFlags& flags, const ModelConfig& config, const Mesh& mesh,
                            bool mesh_pinned, const Workload& workload, const std::string& weights,
                            const std::string& kv_dtype, const std::string& activation_dtype);

// How many layers each pipeline stage of `mesh` owns: `--pp-layers` text when
// given, else balanced_stage_split (runtime/pipeline.hpp) over the predicted
// decode time per stage (the final norm and LM head counted on the last
// stage; the embedding, one table row per token, costs next to nothing on
// the first) and the weights each stage holds (the embedding table counted
// on the first). Without a hardware spec time is by weight bytes, which
// decode streams.
StageSplit choose_stage_split(const std::string& pp_layers, const ModelConfig& config,
                              const LayoutChoice& choice, const Workload& workload);

// {"hardware", "prefill": phase_cost_json, "decode": ...}, or null without a spec.
nlohmann::json predicted_costs(const LayoutChoice& choice, const ModelConfig& config,
                               const Workload& workload);

}  // namespace shardlm
