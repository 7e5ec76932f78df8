// The host/device arithmetic of kernels/math.hpp on the CPU: the sampling
// exp and candidate order, RoPE scaling against Hugging Face's formulas
// written out here, and int8 dequantisation against the CPU kernels.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.hpp"
#include "kernels/math.hpp"
#include "models/rope.hpp"

using namespace shardlm;

namespace {

// Distance in units in the last place between two finite doubles of one sign.
int64_t ulps_apart(double a, double b) {
  int64_t ia, ib;
  std::memcpy(&ia, &a, sizeof a);
  std::memcpy(&ib, &b, sizeof b);
  return ia > ib ? ia - ib : ib - ia;
}

}  // namespace

TEST_CASE("sampling_exp is within 1 ulp of exp and exact where exp is", "[math][sampling]") {
  CHECK(math::sampling_exp(0.0) == 1.0);
  CHECK(math::sampling_exp(-0.0) == 1.0);
  CHECK(math::sampling_exp(-std::numeric_limits<double>::infinity()) == 0.0);
  CHECK(std::isinf(math::sampling_exp(std::numeric_limits<double>::infinity())));
  CHECK(std::isnan(math::sampling_exp(std::nan(""))));
  CHECK(math::sampling_exp(-800.0) == 0.0);
  CHECK(std::isinf(math::sampling_exp(710.0)));
  // 2^k for integer multiples of ln 2 rounded: close to the power of two.
  CHECK(ulps_apart(math::sampling_exp(std::log(0.5)), 0.5) <= 1);

  std::mt19937_64 rng(11);
  int64_t worst = 0;
  // The sampling range (x <= 0, mostly small) densely, the rest sparsely.
  std::uniform_real_distribution<double> small(-40.0, 0.0), wide(-708.0, 709.0);
  for (int i = 0; i < 200000; ++i) {
    const double x = i % 4 == 3 ? wide(rng) : small(rng);
    const double want = std::exp(x);
    const int64_t apart = ulps_apart(math::sampling_exp(x), want);
    worst = std::max(worst, apart);
    if (apart > 1) FAIL_CHECK("exp(" << x << "): " << apart << " ulps from std::exp");
  }
  INFO("largest distance from std::exp: " << worst << " ulp");
  // Subnormal results: one rounding of the scaled value, so within one
  // subnormal step (2^-1074) of the correctly rounded result.
  for (double x = -745.0; x < -708.5; x += 0.37) {
    const double got = math::sampling_exp(x), want = std::exp(x);
    CHECK(std::abs(got - want) <= std::max(std::ldexp(1.0, -1074), want * 2.3e-16));
  }
}

TEST_CASE("the sort key orders logits as float comparison does", "[math][sampling]") {
  std::vector<float> values = {0.0f,
                               -0.0f,
                               1.0f,
                               -1.0f,
                               std::numeric_limits<float>::infinity(),
                               -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::denorm_min(),
                               -std::numeric_limits<float>::denorm_min(),
                               std::numeric_limits<float>::max(),
                               std::numeric_limits<float>::lowest(),
                               std::numeric_limits<float>::min(),
                               -std::numeric_limits<float>::min()};
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 8.f);
  for (int i = 0; i < 300; ++i) values.push_back(normal(rng));
  for (float a : values)
    for (float b : values) {
      const uint32_t ka = math::sampling_logit_key(a), kb = math::sampling_logit_key(b);
      REQUIRE((ka < kb) == (a < b));
      REQUIRE((ka == kb) == (a == b));
    }
  // The candidate order: larger first, ties to the lower id.
  CHECK(math::sampling_better(2.f, 7, 1.f, 3));
  CHECK(math::sampling_better(1.f, 3, 1.f, 7));
  CHECK_FALSE(math::sampling_better(1.f, 7, 1.f, 3));
  CHECK(math::sampling_better(0.f, 2, -0.f, 5));
  CHECK_FALSE(math::sampling_better(-0.f, 5, 0.f, 2));
}

TEST_CASE("sorting the 64-bit keys descending gives the CPU's candidate order",
          "[math][sampling]") {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.f, 2.f);
  for (const int vocab : {2, 1000, 151936}) {
    std::vector<float> logits(static_cast<size_t>(vocab));
    // A grid of 0.5 makes ties common; -0, +0 and -inf appear too.
    for (float& l : logits) l = std::round(normal(rng) * 2.f) / 2.f;
    logits[size_t(vocab / 2)] = -0.0f;
    logits[0] = -std::numeric_limits<float>::infinity();
    const int bits = std::max(1, int(std::bit_width(uint64_t(vocab - 1))));
    std::vector<uint64_t> keys;
    for (int32_t i = 0; i < vocab; ++i) {
      keys.push_back(math::sampling_sort_key(logits[size_t(i)], i, bits));
      REQUIRE(math::sampling_sort_key_id(keys.back(), bits) == i);
    }
    std::sort(keys.begin(), keys.end(), std::greater<>());
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return math::sampling_better(logits[size_t(a)], a, logits[size_t(b)], b);
    });
    for (size_t i = 0; i < order.size(); ++i)
      REQUIRE(math::sampling_sort_key_id(keys[i], bits) == order[i]);
  }
}

namespace {

ModelConfig rope_config(RopeType type) {
  ModelConfig c;
  c.head_dim = 128;
  c.max_position_embeddings = 8192;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = type;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  return c;
}

double unscaled(int i, const ModelConfig& c, double base) {
  return std::pow(base, -2.0 * i / double(c.head_dim));
}

}  // namespace

TEST_CASE("RoPE scaling follows Hugging Face's formulas", "[math][rope]") {
  const int half = 64;
  SECTION("default and linear") {
    const ModelConfig d = rope_config(RopeType::kDefault), l = rope_config(RopeType::kLinear);
    const std::vector<double> fd = rope_inv_freq(d, 10), fl = rope_inv_freq(l, 10);
    for (int i = 0; i < half; ++i) {
      CHECK(fd[size_t(i)] == Approx(unscaled(i, d, d.rope_theta)).epsilon(1e-15));
      CHECK(fl[size_t(i)] == Approx(unscaled(i, d, d.rope_theta) / 8.0).epsilon(1e-15));
    }
    CHECK(fd[0] == 1.0);
  }
  SECTION("dynamic NTK grows the base past the trained context only") {
    const ModelConfig c = rope_config(RopeType::kDynamic);
    const std::vector<double> within = rope_inv_freq(c, 8192), past = rope_inv_freq(c, 16384);
    // base' = theta * (factor * len / max - (factor - 1))^(d / (d - 2)) = theta * 9^(128/126)
    const double base = c.rope_theta * std::pow(9.0, 128.0 / 126.0);
    for (int i = 0; i < half; ++i) {
      CHECK(within[size_t(i)] == Approx(unscaled(i, c, c.rope_theta)).epsilon(1e-15));
      CHECK(past[size_t(i)] == Approx(unscaled(i, c, base)).epsilon(1e-14));
    }
  }
  SECTION("llama3: long wavelengths interpolated, short kept, a smooth blend between") {
    ModelConfig c = rope_config(RopeType::kLlama3);
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    const std::vector<double> f = rope_inv_freq(c, 10);
    int interpolated = 0, kept = 0, blended = 0;
    for (int i = 0; i < half; ++i) {
      const double f0 = unscaled(i, c, c.rope_theta), wavelen = 2 * std::numbers::pi / f0;
      double want;
      if (wavelen < 8192.0 / 4.0) {  // shorter than context / high_freq_factor
        want = f0;
        ++kept;
      } else if (wavelen > 8192.0) {  // longer than context / low_freq_factor
        want = f0 / 8.0;
        ++interpolated;
      } else {
        const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
        want = (1 - smooth) * f0 / 8.0 + smooth * f0;
        ++blended;
      }
      CHECK(f[size_t(i)] == Approx(want).epsilon(1e-14));
    }
    CHECK(interpolated > 0);
    CHECK(kept > 0);
    CHECK(blended > 0);
  }
  SECTION("yarn: a linear ramp over the correction range") {
    ModelConfig c = rope_config(RopeType::kYarn);
    c.rope_theta = 10000.0;
    c.rope_scaling.original_max_position_embeddings = 4096;
    c.rope_scaling.factor = 4.0;
    for (const bool truncate : {true, false}) {
      c.rope_scaling.truncate = truncate;
      // dim(r) = d ln(L / (2 pi r)) / (2 ln theta): beta_fast 32 gives
      // 128 ln(4096 / 64 pi) / (2 ln 10^4) = 20.944..., beta_slow 1 gives 45.027...
      double low = 128 * std::log(4096 / (32 * 2 * std::numbers::pi)) / (2 * std::log(1e4));
      double high = 128 * std::log(4096 / (1 * 2 * std::numbers::pi)) / (2 * std::log(1e4));
      CHECK(low == Approx(20.9445).margin(1e-3));
      CHECK(high == Approx(45.0269).margin(1e-3));
      if (truncate) {
        low = 20;
        high = 46;
      }
      const std::vector<double> f = rope_inv_freq(c, 10);
      for (int i = 0; i < half; ++i) {
        const double f0 = unscaled(i, c, c.rope_theta);
        const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
        CHECK(f[size_t(i)] == Approx(f0 / 4.0 * ramp + f0 * (1 - ramp)).epsilon(1e-14));
      }
      CHECK(f[0] == 1.0);                                                          // extrapolated
      CHECK(f[63] == Approx(unscaled(63, c, c.rope_theta) / 4.0).epsilon(1e-15));  // interpolated
    }
  }
}

TEST_CASE("int8 dequantisation is q * scale, rounded once, as the CPU kernels widen",
          "[math][int8]") {
  std::vector<int8_t> q;
  for (int v = -127; v <= 127; ++v) q.push_back(int8_t(v));
  const int64_t k = int64_t(q.size());  // 255 columns: whole vectors and a tail
  const std::vector<float> scales = {0.0f, 1.0f, 0.0078125f, 3.3e-3f, 1.7e-5f, 0.1f / 127.0f};
  for (float scale : scales) {
    for (size_t i = 0; i < q.size(); ++i) {
      // The exact product of an 8-bit and a 24-bit significand fits a double.
      CHECK(math::dequantize_int8(q[i], scale) == float(double(q[i]) * double(scale)));
    }
    std::vector<float> widened(q.size());
    const cpu::WeightView view{q.data(), DType::I8, &scale, 1, k};
    cpu::widen_rows(view, 0, 1, widened.data());
    for (size_t i = 0; i < q.size(); ++i) REQUIRE(widened[i] == math::dequantize_int8(q[i], scale));
  }
  // Quantising then dequantising a row's largest value gives it back within
  // one rounding of the scale.
  const float max_abs = 0.731f, scale = math::int8_scale(max_abs);
  CHECK(math::quantize_int8(max_abs, scale) == 127);
  CHECK(math::dequantize_int8(127, scale) == Approx(max_abs).epsilon(1e-6));
}
