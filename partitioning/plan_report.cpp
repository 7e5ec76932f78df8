#include "partitioning/plan_report.hpp"

namespace shardlm {

double phase_total(const PhaseCost& c, double per_layer, double per_edges) {
  const double layers = static_cast<double>(c.layers_per_stage * c.config.mesh.pp);
  return static_cast<double>(c.forward_passes * c.micro_batches) * (per_layer * layers + per_edges);
}

namespace {

nlohmann::json collectives_json(const ForwardCost& f) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& c : f.collectives)
    list.push_back({{"stage", c.stage},
                    {"tensor", c.tensor},
                    {"kind", name(c.kind)},
                    {"axes", c.axes},
                    {"fusion_group", c.fusion_group},
                    {"bytes_per_chip", c.bytes},
                    {"seconds", c.seconds},
                    {"priced_seconds", c.priced_s}});
  return list;
}

nlohmann::json forward_json(const ForwardCost& f) {
  return {{"flops_per_chip", f.flops},
          {"compute_s", f.compute_s},
          {"weight_load_s", f.weight_mem_s},
          {"kv_load_s", f.kv_mem_s},
          {"communication_s", f.comm_s},
          {"weight_bytes_per_chip", f.weight_bytes},
          {"kv_bytes_per_chip", f.kv_bytes},
          {"communication_bytes_per_chip", f.comm_bytes},
          {"efficiency",
           {{"compute_s", f.compute_eff_s},
            {"memory_s", f.memory_eff_s},
            {"communication_s", f.comm_eff_s},
            {"overlap_hidden_s", f.overlap_s},
            {"overhead_s", f.overhead_s}}},
          {"latency_s", f.latency_s},
          {"collectives", collectives_json(f)}};
}

nlohmann::json breakdown_json(const PhaseCost& c) {
  auto total = [&](double layer, double edge) { return phase_total(c, layer, edge); };
  return {{"compute_s", total(c.layer.compute_s, c.edges.compute_s)},
          {"weight_load_s", total(c.layer.weight_mem_s, c.edges.weight_mem_s)},
          {"kv_load_s", total(c.layer.kv_mem_s, c.edges.kv_mem_s)},
          {"communication_s", total(c.layer.comm_s, c.edges.comm_s)},
          {"efficiency_compute_s", total(c.layer.compute_eff_s, c.edges.compute_eff_s)},
          {"efficiency_memory_s", total(c.layer.memory_eff_s, c.edges.memory_eff_s)},
          {"efficiency_communication_s", total(c.layer.comm_eff_s, c.edges.comm_eff_s)},
          {"overlap_hidden_s", total(c.layer.overlap_s, c.edges.overlap_s)},
          {"overhead_s", total(c.layer.overhead_s, 0)},
          {"per_layer", forward_json(c.layer)},
          {"embedding_and_head", forward_json(c.edges)}};
}

}  // namespace

nlohmann::json phase_cost_json(const PhaseCost& c) {
  return {{"ffn_layout", name(c.config.ffn)},
          {"attn_layout", name(c.config.attn)},
          {"weights", c.config.weights},
          {"mesh", {{"x", c.config.mesh.x}, {"y", c.config.mesh.y}, {"z", c.config.mesh.z}}},
          {"pp", c.config.mesh.pp},
          {"micro_batches", c.micro_batches},
          {"pipeline_bubble", pipeline_bubble(c)},
          {"forward_passes", c.forward_passes},
          {"tokens", c.tokens},
          {"latency_s", c.latency_s},
          {"mfu", c.mfu},
          {"cost_chip_ms_per_token", c.cost_chip_ms_per_token},
          {"breakdown", breakdown_json(c)},
          {"memory_per_chip",
           {{"weights_bytes", c.memory.weights},
            {"kv_cache_bytes", c.memory.kv_cache},
            {"activations_bytes", c.memory.activations},
            {"usable_bytes", c.memory.available}}}};
}

nlohmann::json phase_plan_json(const PhasePlan& p) {
  nlohmann::json alternatives = nlohmann::json::array();
  for (const auto& a : p.runners_up)
    alternatives.push_back({{"ffn_layout", name(a.cost.config.ffn)},
                            {"attn_layout", name(a.cost.config.attn)},
                            {"latency_s", a.cost.latency_s},
                            {"mfu", a.cost.mfu},
                            {"fits", a.cost.problem.empty()},
                            {"lost_because", a.lost_because}});
  nlohmann::json j = phase_cost_json(p.chosen);
  j["why"] = p.why;
  j["alternatives"] = alternatives;
  return j;
}

nlohmann::json plan_json(const Plan& plan, const HardwareSpec& hw) {
  const ModelSpec& model = plan.model;
  const Workload& w = plan.request.workload;
  nlohmann::json others = nlohmann::json::array();
  for (const auto& a : plan.other_setups) others.push_back(a.lost_because);
  return {{"model",
           {{"name", model.name},
            {"params", model.num_params()},
            {"mfu_params", model.mfu_params()},
            {"layers", model.config.num_layers},
            {"attention", model.attention_kind()},
            {"parallel_block", model.config.parallel_block}}},
          {"hardware", hw.name},
          {"chips", plan.mesh.size()},
          {"workload", {{"batch", w.batch}, {"prompt_len", w.prompt_len}, {"gen_len", w.gen_len}}},
          {"objective", plan.request.objective == Objective::kCost ? "cost" : "latency"},
          {"mesh", {{"x", plan.mesh.x}, {"y", plan.mesh.y}, {"z", plan.mesh.z}}},
          {"pp", plan.mesh.pp},
          {"weights", plan.weights},
          {"latency_s", plan.latency_s()},
          {"cost_chip_ms_per_token", plan.cost_chip_ms_per_token()},
          {"why", plan.why},
          {"prefill", phase_plan_json(plan.prefill)},
          {"decode", phase_plan_json(plan.decode)},
          {"other_setups", others},
          {"notes", plan.notes}};
}

}  // namespace shardlm
