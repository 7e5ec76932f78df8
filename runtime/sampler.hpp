#pragma once
// Token sampling from one row of logits: greedy at temperature 0, otherwise
// temperature, then top-k, then top-p (nucleus) filtering, then a draw.
#include <cstdint>
#include <random>

namespace shardlm {

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy
  int top_k = 0;            // 0: no limit
  float top_p = 1.f;        // 1: no limit
  uint64_t seed = 0;
};

// Ties go to the lowest token id, so top_k = 1 always equals greedy.
int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params,
                     std::mt19937_64& rng);

}  // namespace shardlm
