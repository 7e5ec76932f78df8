#pragma once
// Scalar math shared by every backend: compiled for host and device alike, so
// the CPU tests check the same arithmetic the GPU kernels run.
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SHARDLM_HD __host__ __device__
#else
#define SHARDLM_HD
#endif

namespace shardlm::math {

SHARDLM_HD inline float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

SHARDLM_HD inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

SHARDLM_HD inline float bf16_to_float(uint16_t h) {
  return bits_to_float(uint32_t(h) << 16);
}

// Round to nearest even, as PyTorch does; NaN stays NaN.
SHARDLM_HD inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

// IEEE binary16 <-> binary32 without relying on compiler half support.
SHARDLM_HD inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);
    // Subnormal: value = mantissa * 2^-24.
    float value = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -value : value;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

SHARDLM_HD inline uint16_t float_to_f16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return uint16_t(sign | 0x7e00u);   // NaN
  if (abs_bits >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // overflow -> inf
  if (abs_bits < 0x38800000u) {                                  // subnormal or zero
    const float magnitude = bits_to_float(abs_bits);
    return uint16_t(sign | uint32_t(lrintf(magnitude * 16777216.0f)));  // / 2^-24
  }
  uint32_t rounded = abs_bits + 0xfffu + ((abs_bits >> 13) & 1u);
  return uint16_t(sign | ((rounded - (112u << 23)) >> 13));
}

// Rotary embedding frequency of pair i (0 <= i < head_dim/2), as Hugging Face
// Llama defines it: theta^(-2i/head_dim).
SHARDLM_HD inline double rope_inv_freq(int i, int head_dim, double theta) {
  return pow(theta, -2.0 * i / head_dim);
}

// Rotate-half RoPE on one head vector: pairs (x[i], x[i + d/2]).
SHARDLM_HD inline void rope_rotate_half(float* x, const float* cos_row, const float* sin_row,
                                        int head_dim) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos_row[i] - b * sin_row[i];
    x[i + half] = b * cos_row[i] + a * sin_row[i];
  }
}

// Int8 weight-only quantization, symmetric per output channel (row): the
// scale maps the row's largest magnitude to 127, values round to nearest
// (ties to even, as lrintf does) and clamp to [-127, 127] so -128 never
// appears and negation stays exact. An all-zero row gets scale 0.
SHARDLM_HD inline float int8_scale(float max_abs) {
  return max_abs / 127.0f;
}

SHARDLM_HD inline int8_t quantize_int8(float x, float scale) {
  if (!(scale > 0.0f)) return 0;
  const float q = rintf(x / scale);
  return int8_t(q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q));
}

SHARDLM_HD inline float silu(float x) {
  return x / (1.0f + expf(-x));
}

// Online softmax (flash attention): attention over a set of keys is carried
// as a partial (max, sum, acc): the largest score seen, the sum of
// exp(score - max) and acc[d] = sum of exp(score - max) · value[d]. The
// partials of two disjoint key sets merge into the partial of their union by
// rescaling both to the larger max; softmax · V is then acc / sum. A partial
// that saw no key has max -inf (sum 0, acc 0) and changes nothing. `acc`
// holds `n` of the dims (a GPU thread merges only the dims it holds; max and
// sum are the same for all of them). The CPU's attention_merge and the CUDA
// flash-decoding merge both call this, so one rule combines every split.
SHARDLM_HD inline void softmax_merge(float& max, float& sum, float* acc, float from_max,
                                     float from_sum, const float* from_acc, int64_t n) {
  if (from_max == -INFINITY) return;  // saw no key
  const float new_max = max < from_max ? from_max : max;
  const float into_scale = max == -INFINITY ? 0.0f : expf(max - new_max);
  const float from_scale = expf(from_max - new_max);
  for (int64_t d = 0; d < n; ++d) acc[d] = acc[d] * into_scale + from_acc[d] * from_scale;
  sum = sum * into_scale + from_sum * from_scale;
  max = new_max;
}

}  // namespace shardlm::math
