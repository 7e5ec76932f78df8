#include "runtime/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace shardlm {

double sampling_draw(std::mt19937_64& rng) {
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& params,
                     std::mt19937_64& rng) {
  return sample_token_from_draw(logits, vocab, params,
                                params.temperature <= 0.f ? 0.0 : sampling_draw(rng));
}

int32_t sample_token_from_draw(const float* logits, int64_t vocab, const SamplingParams& params,
                               double uniform) {
  if (params.temperature <= 0.f) return int32_t(std::max_element(logits, logits + vocab) - logits);

  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int64_t keep = vocab;
  if (params.top_k > 0 && params.top_k < vocab) {
    keep = params.top_k;
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), better);
  } else {
    std::sort(order.begin(), order.end(), better);
  }
  // Softmax over the kept candidates, largest first.
  std::vector<double> probs(static_cast<size_t>(keep));
  const double top = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[size_t(i)] = std::exp((double(logits[order[size_t(i)]]) - top) / params.temperature);
    total += probs[size_t(i)];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  if (params.top_p < 1.f) {
    double cumulative = 0;
    for (int64_t i = 0; i < keep; ++i) {
      cumulative += probs[size_t(i)] / total;
      if (cumulative >= params.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  // (b - a) * canonical + a, as uniform_real_distribution(0, total) draws.
  double draw = total * uniform;
  for (int64_t i = 0; i < keep; ++i) {
    draw -= probs[size_t(i)];
    if (draw < 0) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

}  // namespace shardlm
