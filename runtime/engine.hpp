#pragma once
// The engine: prefill over the prompts of a batch, then decode step by step
// with a KV cache, sampling each sequence's next token until it stops. Every
// rank of a tensor-parallel job runs the same engine on its shards; each
// phase runs in its own layout, and all ranks sample the same tokens from
// the same (all-gathered) logits.
#include <cstdint>
#include <functional>
#include <vector>

#include "models/decoder_block.hpp"
#include "models/model_config.hpp"
#include "models/model_weights.hpp"
#include "runtime/backend.hpp"
#include "runtime/parallel.hpp"
#include "runtime/sampler.hpp"

namespace shardlm {

struct GenerationRequest {
  std::vector<std::vector<int32_t>> prompts;  // one per sequence, token ids
  int max_new_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;    // a sequence ends right after emitting one
  bool keep_prompt_logits = false;  // logits at every prompt position of sequence 0
  bool keep_step_logits = false;    // logits each token of sequence 0 was sampled from
  // Called with (sequence, token) as each token is sampled, in order, so a
  // caller can stream text while decoding goes on.
  std::function<void(int, int32_t)> on_token;
};

struct GenerationResult {
  std::vector<std::vector<int32_t>> generated;  // new tokens only, stop id included
  int64_t vocab_size = 0;
  std::vector<float> prompt_logits;  // [prompt 0 length, vocab]
  std::vector<float> step_logits;    // [tokens generated for sequence 0, vocab]
  int64_t prompt_tokens = 0;         // all sequences
  int64_t decode_tokens = 0;         // tokens produced by decode steps, all sequences
  double prefill_s = 0;              // the prefill forward pass
  double ttft_s = 0;                 // start to first tokens sampled
  double decode_s = 0;               // all decode steps
  std::vector<double> step_s;        // each decode step
};

class Engine {
 public:
  // `prefill` and `decode` are the layouts of the two phases on ctx's mesh;
  // `weights` were loaded as they store them.
  Engine(Backend& backend, ParallelContext& ctx, ModelConfig config, const Layout& prefill,
         const Layout& decode, ModelWeights weights);
  // Checks ids and lengths (throws DataError / UsageError), then generates.
  GenerationResult generate(const GenerationRequest& request);
  const ModelConfig& config() const { return config_; }

 private:
  // Runs the batch `tokens` (every sequence's, in slot order), and returns
  // logits of the rows in `logit_rows`, [logit_rows.size(), vocab] row-major.
  std::vector<float> forward(Phase phase, const std::vector<int32_t>& tokens,
                             const BatchLayout& batch, const std::vector<int32_t>& logit_rows);
  std::vector<KVCacheLayer> allocate_cache(const PhaseAxes& axes, int64_t capacity);
  // Copies a prefill cache in the prefill layout's sharding into the decode cache.
  void reshard_cache(const KVCacheLayer& from, const KVCacheLayer& to);

  Backend& backend_;
  ParallelContext& ctx_;
  ShardOps ops_;
  ModelConfig config_;
  PhaseAxes prefill_axes_, decode_axes_;
  ModelWeights weights_;
  RopeTables rope_;
  int64_t num_slots_ = 0;
  std::vector<KVCacheLayer> cache_;          // in the decode layout's sharding
  std::vector<KVCacheLayer> prefill_cache_;  // empty when the prefill layout shares it
};

}  // namespace shardlm
