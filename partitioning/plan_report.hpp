#pragma once
// Reports of predicted costs for tools and logs: the JSON `shardlm plan
// --json` prints, reusable by the runtime to record the prediction beside
// each measured run.
#include <nlohmann/json.hpp>

#include "partitioning/planner.hpp"

namespace shardlm {

// A phase total of a per-layer quantity and its embedding/head counterpart:
// every forward pass runs every micro-batch through all layers and the head.
double phase_total(const PhaseCost& c, double per_layer, double per_edges);

// {ffn_layout, attn_layout, weights, mesh, pp, latency_s, mfu,
//  cost_chip_ms_per_token, breakdown{...totals, per_layer, embedding_and_head},
//  memory_per_chip{...}}
nlohmann::json phase_cost_json(const PhaseCost& c);
// phase_cost_json plus the reason it won and the runners-up.
nlohmann::json phase_plan_json(const PhasePlan& p);
// The whole plan: model, hardware, workload, mesh, and top-level prefill/decode.
nlohmann::json plan_json(const Plan& plan, const HardwareSpec& hw);

}  // namespace shardlm
