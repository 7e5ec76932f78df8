#pragma once
// The planner: enumerate meshes (and pipeline depths) the hardware allows,
// weight dtypes and, per phase, feedforward x attention layouts; price each
// with the cost model; keep what fits in memory; pick by the objective; say
// why the winner won and why each runner-up lost.
//
// The runtime calls make_plan(model, hardware, request) with request.mesh
// pinned to the mesh it actually runs on to get the layouts for both phases.
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "partitioning/cost_model.hpp"

namespace shardlm {

enum class Objective { kLatency, kCost };

struct PlanRequest {
  Workload workload;
  int chips = 1;  // the budget; the latency objective uses all of them
  Objective objective = Objective::kLatency;
  std::optional<double> latency_target_s;  // prefill + decode
  std::string weights = "auto";            // bf16, int8 or auto
  std::string kv_dtype;                    // f32, bf16 or f16; empty: the activations'
  std::string activation_dtype;            // f32 or bf16; empty: the hardware's
  std::optional<FfnLayout> ffn_prefill, ffn_decode;
  std::optional<AttnLayout> attn_prefill, attn_decode;
  std::optional<Mesh> mesh;  // pins x, y, z and pp
  std::optional<int> pp;     // pins the pipeline depth only
  int max_pp = 8;
};

struct Alternative {
  PhaseCost cost;
  std::string lost_because;
};

struct PhasePlan {
  PhaseCost chosen;
  std::string why;
  std::vector<Alternative> runners_up;  // best first, a handful
};

struct Plan {
  ModelSpec model;
  std::string hardware;
  PlanRequest request;
  Mesh mesh;
  std::string weights;
  PhasePlan prefill, decode;
  std::string why;                        // mesh / dtype / chip-count choice
  std::vector<Alternative> other_setups;  // best of other meshes, dtypes, pipeline depths
  std::vector<std::string> notes;         // caveats worth a user's attention
  double latency_s() const { return prefill.chosen.latency_s + decode.chosen.latency_s; }
  double cost_chip_ms_per_token() const;  // both phases, per generated+prompt token
};

// Throws UsageError for impossible requests (e.g. a mesh that does not match
// the chips) and DataError when nothing fits, saying by how much and what would.
Plan make_plan(const ModelSpec& model, const HardwareSpec& hw, const PlanRequest& request);

// Best (ffn, attn) for one phase on a fixed mesh and dtype, honouring pins.
PhasePlan plan_phase(const ModelSpec& model, const HardwareSpec& hw, const PlanRequest& request,
                     Phase phase, const Mesh& mesh, const std::string& weights);

// Best prefill and decode layouts on a fixed mesh and dtype, honouring pins,
// that store the weights alike (storage_differences): weights are loaded
// once for both phases. The fastest of each phase when they do; else the
// pair of the lowest total latency that does (fitting pairs first). Throws
// UsageError, naming a weight stored differently, when pins leave no such pair.
std::pair<PhasePlan, PhasePlan> plan_phases(const ModelSpec& model, const HardwareSpec& hw,
                                            const PlanRequest& request, const Mesh& mesh,
                                            const std::string& weights);

// The meshes (with pipeline depth) tried for `chips` chips: the pinned one,
// else every pipeline depth 1, 2, 4 ... up to max_pp (or the pinned depth)
// times every factorisation x*y*z the hardware can form (hw.mesh_problem).
std::vector<Mesh> candidate_meshes(const ModelSpec& model, const HardwareSpec& hw,
                                   const PlanRequest& request, int chips);

// "+23.0% latency: exposed communication 3 ms vs 1 ms per forward pass, mostly
// all-gather(x) of h": why `loser` is worse than `winner`.
std::string explain_loss(const PhaseCost& loser, const PhaseCost& winner);
// "850 us", "3.2 ms", "1.5 s".
std::string format_seconds(double s);

}  // namespace shardlm
