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

// One rotate-half pair (x[i], x[i + d/2]) turned by the angle of cosine c
// and sine s (a GPU thread rotates one pair).
SHARDLM_HD inline void rope_rotate_pair(float& a, float& b, float c, float s) {
  const float a0 = a, b0 = b;
  a = a0 * c - b0 * s;
  b = b0 * c + a0 * s;
}

// Rotate-half RoPE on one head vector: pairs (x[i], x[i + d/2]).
SHARDLM_HD inline void rope_rotate_half(float* x, const float* cos_row, const float* sin_row,
                                        int head_dim) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) rope_rotate_pair(x[i], x[i + half], cos_row[i], sin_row[i]);
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

// ---------------------------------------------------------------------------
// Sampling, RoPE scaling and int8 dequantisation: the rules the CPU and the
// CUDA kernels share (runtime/sampler.cpp, models/rope.cpp, kernels/cpu and
// kernels/cuda/sampling.cu call these, so there is one definition of each).
//
// Bit-identical results across host and device: IEEE +, -, *, / and fma are
// correctly rounded on both, so a computation made only of them, in the same
// order, gives the same bits. Two things break that and are ruled out here:
// - library functions (exp, log, pow) differ by an ulp between glibc and
//   CUDA's libdevice, so the sampling weight uses sampling_exp below, built
//   from basic operations only;
// - contraction: GCC (-march=native, GNU dialect: -ffp-contract=fast) and
//   nvcc (--fmad=true) may fuse a product with a following add into one fma,
//   each compiler at places of its own choosing. Every multiply-add below is
//   an explicit fma, and a product that meets an add later goes through
//   mul_unfused.
// ---------------------------------------------------------------------------

// a * b rounded once, never fused into a later add or subtract.
SHARDLM_HD inline double mul_unfused(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  volatile double product = a * b;  // a volatile store cannot be fused away
  return product;
#endif
}

SHARDLM_HD inline double bits_to_double(uint64_t bits) {
  double d;
  memcpy(&d, &bits, sizeof d);
  return d;
}

// e^x from basic operations only, so that host and device agree bit for bit
// (see above); within about 1 ulp of the true value (degree-13 Taylor
// polynomial on |r| <= ln2/2, truncation error below 2^-57 relative).
// Subnormal results are rounded once; overflow gives +inf, NaN stays NaN.
SHARDLM_HD inline double sampling_exp(double x) {
  if (x != x) return x;
  if (x > 709.782712893384) return bits_to_double(0x7ff0000000000000ull);  // +inf
  if (x < -746.0) return 0.0;  // below half the smallest subnormal
  constexpr double kInvLn2 = 0x1.71547652b82fep+0;
  constexpr double kLn2Hi = 0x1.62e42fee00000p-1;  // 32 trailing zero bits: k * hi is exact
  constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
  const double k = rint(x * kInvLn2);
  double r = fma(-k, kLn2Hi, x);
  r = fma(-k, kLn2Lo, r);
  // 1/n! for n = 13 down to 2, correctly rounded.
  double p = 0x1.6124613a86d09p-33;
  p = fma(p, r, 0x1.1eed8eff8d898p-29);
  p = fma(p, r, 0x1.ae64567f544e4p-26);
  p = fma(p, r, 0x1.27e4fb7789f5cp-22);
  p = fma(p, r, 0x1.71de3a556c734p-19);
  p = fma(p, r, 0x1.a01a01a01a01ap-16);
  p = fma(p, r, 0x1.a01a01a01a01ap-13);
  p = fma(p, r, 0x1.6c16c16c16c17p-10);
  p = fma(p, r, 0x1.1111111111111p-7);
  p = fma(p, r, 0x1.5555555555555p-5);
  p = fma(p, r, 0x1.5555555555555p-3);
  p = fma(p, r, 0x1.0000000000000p-1);
  p = fma(p, r, 1.0);
  p = fma(p, r, 1.0);
  // p * 2^k; k in [-1076, 1024]. Scaling by a power of two is exact except
  // at the ends: below 2^-1022 the product goes through 2^(k+54) (exact)
  // then 2^-54 (the one rounding); 2^1024 is 2^1023 * 2.
  const int ki = int(k);
  if (ki < -1022)
    return mul_unfused(p * bits_to_double(uint64_t(ki + 54 + 1023) << 52),
                       bits_to_double(uint64_t(-54 + 1023) << 52));
  if (ki > 1023) return mul_unfused(p * bits_to_double(uint64_t(1023 + 1023) << 52), 2.0);
  return mul_unfused(p, bits_to_double(uint64_t(ki + 1023) << 52));
}

// --- Sampling (runtime/sampler.hpp states the rule) -------------------------

// Candidate order: a before b when its logit is larger, ties to the lower id
// (so top_k = 1 equals greedy). NaN logits are outside the rule.
SHARDLM_HD inline bool sampling_better(float logit_a, int32_t a, float logit_b, int32_t b) {
  return logit_a > logit_b || (logit_a == logit_b && a < b);
}

// A 32-bit key whose unsigned order is the order of the logits (-0 and +0
// equal, as they compare): the bits, with the sign bit set for positives and
// all bits flipped for negatives.
SHARDLM_HD inline uint32_t sampling_logit_key(float logit) {
  const uint32_t bits = float_to_bits(logit == 0.0f ? 0.0f : logit);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// A 64-bit key per candidate, unique within a row, whose descending order is
// the candidate order: the logit's key above the id inverted in its
// `id_bits` low bits (larger logit first; equal logits, lower id first).
SHARDLM_HD inline uint64_t sampling_sort_key(float logit, int32_t id, int id_bits) {
  const uint64_t id_mask = (uint64_t(1) << id_bits) - 1;
  return (uint64_t(sampling_logit_key(logit)) << id_bits) | (id_mask - uint64_t(id));
}

SHARDLM_HD inline int32_t sampling_sort_key_id(uint64_t key, int id_bits) {
  const uint64_t id_mask = (uint64_t(1) << id_bits) - 1;
  return int32_t(id_mask - (key & id_mask));
}

// The unnormalised probability of a candidate: exp((logit - top) / T) in
// double, top being the largest logit of the row.
SHARDLM_HD inline double sampling_weight(float logit, float top, float temperature) {
  return sampling_exp((double(logit) - double(top)) / double(temperature));
}

// The sums below run left to right over the candidates in sampling order, in
// double, and resume across calls (the GPU walks a row in chunks): a chunk
// at a time gives the bits of one pass over the whole.

// sum += w[0] + w[1] + ... + w[n-1], in that order.
SHARDLM_HD inline void sampling_accumulate(const double* w, int64_t n, double& sum) {
  for (int64_t i = 0; i < n; ++i) sum += w[i];
}

// Nucleus (top-p): the smallest prefix of the candidates whose probability
// w / total reaches top_p. Adds w[i] / total to `cumulative` and w[i] to
// `prefix` (the prefix's weight, the new total) for i = 0, 1, ...; returns
// the first i at which cumulative >= top_p, or -1 if none in this chunk.
SHARDLM_HD inline int64_t sampling_nucleus_scan(const double* w, int64_t n, double total,
                                                float top_p, double& cumulative, double& prefix) {
  for (int64_t i = 0; i < n; ++i) {
    cumulative += w[i] / total;
    prefix += w[i];
    if (cumulative >= double(top_p)) return i;
  }
  return -1;
}

// The draw's starting point: total * uniform, as uniform_real_distribution(0,
// total) maps a canonical draw ((b - a) * canonical + a).
SHARDLM_HD inline double sampling_walk_start(double total, double uniform) {
  return mul_unfused(total, uniform);
}

// The walk: subtracts w[0], w[1], ... from `draw`; returns the first i at
// which draw < 0, or -1 if none in this chunk (past the last candidate the
// last one is taken: rounding can leave draw >= 0).
SHARDLM_HD inline int64_t sampling_walk_scan(const double* w, int64_t n, double& draw) {
  for (int64_t i = 0; i < n; ++i) {
    draw -= w[i];
    if (draw < 0) return i;
  }
  return -1;
}

// --- RoPE frequencies and their scaling (Hugging Face modeling_rope_utils) ---

constexpr double kPi = 3.14159265358979323846;

// The angle of pair frequency inv_freq at `position`.
SHARDLM_HD inline double rope_angle(int64_t position, double inv_freq) {
  return double(position) * inv_freq;
}

// Dynamic NTK: the base grows once a sequence of seq_len is longer than the
// trained context max_positions.
SHARDLM_HD inline double rope_dynamic_base(double theta, double factor, int64_t seq_len,
                                           int64_t max_positions, int head_dim) {
  if (seq_len <= max_positions) return theta;
  return theta * pow(factor * double(seq_len) / double(max_positions) - (factor - 1),
                     double(head_dim) / double(head_dim - 2));
}

// Linear (position interpolation): every frequency divided by the factor.
SHARDLM_HD inline double rope_linear_inv_freq(double inv_freq, double factor) {
  return inv_freq / factor;
}

// Llama 3: wavelengths longer than original_context / low_freq_factor are
// interpolated by the factor, shorter than original_context /
// high_freq_factor kept, and those between blended smoothly.
SHARDLM_HD inline double rope_llama3_inv_freq(double inv_freq, double factor,
                                              double low_freq_factor, double high_freq_factor,
                                              double original_context) {
  const double low_freq_wavelen = original_context / low_freq_factor;
  const double high_freq_wavelen = original_context / high_freq_factor;
  const double wavelen = 2 * kPi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const double smooth =
      (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
  return (1 - smooth) * inv_freq / factor + smooth * inv_freq;
}

// YaRN: pair dimensions rotating fewer than beta_slow times over the original
// context are interpolated, more than beta_fast times extrapolated, and a
// linear ramp over the pair index in [low, high] joins the two.
struct RopeYarnRange {
  double low = 0, high = 0;
};

// The pair dimension that rotates `rotations` times over the original context.
SHARDLM_HD inline double rope_yarn_correction_dim(double rotations, int head_dim,
                                                  double original_context, double theta) {
  return head_dim * log(original_context / (rotations * 2 * kPi)) / (2 * log(theta));
}

SHARDLM_HD inline RopeYarnRange rope_yarn_range(double beta_fast, double beta_slow, bool truncate,
                                                int head_dim, double original_context,
                                                double theta) {
  double low = rope_yarn_correction_dim(beta_fast, head_dim, original_context, theta);
  double high = rope_yarn_correction_dim(beta_slow, head_dim, original_context, theta);
  if (truncate) {
    low = floor(low);
    high = ceil(high);
  }
  const double last = double(head_dim - 1);
  low = low < 0.0 ? 0.0 : low;
  high = last < high ? last : high;
  if (low == high) high += 0.001;  // no division by zero in the ramp
  return {low, high};
}

SHARDLM_HD inline double rope_yarn_inv_freq(double inv_freq, int pair, RopeYarnRange range,
                                            double factor) {
  double ramp = (double(pair) - range.low) / (range.high - range.low);
  ramp = ramp < 0.0 ? 0.0 : (1.0 < ramp ? 1.0 : ramp);
  const double extrapolation = 1 - ramp;
  return inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation;
}

// --- Int8 dequantisation ----------------------------------------------------

// The weight an int8 value q of a row with scale `scale` stands for (one
// rounding: q is exact in float).
SHARDLM_HD inline float dequantize_int8(int8_t q, float scale) {
  return float(q) * scale;
}

}  // namespace shardlm::math
