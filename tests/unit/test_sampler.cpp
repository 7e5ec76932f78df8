#include <catch2/catch.hpp>
#include <map>
#include <vector>

#include "runtime/sampler.hpp"

using namespace shardlm;

TEST_CASE("greedy and top-k 1 pick the largest logit, ties to the lowest id") {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  std::mt19937_64 rng(1);
  CHECK(sample_token(logits.data(), 4, {0.f, 0, 1.f, 0}, rng) == 1);
  CHECK(sample_token(logits.data(), 4, {1.5f, 1, 1.f, 0}, rng) == 1);
}

TEST_CASE("sampling follows the softmax of logits / temperature") {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};  // probabilities 1/4, 3/4
  std::mt19937_64 rng(42);
  int ones = 0;
  const int draws = 20000;
  for (int i = 0; i < draws; ++i) ones += sample_token(logits.data(), 2, {1.f, 0, 1.f, 0}, rng);
  CHECK(double(ones) / draws == Approx(0.75).margin(0.015));
}

TEST_CASE("top-p keeps the smallest set reaching p") {
  // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::mt19937_64 rng(3);
  std::map<int, int> counts;
  for (int i = 0; i < 5000; ++i) ++counts[sample_token(logits.data(), 3, {1.f, 0, 0.7f, 0}, rng)];
  CHECK(counts[2] == 0);
  CHECK(double(counts[0]) / 5000 == Approx(0.625).margin(0.03));
}

TEST_CASE("the same seed gives the same draws") {
  const std::vector<float> logits = {0.3f, 0.2f, 0.1f, 0.0f, -0.1f};
  std::mt19937_64 a(9), b(9);
  for (int i = 0; i < 100; ++i)
    CHECK(sample_token(logits.data(), 5, {0.9f, 0, 1.f, 9}, a) ==
          sample_token(logits.data(), 5, {0.9f, 0, 1.f, 9}, b));
}
