#include "runtime/sampler.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/math.hpp"

namespace shardlm {

double sampling_draw(std::mt19937_64& rng) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params,
                     std::mt19937_64& rng) {
  return sample_token_from_draw(logits, vocab, params,
                                params.temperature <= 0.f ? 0.0 : sampling_draw(rng));
}

// The arithmetic is kernels/math.hpp's sampling functions, which the GPU
// sampler (kernels/cuda/sampling.cu) runs too: same order, same operations.
int32_t sample_token_from_draw(const float* logits, int64_t vocab, const SamplingParams& params,
                               double uniform) {
  auto better = [&](int32_t a, int32_t b) {
    return math::sampling_better(logits[a], a, logits[b], b);
  };
  if (params.temperature <= 0.f) {
    int32_t best = 0;
    for (int32_t i = 1; i < int32_t(vocab); ++i)
      if (better(i, best)) best = i;
    return best;
  }

  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = vocab;
  if (params.top_k > 0 && params.top_k < vocab) {
    keep = params.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  } else {
    std::sort(order.begin(), order.end(), better);
  }
  // Softmax over the kept candidates, largest first.
  std::vector<double> weights(static_cast<size_t>(keep));
  const float top = logits[order[0]];
  for (int64_t i = 0; i < keep; ++i)
    weights[size_t(i)] = math::sampling_weight(logits[order[size_t(i)]], top, params.temperature);
  double total = 0;
  math::sampling_accumulate(weights.data(), keep, total);
  // Nucleus: the smallest prefix whose probability reaches top_p, and its weight.
  if (params.top_p < 1.f) {
    double cumulative = 0, prefix = 0;
    const int64_t last =
        math::sampling_nucleus_scan(weights.data(), keep, total, params.top_p, cumulative, prefix);
    if (last >= 0) keep = last + 1;
    total = prefix;
  }
  double draw = math::sampling_walk_start(total, uniform);
  const int64_t chosen = math::sampling_walk_scan(weights.data(), keep, draw);
  return order[size_t(chosen >= 0 ? chosen : keep - 1)];
}

}  // namespace shardlm
