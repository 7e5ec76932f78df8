#pragma once
// Memory before it is spent: before `generate` loads anything, each rank
// prices what it will hold — its shard of the weights, the KV cache for
// prompt + new tokens in the chosen layout and batch, the live activations
// (the planner's own accounting, partitioning/cost_model.hpp) and the run's
// tables (RoPE rows, the logits kept for --dump-*) — and compares it with its
// share of the memory of its node: `--memory-limit` when given, else what
// the machine has free (MemAvailable, or the cgroup's limit when lower).
#include <cstdint>
#include <optional>
#include <string>

#include "launch/layout_choice.hpp"
#include "models/model_config.hpp"

namespace shardlm {

// "2GiB", "512 MiB", "1.5GB", "1000000" → bytes; UsageError naming `flag`.
double parse_bytes(const std::string& text, const char* flag);

struct MemoryBudget {
  double per_rank = 0;    // bytes one rank may hold
  std::string source;     // where the figure comes from, for the message
  int ranks_on_node = 1;  // the ranks sharing the node's memory
};

// `limit` (bytes, the flag's value) or the node's free memory, shared by the
// node's `ranks_on_node` ranks. Empty when neither is known.
std::optional<MemoryBudget> memory_budget(std::optional<double> limit, int ranks_on_node);

struct RunShape {
  Workload workload;  // batch, longest prompt, new tokens
  int ranks = 1;      // of the job
  bool keep_prompt_logits = false, keep_step_logits = false;
};

// Bytes one rank of the run will hold, as above.
double rank_memory_need(const ModelConfig& config, const LayoutChoice& choice, const RunShape& run);

// DataError, in one line, when a rank's need exceeds the budget: the numbers,
// and which of --weights int8, more ranks, a smaller --batch or fewer
// --max-new-tokens would make it fit.
void check_rank_memory(const ModelConfig& config, const LayoutChoice& choice, const RunShape& run,
                       const MemoryBudget& budget);

}  // namespace shardlm
