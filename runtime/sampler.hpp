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
// `uniform` in [0, 1) is the draw (unused when greedy): the same logits and
// draw give the same token on every backend. The arithmetic (candidate
// order, weights exp((logit - top) / T) in double, the sequential sums of
// top-p and the walk) is kernels/math.hpp's, which the CUDA sampler runs too.
int32_t sample_token_from_draw(const float* logits, int64_t vocab, const SamplingParams& params,
                               double uniform);
// The draw for one token of a sequence's generator.
double sampling_draw(std::mt19937_64& rng);
// sample_token_from_draw with the next draw of `rng`.
int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params,
                     std::mt19937_64& rng);

}  // namespace shardlm
