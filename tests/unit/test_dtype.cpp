#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "kernels/math.hpp"
#include "runtime/dtype.hpp"

using namespace shardlm;

TEST_CASE("bf16 round trip is exact for bf16 values and rounds to nearest even") {
  // 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  CHECK(math::bf16_to_float(math::float_to_bf16(1.0f + std::ldexp(1.0f, -8))) == 1.0f);
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
  CHECK(math::bf16_to_float(math::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))) ==
        1.0f + std::ldexp(1.0f, -6));
  for (float v : {0.0f, -2.5f, 3.140625f, 1e-20f, -65280.0f})
    CHECK(math::bf16_to_float(math::float_to_bf16(v)) == Approx(v).epsilon(1.0 / 128));
}

TEST_CASE("f16 conversion matches IEEE binary16 on normal, subnormal and overflow values") {
  CHECK(math::float_to_f16(1.0f) == 0x3c00);
  CHECK(math::float_to_f16(-2.0f) == 0xc000);
  CHECK(math::float_to_f16(65504.0f) == 0x7bff);
  CHECK(math::float_to_f16(1e6f) == 0x7c00);                   // overflow to inf
  CHECK(math::float_to_f16(std::ldexp(1.0f, -24)) == 0x0001);  // smallest subnormal
  CHECK(math::f16_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(math::f16_to_float(0x3555) == Approx(0.33325195f));
  for (uint32_t h = 0; h < 0x7c00; h += 7)  // every finite positive half, sampled
    CHECK(math::float_to_f16(math::f16_to_float(uint16_t(h))) == h);
}

TEST_CASE("convert_to_f32 and convert_from_f32 agree for every float dtype") {
  std::vector<float> values = {0.5f, -1.25f, 3.0f, 1024.0f};
  for (DType d : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<char> buffer(values.size() * dtype_size(d));
    convert_from_f32(values.data(), buffer.data(), d, values.size());
    std::vector<float> back(values.size());
    convert_to_f32(buffer.data(), d, back.data(), values.size());
    CHECK(back == values);  // all exactly representable in each dtype
  }
}
