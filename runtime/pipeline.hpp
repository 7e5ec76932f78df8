#pragma once
// Pipeline parallelism is a schedule, not a second engine: the mesh's
// slowest axis splits the decoder layers into stages, each stage runs the
// same decoder block on its layers, and micro-batches flow from stage to
// stage. This file holds the pure parts — which layers a stage owns, how a
// batch is cut into micro-batches, and the messages between stages — so they
// can be tested without ranks; runtime/engine.cpp runs them.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/batch.hpp"

namespace shardlm {

// How many decoder layers each stage owns, stage 0 first.
struct StageSplit {
  std::vector<int64_t> layers;
  int stages() const { return int(layers.size()); }
  int64_t first_layer(int stage) const;
  int64_t end_layer(int stage) const { return first_layer(stage) + layers.at(size_t(stage)); }
  std::string str() const;  // "12,10"
};

// Parses `--pp-layers 7,9`; throws UsageError naming the flag unless it has
// `stages` positive counts summing to `num_layers`.
StageSplit parse_stage_split(const std::string& text, int stages, int64_t num_layers);

// What one pipeline stage costs per unit: a layer, and the edges the first
// (embedding) and last (final norm and LM head) stages also hold.
struct StageCosts {
  double layer = 1, head = 0, embedding = 0;
};

// The default split. Among the splits whose slowest stage is predicted within
// 10% of the fastest split's (`time`), the one whose fullest rank holds the
// least (`memory`, e.g. weight bytes): what fits decides what runs at all,
// and a 10% slower slowest stage is less than a pipeline's bubble. The first
// and last stages' counts are searched; the layers between are spread evenly.
// Needs stages <= num_layers.
StageSplit balanced_stage_split(int64_t num_layers, int stages, const StageCosts& time,
                                const StageCosts& memory);

// Prefill micro-batches: with at least `m` sequences, m groups of sequences
// (sequence s in group s mod m, so each group spans the whole slot range and
// batch-sharded layouts stay balanced); with fewer, every prompt is cut into
// m chunks of consecutive tokens and micro-batch k holds chunk k of each
// prompt (empty chunks are dropped), so a batch of one still pipelines.
std::vector<std::vector<Segment>> prefill_micro_batches(const std::vector<int64_t>& prompt_lengths,
                                                        int m);
// Decode groups: min(m, batch) groups of sequences, sequence s in group s mod groups.
std::vector<std::vector<int>> decode_groups(int batch, int m);

// What flows from stage to stage: a control header, then (for a batch) the
// segments and this rank's shard of the residual stream.
enum class StageMessageKind : int32_t { kBatch = 1, kEndOfPrefill = 2, kDone = 3, kTokens = 4 };
struct StageHeader {
  StageMessageKind kind = StageMessageKind::kBatch;
  int32_t phase = 0;   // Phase of a batch (0 prefill, 1 decode)
  int32_t step = 0;    // prefill micro-batch index, or decode step
  int32_t count = 0;   // segments of a batch, tokens of a kTokens message
  int64_t floats = 0;  // residual floats that follow
};

// A token sampled on the last stage, travelling back to the first.
struct SampledToken {
  int32_t sequence = 0, token = 0;
  int32_t finished = 0;  // the sequence ends with this token (stop id or length)
};

}  // namespace shardlm
