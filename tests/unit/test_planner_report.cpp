// The JSON report of `shardlm plan --json` (and for the runtime's logs): the
// keys the issue names, and totals that add up to the phase latency.
#include <catch2/catch.hpp>

#include "partitioning/plan_report.hpp"

using namespace shardlm;

TEST_CASE("plan JSON has prefill and decode with the promised keys", "[planner][report]") {
  const std::string root = SHARDLM_SOURCE_DIR;
  const ModelSpec model = ModelSpec::load_yaml(root + "/configs/models/palm-62b.yaml");
  const HardwareSpec hw = HardwareSpec::load(root + "/configs/hardware/tpu-v4.yaml");
  PlanRequest req;
  req.workload = {32, 2048, 64};
  req.chips = 16;
  req.mesh = Mesh{1, 2, 4, 2};
  const Plan plan = make_plan(model, hw, req);
  const nlohmann::json j = plan_json(plan, hw);
  for (const char* phase : {"prefill", "decode"}) {
    INFO(phase);
    const nlohmann::json& p = j.at(phase);
    for (const char* key : {"ffn_layout", "attn_layout", "weights", "mesh", "pp", "latency_s",
                            "mfu", "cost_chip_ms_per_token", "breakdown"})
      CHECK(p.contains(key));
    CHECK(p["mesh"]["y"] == 4);
    const PhaseCost& c = std::string(phase) == "prefill" ? plan.prefill.chosen : plan.decode.chosen;
    // One stage: the phase is every pass of every micro-batch through all layers and the head.
    const double passes = double(c.forward_passes * c.micro_batches);
    CHECK(p["latency_s"].get<double>() ==
          Approx(passes * (64 * c.layer.latency_s + c.edges.latency_s)));
    CHECK(p["breakdown"]["compute_s"].get<double>() ==
          Approx(passes * (64 * c.layer.compute_s + c.edges.compute_s)));
    CHECK(p["breakdown"]["per_layer"]["collectives"].size() == c.layer.collectives.size());
    CHECK(p["latency_s"].get<double>() > p["breakdown"]["compute_s"].get<double>());
  }
  CHECK(j["latency_s"].get<double>() == Approx(plan.latency_s()));
  CHECK(j["model"]["mfu_params"] == model.mfu_params());
}
