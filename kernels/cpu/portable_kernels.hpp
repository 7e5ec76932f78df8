// The CPU kernels cpu_kernels.cpp builds where the compiler targets no
// AVX-512 (an AVX2 machine, say, where -march=native leaves it out): the
// same functions in GCC's generic vectors of 8 floats, which the compiler
// maps onto the machine's registers (one AVX register, or two SSE ones).
// Included by cpu_kernels.cpp alone, internal to it like exp16.hpp: these
// replace the AVX-512 kernels, not add to them.
//
// What is left to the AVX-512 build: the tiled streaming kernel's chunks and
// prefetches, the BF16 and VNNI dot products, and the fused decode attention
// (decode attention here takes the blocked sgemm path of attention_partial).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include "kernels/cpu/cpu_kernels.hpp"
#include "kernels/math.hpp"

namespace shardlm::cpu {
namespace {

constexpr int64_t kLanes = 8;
using Floats8 = float __attribute__((vector_size(32)));
using Ints8 = int32_t __attribute__((vector_size(32)));

inline Floats8 load8(const float* p) {
  Floats8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, Floats8 v) {
  std::memcpy(p, &v, sizeof v);
}
inline Floats8 splat8(float f) {
  return Floats8{} + f;
}
inline float sum8(Floats8 v) {
  float sum = 0;
  for (int i = 0; i < kLanes; ++i) sum += v[i];
  return sum;
}

// 2^n for integer-valued n in [-126, 127], built in the exponent bits.
inline Floats8 pow2_8(Ints8 n) {
  Floats8 f;
  const Ints8 bits = (n + 127) << 23;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// exp on 8 lanes, as exp16 computes it (exp16.hpp): 2^n * p(r) with x = n ln2
// + r, a degree-6 polynomial, inputs clamped to [-87.33, 88.72]. 2^n is made
// as two halves: n = 128 and -126 lie just past a single exponent's range.
inline Floats8 exp8(Floats8 x) {
  x = x < splat8(-87.33f) ? splat8(-87.33f) : x;
  x = x > splat8(88.72f) ? splat8(88.72f) : x;
  // Round to nearest: adding 1.5 * 2^23 leaves the integer part in the mantissa.
  const Floats8 shifter = splat8(12582912.0f);
  const Floats8 n = (x * 1.44269504f + shifter) - shifter;
  Floats8 r = x - n * 0.693145752f;
  r = r - n * 1.42860677e-6f;
  Floats8 p = splat8(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Ints8 whole = __builtin_convertvector(n, Ints8), half = whole >> 1;
  return p * pow2_8(half) * pow2_8(whole - half);
}

// Values [i, i + 8) of a stored row widened to F32 (the caller keeps i + 8 <= k).
template <DType D>
inline Floats8 load8_widened(const char* src, int64_t i) {
  Floats8 out;
  if constexpr (D == DType::F32) {
    out = load8(reinterpret_cast<const float*>(src) + i);
  } else if constexpr (D == DType::BF16) {
    uint16_t h[kLanes];
    std::memcpy(h, src + 2 * i, sizeof h);
    Ints8 bits;
    for (int j = 0; j < kLanes; ++j) bits[j] = int32_t(uint32_t(h[j]) << 16);
    std::memcpy(&out, &bits, sizeof out);
  } else if constexpr (D == DType::F16) {
#ifdef __F16C__
    out = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
#else
    uint16_t h[kLanes];
    std::memcpy(h, src + 2 * i, sizeof h);
    for (int j = 0; j < kLanes; ++j) out[j] = math::f16_to_float(h[j]);
#endif
  } else {
    const auto* q = reinterpret_cast<const int8_t*>(src) + i;
    for (int j = 0; j < kLanes; ++j) out[j] = float(q[j]);
  }
  return out;
}

template <DType D>
inline float widened(const char* src, int64_t i) {
  if constexpr (D == DType::F32) {
    return reinterpret_cast<const float*>(src)[i];
  } else if constexpr (D == DType::I8) {
    return float(reinterpret_cast<const int8_t*>(src)[i]);
  } else {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return D == DType::BF16 ? math::bf16_to_float(h) : math::f16_to_float(h);
  }
}

template <DType D>
inline void widen_row(const char* src, int64_t k, float scale, float* dst) {
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) store8(dst + i, load8_widened<D>(src, i) * scale);
  for (; i < k; ++i) dst[i] = widened<D>(src, i) * scale;
}

// A tile is kPortableRowTile weight rows, widened once into scratch, against
// kPortableBatchTile rows of x at a time: 8 independent sums keep two FMA
// units busy past their latency, and each x vector loaded serves 4 weight rows.
// On a Zen 3 EPYC, column chunks (1024), holding the weight vectors in
// registers (GCC folds their loads into the FMAs) and prefetching the next
// tile before the multiplications were no faster or slower
// (perf/results/portable-kernels-zen3.md).
constexpr int kPortableRowTile = 4;
constexpr int kPortableBatchTile = 2;

// sums[i][r] = x row i · rows row r over k columns (rows: kPortableRowTile
// widened rows of k floats each).
template <int MR>
inline void dot_tile(const float* x, int64_t ldx, const float* rows, int64_t k,
                     float (&sums)[MR][kPortableRowTile]) {
  Floats8 acc[MR][kPortableRowTile] = {};
  int64_t c = 0;
  for (; c + kLanes <= k; c += kLanes) {
    Floats8 w[kPortableRowTile];
    for (int r = 0; r < kPortableRowTile; ++r) w[r] = load8(rows + r * k + c);
    for (int i = 0; i < MR; ++i) {
      const Floats8 xv = load8(x + i * ldx + c);
      for (int r = 0; r < kPortableRowTile; ++r) acc[i][r] += xv * w[r];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < kPortableRowTile; ++r) {
      float sum = sum8(acc[i][r]);
      for (int64_t t = c; t < k; ++t) sum += x[i * ldx + t] * rows[r * k + t];
      sums[i][r] = sum;
    }
}

// out = x · wᵀ (+ out): OpenMP splits the tiles of weight rows over the
// threads; each tile is widened (scales applied) into a buffer that stays in
// cache while every row of x passes over it.
template <DType D>
void streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
               bool accumulate) {
  const char* data = static_cast<const char*>(w.data);
  const size_t row_bytes = size_t(w.k) * dtype_size(D);
  const int64_t tiles = (w.n + kPortableRowTile - 1) / kPortableRowTile;
#pragma omp parallel if (tiles > 1)
  {
    std::vector<float> rows(size_t(kPortableRowTile * w.k));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * kPortableRowTile, live = std::min<int64_t>(kPortableRowTile, w.n - r0);
      for (int64_t r = 0; r < kPortableRowTile; ++r) {
        float* dst = rows.data() + r * w.k;
        if (r < live)
          widen_row<D>(data + size_t(r0 + r) * row_bytes, w.k, w.scales ? w.scales[r0 + r] : 1.0f,
                       dst);
        else
          std::fill(dst, dst + w.k, 0.0f);  // past the last row: sums never stored
      }
      auto store = [&](int64_t i, const float* sums) {
        for (int64_t r = 0; r < live; ++r) {
          float& o = out[i * ldo + r0 + r];
          o = accumulate ? o + sums[r] : sums[r];
        }
      };
      int64_t i = 0;
      for (; i + kPortableBatchTile <= m; i += kPortableBatchTile) {
        float sums[kPortableBatchTile][kPortableRowTile];
        dot_tile<kPortableBatchTile>(x + i * ldx, ldx, rows.data(), w.k, sums);
        for (int j = 0; j < kPortableBatchTile; ++j) store(i + j, sums[j]);
      }
      for (; i < m; ++i) {
        float sums[1][kPortableRowTile];
        dot_tile<1>(x + i * ldx, ldx, rows.data(), w.k, sums);
        store(i, sums[0]);
      }
    }
  }
}

}  // namespace
}  // namespace shardlm::cpu
