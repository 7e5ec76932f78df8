#pragma once
// Named layouts of Pope et al. §3.2–3.3 as plain data: for every weight its
// stored and in-use PartitionSpec, for every activation its spec, and the
// ordered steps of one decoder layer (matmuls, attention, norms and the
// collectives between them). The tensor-parallel runtime executes `steps`
// in order; the cost model prices the very same steps. Adding a layout means
// adding a row to layout_params(), not a code path.
//
// Weights are stored once per mesh in a layout shared by `2d` and all
// weight-gathered layouts (`E_x F_zy`), so prefill may gather weights while
// decode keeps them stationary (§3.2.3). `1d` stores `E F_xyz`.
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "partitioning/partition_spec.hpp"

namespace shardlm {

// Prefill runs every prompt token in one forward pass; decode one token per
// sequence per pass. Each phase has its own layout.
enum class Phase { kPrefill, kDecode };
enum class FfnLayout { k1D, k2D, kWgX, kWgXY, kWgXYZ };
enum class AttnLayout { kHeads, kBatch };
enum class CollectiveKind { kAllGather, kReduceScatter, kAllReduce, kAllToAll };
enum class OpKind { kCollective, kLocalSlice, kNorm, kMatmul, kAttention, kActivation, kAdd };
enum class WeightRole {
  kEmbedding,
  kAttnNorm,
  kWq,
  kWk,
  kWv,
  kWo,
  kFfnNorm,
  kWGate,
  kWUp,
  kWDown,
  kFinalNorm,
  kLmHead
};

inline constexpr FfnLayout kAllFfnLayouts[] = {FfnLayout::k1D, FfnLayout::k2D, FfnLayout::kWgX,
                                               FfnLayout::kWgXY, FfnLayout::kWgXYZ};
inline constexpr AttnLayout kAllAttnLayouts[] = {AttnLayout::kHeads, AttnLayout::kBatch};

std::string_view name(FfnLayout l);       // "1d", "2d", "wg-x", "wg-xy", "wg-xyz"
std::string_view name(AttnLayout l);      // "heads", "batch"
std::string_view name(CollectiveKind k);  // "all-gather", ...
std::string_view name(WeightRole r);      // "wq", "w_gate", "embedding", ...
// Throw std::invalid_argument listing the accepted names.
FfnLayout parse_ffn_layout(std::string_view text);
AttnLayout parse_attn_layout(std::string_view text);

// How a feedforward layout places things on the TP axes; every spec follows.
struct FfnLayoutParams {
  std::string stored_e;  // axes splitting E of the stored weights
  std::string stored_f;  // axes splitting F (and H, K) of the stored weights
  std::string gathered;  // axes the weights are all-gathered over before use
  std::string batch;     // axes splitting B of the activations at rest
};
FfnLayoutParams layout_params(FfnLayout l);

struct WeightLayout {
  WeightRole role;
  PartitionSpec stored;  // what each rank keeps in memory
  PartitionSpec used;    // what each rank multiplies with (after gathering)
};

struct Step {
  OpKind op;
  std::vector<std::string> inputs;  // activation names, or weight names for weight gathers
  std::string output;
  std::optional<WeightRole> weight;  // kMatmul: the weight used; weight gathers: the weight
  CollectiveKind collective = CollectiveKind::kAllGather;  // kCollective only
  std::string axes;       // kCollective / kLocalSlice: the mesh axes involved
  int fusion_group = -1;  // collectives sharing a group id run as one (parallel block)
};

// What the layout needs from the model and mesh.
struct LayoutShape {
  int64_t num_heads = 1, num_kv_heads = 1;
  bool parallel_block = false;
  bool gated_ffn = true;  // SwiGLU: gate and up projections; otherwise one W_in
};

struct Layout {
  FfnLayout ffn;
  AttnLayout attn;
  LayoutShape shape;
  std::vector<WeightLayout> weights;                 // per layer, then embedding/final/lm_head
  std::map<std::string, PartitionSpec> activations;  // every name steps mention
  std::vector<Step> prologue;                        // token ids -> residual stream
  std::vector<Step> layer;                           // one decoder layer
  std::vector<Step> epilogue;                        // residual -> logits
  PartitionSpec kv_cache;                            // B C K D per layer, K and V each
  std::string residual = "x";                        // the activation at rest between layers

  const WeightLayout& weight(WeightRole r) const;  // throws std::out_of_range
  bool has_weight(WeightRole r) const;
};

Layout make_layout(FfnLayout ffn, AttnLayout attn, const LayoutShape& shape, const Mesh& mesh);

// The row and col axes of a weight role under a layout's stored specs.
std::pair<std::string, std::string> stored_axes(const Layout& layout, WeightRole role);

// The layer weights that `prefill` and `decode` store differently on `mesh`
// (axes of size 1 split nothing), one line each. Weights are stored once for
// both phases, so a job can run the two layouts only when this is empty.
std::vector<std::string> storage_differences(const Layout& prefill, const Layout& decode,
                                             const Mesh& mesh);
// What to do about a storage difference, for messages that name one.
inline constexpr const char* kShareStorageAdvice =
    "weights are stored once, so pick layouts that share storage (2d and wg-* do; 1d does only "
    "when x = 1)";

// A human-readable table: weights (stored and used), activations, steps.
std::string format_layout(const Layout& layout, const DimSizes& sizes, const Mesh& mesh);

}  // namespace shardlm
