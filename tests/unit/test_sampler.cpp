#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "runtime/sampler.hpp"

using namespace shardlm;

TEST_CASE("greedy and top-k 1 pick the largest logit, ties to the lowest id", "[sampler]") {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  std::mt19937_64 rng(1);
  CHECK(sample_token(logits.data(), 4, {0.f, 0, 1.f, 0}, rng) == 1);
  CHECK(sample_token(logits.data(), 4, {1.5f, 1, 1.f, 0}, rng) == 1);
}

TEST_CASE("sampling follows the softmax of logits / temperature", "[sampler]") {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // probabilities 1/4, 3/4
  std::mt19937_64 rng(42);
  int ones = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) ones += sample_token(logits.data(), 2, {1.f, 0, 1.f, 0}, rng);
  CHECK(double(ones) / draws == Approx(0.75).margin(0.015));
}

TEST_CASE("top-p keeps the smallest set reaching p", "[sampler]") {
  // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::mt19937_64 rng(3);
  std::map<int, int> counts;
  for (int i = 0; i < 5000; ++i) ++counts[sample_token(logits.data(), 3, {1.f, 0, 0.7f, 0}, rng)];
  CHECK(counts[2] == 0);
  CHECK(double(counts[0]) / 5000 == Approx(0.625).margin(0.03));
}

TEST_CASE("the same seed gives the same draws", "[sampler]") {
  const std::vector<float> logits = {0.3f, 0.2f, 0.1f, 0.0f, -0.1f};
  std::mt19937_64 a(9), b(9);
  for (int i = 0; i < 100; ++i)
    CHECK(sample_token(logits.data(), 5, {0.9f, 0, 1.f, 9}, a) ==
          sample_token(logits.data(), 5, {0.9f, 0, 1.f, 9}, b));
}

namespace {

// The rule as sample_token implemented it before its arithmetic moved to
// kernels/math.hpp (std::exp, std::max_element): the new code must pick the
// same tokens from the same generator.
int32_t sample_token_before(const float* logits, int64_t vocab, const SamplingParams& params,
                            std::mt19937_64& rng) {
  if (params.temperature <= 0.f) return int32_t(std::max_element(logits, logits + vocab) - logits);
  const double uniform = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
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
  std::vector<double> probs(static_cast<size_t>(keep));
  const double top = logits[order[0]];
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) {
    probs[size_t(i)] = std::exp((double(logits[order[size_t(i)]]) - top) / params.temperature);
    total += probs[size_t(i)];
  }
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
  double draw = total * uniform;
  for (int64_t i = 0; i < keep; ++i) {
    draw -= probs[size_t(i)];
    if (draw < 0) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

// Logits of `vocab` candidates; with `ties`, values on a coarse grid so that
// many candidates share a logit (and -0/+0 both appear).
std::vector<float> random_logits(std::mt19937_64& rng, int64_t vocab, float spread, bool ties) {
  std::normal_distribution<float> normal(0.f, spread);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& l : logits) {
    l = normal(rng);
    if (ties) l = std::round(l * 2.f) / 2.f;
  }
  return logits;
}

}  // namespace

TEST_CASE("sample_token picks what it picked before, for the same seed", "[sampler]") {
  std::mt19937_64 data(2024);
  int compared = 0;
  for (const int64_t vocab : {2, 7, 1000, 32000}) {
    for (const bool ties : {false, true}) {
      const std::vector<float> logits = random_logits(data, vocab, ties ? 2.f : 3.f, ties);
      for (const float temperature : {0.f, 0.7f, 1.3f})
        for (const int top_k : {0, 1, 40})
          for (const float top_p : {1.f, 0.9f, 0.5f}) {
            const SamplingParams params{temperature, top_k, top_p, 0};
            std::mt19937_64 now(uint64_t(vocab) * 31 + uint64_t(top_k)), before = now;
            for (int i = 0; i < (vocab > 1000 ? 3 : 20); ++i, ++compared)
              REQUIRE(sample_token(logits.data(), vocab, params, now) ==
                      sample_token_before(logits.data(), vocab, params, before));
          }
    }
  }
  CHECK(compared > 500);
}

TEST_CASE("sample_token is sample_token_from_draw of the generator's next draw", "[sampler]") {
  std::mt19937_64 data(7);
  const std::vector<float> logits = random_logits(data, 500, 2.f, false);
  const SamplingParams params{0.9f, 0, 0.95f, 0};
  std::mt19937_64 a(123), b(123);
  for (int i = 0; i < 50; ++i) {
    const double u = sampling_draw(b);
    CHECK(sample_token(logits.data(), 500, params, a) ==
          sample_token_from_draw(logits.data(), 500, params, u));
  }
  // Greedy takes no draw: the generators stay in step.
  CHECK(sample_token(logits.data(), 500, {0.f, 0, 1.f, 0}, a) ==
        sample_token_from_draw(logits.data(), 500, {0.f, 0, 1.f, 0}, 0.5));
  CHECK(a() == b());
}

TEST_CASE("the draw's ends pick the first and the last kept candidate", "[sampler]") {
  // Probabilities 1/2, 1/4, 1/4 (ids 2, 0, 1 in sampling order).
  const std::vector<float> logits = {0.f, 0.f, std::log(2.f)};
  const SamplingParams params{1.f, 0, 1.f, 0};
  const double last = 1.0 - std::ldexp(1.0, -53);
  CHECK(sample_token_from_draw(logits.data(), 3, params, 0.0) == 2);
  CHECK(sample_token_from_draw(logits.data(), 3, params, 0.49) == 2);
  CHECK(sample_token_from_draw(logits.data(), 3, params, 0.51) == 0);
  CHECK(sample_token_from_draw(logits.data(), 3, params, last) == 1);
  // top_p 0.5 keeps the first candidate alone: every draw picks it.
  CHECK(sample_token_from_draw(logits.data(), 3, {1.f, 0, 0.5f, 0}, last) == 2);
  // top_k 2 keeps ids 2 and 0 (the tie goes to the lower id).
  CHECK(sample_token_from_draw(logits.data(), 3, {1.f, 2, 1.f, 0}, last) == 0);
}
