// math::softmax_merge, the one rule that combines online-softmax partials on
// the CPU (attention_merge) and the GPU (flash-decoding): whatever way the
// keys are split, merging the partials of the pieces must give softmax · V
// over all of them, here against a plain double-precision softmax.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/math.hpp"

using namespace shardlm;

namespace {

constexpr int kDims = 5;

struct Partial {
  float max = -INFINITY, sum = 0.0f;
  float acc[kDims] = {};
};

// The partial of keys [begin, end) as a kernel computes it: F32 exp of the
// score minus the range's own max, F32 sums.
Partial partial_of(const std::vector<float>& scores, const std::vector<float>& values, size_t begin,
                   size_t end) {
  Partial p;
  for (size_t i = begin; i < end; ++i) p.max = std::max(p.max, scores[i]);
  for (size_t i = begin; i < end; ++i) {
    const float weight = std::exp(scores[i] - p.max);
    p.sum += weight;
    for (int d = 0; d < kDims; ++d) p.acc[d] += weight * values[i * kDims + size_t(d)];
  }
  return p;
}

void merge(Partial& into, const Partial& from) {
  math::softmax_merge(into.max, into.sum, into.acc, from.max, from.sum, from.acc, kDims);
}

// softmax(scores) · values in double precision.
std::vector<double> reference(const std::vector<float>& scores, const std::vector<float>& values) {
  const double top = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  std::vector<double> out(kDims, 0.0);
  for (size_t i = 0; i < scores.size(); ++i) {
    const double weight = std::exp(double(scores[i]) - top);
    sum += weight;
    for (int d = 0; d < kDims; ++d) out[size_t(d)] += weight * values[i * kDims + size_t(d)];
  }
  for (double& x : out) x /= sum;
  return out;
}

}  // namespace

TEST_CASE("softmax_merge of the partials of any split equals the softmax over all keys",
          "[softmax_merge]") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t keys = 1 + rng() % 300;
    // Scores spread wide enough that some ranges' weights underflow beside
    // others' (exp(-60) is below F32's 2^-24 relative to 1) and some are peaked.
    const float spread = trial % 3 == 0 ? 30.0f : 3.0f;
    std::normal_distribution<float> score_dist(0.0f, spread), value_dist(0.0f, 1.0f);
    std::vector<float> scores(keys), values(keys * kDims);
    for (float& s : scores) s = score_dist(rng);
    for (float& v : values) v = value_dist(rng);
    // Cut points in [0, keys], repeats allowed: empty ranges occur.
    std::vector<size_t> cuts = {0, keys};
    for (size_t c = rng() % 9; c > 0; --c) cuts.push_back(rng() % (keys + 1));
    std::sort(cuts.begin(), cuts.end());
    std::vector<Partial> parts;
    for (size_t c = 0; c + 1 < cuts.size(); ++c)
      parts.push_back(partial_of(scores, values, cuts[c], cuts[c + 1]));

    // In order (the CPU merges splits left to right), in reverse, and as a
    // tree of pairs (a GPU block merges its warps, then the blocks merge).
    Partial forward, backward;
    for (const Partial& p : parts) merge(forward, p);
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) merge(backward, *it);
    std::vector<Partial> level = parts;
    while (level.size() > 1) {
      std::vector<Partial> next;
      for (size_t i = 0; i < level.size(); i += 2) {
        next.push_back(level[i]);
        if (i + 1 < level.size()) merge(next.back(), level[i + 1]);
      }
      level = next;
    }
    const Partial tree = level[0];

    // Bound: every weight exp(s - max) and every merge scale carries a
    // relative error of about 2^-24 (F32 exp, correctly rounded to within an
    // ulp or two); a key's weight passes through at most one range exp and
    // log2(9) + 1 < 5 merge rescalings, and the F32 sums of up to 300 terms
    // add at most about 300 · 2^-24 relative to the sum of |terms|. The
    // output acc / sum is a weighted mean of values of magnitude below
    // about 5, so |error| <= (5 + 300 + 5) · 2^-24 · 5 < 1e-4; 2e-5 holds
    // in practice with random rounding, and 1e-4 is the derived bound.
    const auto want = reference(scores, values);
    for (const Partial* got : std::vector<const Partial*>{&forward, &backward, &tree}) {
      REQUIRE(got->max == *std::max_element(scores.begin(), scores.end()));
      for (int d = 0; d < kDims; ++d) {
        INFO("trial " << trial << " keys " << keys << " ranges " << parts.size() << " dim " << d);
        REQUIRE(got->acc[d] / got->sum == Approx(want[size_t(d)]).margin(1e-4));
      }
    }
  }
}

TEST_CASE("softmax_merge: a partial that saw no key changes nothing", "[softmax_merge]") {
  Partial state;
  state.max = 1.5f;
  state.sum = 2.25f;
  for (int d = 0; d < kDims; ++d) state.acc[d] = float(d) - 1.75f;
  const Partial before = state;
  merge(state, Partial{});
  REQUIRE(state.max == before.max);
  REQUIRE(state.sum == before.sum);
  for (int d = 0; d < kDims; ++d) REQUIRE(state.acc[d] == before.acc[d]);

  // Into an empty state, a partial is copied exactly (scale exp(0) = 1, the
  // empty side's scale 0).
  Partial empty;
  merge(empty, before);
  REQUIRE(empty.max == before.max);
  REQUIRE(empty.sum == before.sum);
  for (int d = 0; d < kDims; ++d) REQUIRE(empty.acc[d] == before.acc[d]);

  // Two empty partials stay empty (no NaN from -inf - -inf).
  Partial a, b;
  merge(a, b);
  REQUIRE(a.max == -INFINITY);
  REQUIRE(a.sum == 0.0f);
  for (int d = 0; d < kDims; ++d) REQUIRE(a.acc[d] == 0.0f);
}
