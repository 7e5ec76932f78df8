#pragma once
// The analytical cost model of Pope et al. §2 and App. A, priced step by step
// over the same layout tables the runtime executes (layouts.hpp), then turned
// into a latency by the calibrated efficiency model of the hardware spec.
//
// Per chip and per forward pass of one layer:
//   compute  = sum over matmuls of 2 * (product of per-chip dims)  / peak
//   weights  = bytes of the weights each chip multiplies with       / HBM bandwidth
//   kv       = bytes of the KV cache each chip reads                 / HBM bandwidth
//   comm     = sum over collectives of latency + bytes / bandwidth, where bytes
//              are the per-chip output of an all-gather, the per-chip input of a
//              reduce-scatter or all-to-all, twice the input of an all-reduce
//              (App. A.1, with the (K-1)/K factor dropped as the paper does).
// Efficiency (docs/planner.md): C = sum flops / (peak * f_mm(rows)),
// M = bytes / (bw * f_mem), X = sum (latency + bytes / (bw * f_net)),
//   layer = max(C, M) + X - hidden + overhead, where a weight all-gather hides
// behind the matmul that consumes it, up to that matmul's time (Looped
// CollectiveEinsum, §3.5), and activation collectives, on the critical path,
// hide only the fraction comm_overlap of what is left.
// Where the spec has a `measured:` section (shardlm calibrate), its tables
// replace f_mm and f_mem, and its per-layer, per-token and per-collective
// overheads are added (measured_efficiency.hpp).
#include <optional>
#include <string>
#include <vector>

#include "partitioning/hardware.hpp"
#include "partitioning/layouts.hpp"
#include "partitioning/model_spec.hpp"

namespace shardlm {

std::string_view name(Phase p);

struct Workload {
  int64_t batch = 1;       // sequences
  int64_t prompt_len = 1;  // tokens per sequence processed by prefill
  int64_t gen_len = 1;     // tokens generated per sequence by decode
};

// The workload that `generate` runs decode for when asked for `request`'s
// gen_len new tokens per sequence: the first token is sampled from
// prefill's logits, so gen_len - 1 decode steps (at least one is priced, so
// per-step figures stay finite). Every prediction of a generate run prices
// decode on this.
Workload decode_workload(const Workload& request);

struct PhaseConfig {
  FfnLayout ffn = FfnLayout::k2D;
  AttnLayout attn = AttnLayout::kHeads;
  std::string weights = "bf16";  // stored weight dtype: bf16 or int8
  Mesh mesh;                     // mesh.pp pipeline stages, each of x*y*z chips
  // Pipeline micro-batches; 0: the cost model's choice (as many as stages,
  // more when activations do not fit). Prefill with more micro-batches than
  // sequences runs each prompt in chunks, as the runtime does.
  int64_t micro_batches = 0;
  // KV cache dtype (f32, bf16, f16); empty: the activations'.
  std::string kv_dtype = "";
  // Activations as the runtime stores and moves them (f32 or bf16: the
  // bytes of every activation collective and of the live activations);
  // empty: the hardware's activation dtype. Compute is priced at the
  // hardware's peak for its own activation dtype either way (a CPU computes
  // bf16 activations in f32; a GPU's tensor cores take bf16 from f32 ones).
  std::string activation_dtype = "";
};

// Bytes per element of a dtype name ("bf16" 2, "int8" 1, "f32" 4).
double dtype_bytes(const std::string& dtype);

struct CollectiveCost {
  std::string stage;   // "prologue", "layer" or "epilogue"
  std::string tensor;  // what is communicated
  CollectiveKind kind;
  std::string axes;
  int fusion_group = -1;
  double bytes = 0;    // per chip
  double seconds = 0;  // at the spec bandwidth, latency included
  // What `seconds` is made of: latency + bytes / bandwidth, the bandwidth
  // per counted byte (HardwareSpec::collective_traffic_fraction).
  double latency_s = 0, bandwidth = 0;
  double priced_s = 0;  // through the efficiency model (the spec's measured tables)
  int members = 1;      // of its group
  // A weight all-gather: the index in ForwardCost::matmuls of the matmul
  // that consumes the gathered weight; -1 for activations.
  int consumer = -1;
  bool weight = false;         // gathers a weight (weight-gathered layouts)
  bool first_of_group = true;  // pays the group's start-up (fused collectives pay one)
  bool spans_nodes = false;    // its group has members on more than one node
  bool one_per_node = false;   // and at most one on each
};

// One matmul (or attention's two) on one chip: what the efficiency model needs.
struct MatmulCost {
  double flops = 0, rows = 0;
  double weight_bytes = 0;  // weights it reads from memory
  std::optional<WeightRole> weight;
  bool decode_attention = false;  // one new token against the KV cache
  double group = 1;               // decode attention: query heads per KV head
};

// One forward pass through one layer (or through the prologue + epilogue), per chip.
struct ForwardCost {
  double flops = 0;
  double compute_s = 0, weight_mem_s = 0, kv_mem_s = 0, comm_s = 0;  // roofline
  double weight_bytes = 0, kv_bytes = 0, comm_bytes = 0;
  // The same, through the efficiency model.
  double compute_eff_s = 0, memory_eff_s = 0, comm_eff_s = 0, overlap_s = 0, overhead_s = 0;
  double latency_s = 0;
  std::vector<CollectiveCost> collectives;
  std::vector<MatmulCost> matmuls;

  // The most rows (tokens) of any weight matmul on the chip.
  double rows() const;
};

struct MemoryUse {  // bytes per chip
  double weights = 0, kv_cache = 0, activations = 0, available = 0;
  double total() const { return weights + kv_cache + activations; }
  bool fits() const { return total() <= available; }
};

struct PhaseCost {
  Phase phase;
  PhaseConfig config;
  Workload workload;
  int64_t forward_passes = 0;  // 1 for prefill, gen_len for decode
  int64_t tokens = 0;          // batch * prompt_len, or batch * gen_len
  int64_t layers_per_stage = 0;
  int64_t micro_batches = 1;  // pipeline micro-batches, or prefill chunks that fit memory
  double pipeline_hop_s = 0;  // the slowest send of activations between two stages
  ForwardCost layer;          // decode: at the mean context length
  ForwardCost edges;          // embedding + final norm + LM head
  double latency_s = 0;       // the whole phase
  double mfu = 0, cost_chip_ms_per_token = 0;
  MemoryUse memory;
  std::string problem;  // why this configuration cannot run; empty when it can

  int chips() const { return config.mesh.size(); }
};

PhaseCost estimate_phase(const ModelSpec& model, const HardwareSpec& hw, const Workload& w,
                         Phase phase, const PhaseConfig& config);

// Recomputes the efficiency-weighted terms, the latency, MFU and cost of an
// estimate_phase result for hw's efficiency constants (the rest of hw as
// when it was priced): fitting the constants prices each configuration once.
void reprice(PhaseCost& cost, const ModelSpec& model, const HardwareSpec& hw);

// The share of a stage's time spent idle: prefill fills and drains the
// pipeline once, (pp - 1) / (m + pp - 1); a decode step with fewer
// micro-batches than stages leaves each stage idle (pp - m) / pp of it.
double pipeline_bubble(const PhaseCost& cost);

// KV-cache bytes of the whole model and batch at `context` tokens
// (B * C * layers * 2 * K * D * bytes), before any sharding.
double kv_cache_bytes(const ModelSpec& model, int64_t batch, int64_t context,
                      double bytes_per_elem);

// The longest context (prompt + generated tokens) whose KV cache still fits
// next to the weights and decode activations, for the phase configuration's
// attention layout (no minimum over layouts here: this compares them). 0 when
// not even the weights fit.
int64_t max_context(const ModelSpec& model, const HardwareSpec& hw, int64_t batch,
                    const PhaseConfig& config);

// The dimension sizes the layout specs refer to, for one micro-batch of a phase.
DimSizes phase_dims(const ModelSpec& model, const Workload& w, Phase phase, int64_t micro_batch);
LayoutShape layout_shape(const ModelSpec& model);

}  // namespace shardlm
