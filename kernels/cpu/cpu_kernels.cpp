#include "kernels/cpu/cpu_kernels.hpp"

#include <fmt/format.h>
#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "kernels/math.hpp"

// GCC 12 reports its own _mm512_undefined_*() (a self-initialised variable
// inside the AVX-512 intrinsics) as uninitialised once they are inlined here;
// the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::cpu {
namespace {

// 16 weights at p (element offset already applied) as F32, `mask` selecting
// the valid lanes of a tail. One specialisation per stored dtype, so the
// streaming loop below is compiled once per dtype with the load inlined.
template <DType D>
__m512 load16(const void* p, __mmask16 mask);

template <>
inline __m512 load16<DType::F32>(const void* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
template <>
inline __m512 load16<DType::BF16>(const void* p, __mmask16 mask) {
  // bf16 is the upper half of an f32: widen to 32 bits and shift.
  const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
template <>
inline __m512 load16<DType::F16>(const void* p, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
}
template <>
inline __m512 load16<DType::I8>(const void* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

template <DType D>
inline void widen_row(const char* src, int64_t k, float scale, float* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 mask = k - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - i)) - 1);
    _mm512_mask_storeu_ps(dst + i, mask,
                          _mm512_mul_ps(load16<D>(src + size_t(i) * dtype_size(D), mask), s));
  }
}

constexpr int kRowTile = 4;    // weight rows per tile
constexpr int kBatchTile = 4;  // rows of x per tile: 16 accumulators

// Weight rows [r0, r0 + NR) times x rows [m0, m0 + MR) over all of k.
template <DType D, int NR, int MR>
inline void stream_tile(const float* x, int64_t ldx, const char* w, int64_t k, int64_t r0,
                        int64_t m0, float* out, int64_t ldo, const float* scales, bool accumulate,
                        bool prefetch) {
  const size_t elem = dtype_size(D);
  const char* rows[NR];
  for (int r = 0; r < NR; ++r) rows[r] = w + size_t(r0 + r) * size_t(k) * elem;
  __m512 acc[NR][MR];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  // The next tile's rows, prefetched into L2 at the offset being read now:
  // rows of a few KB are too short for the hardware prefetcher to ramp up on
  // each of the NR streams, and the next tile is where this thread goes next.
  const size_t next_tile = size_t(NR) * size_t(k) * elem;
  for (int64_t kk = 0; kk < k; kk += 16) {
    const __mmask16 mask = k - kk >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - kk)) - 1);
    __m512 xv[MR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_maskz_loadu_ps(mask, x + (m0 + i) * ldx + kk);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const char* p = rows[r] + size_t(kk) * elem;
      if (prefetch && (kk * elem) % 64 == 0) _mm_prefetch(p + next_tile, _MM_HINT_T1);
      const __m512 wv = load16<D>(p, mask);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    const float scale = scales ? scales[r0 + r] : 1.0f;
    for (int i = 0; i < MR; ++i) {
      float* o = out + (m0 + i) * ldo + r0 + r;
      const float v = _mm512_reduce_add_ps(acc[r][i]) * scale;
      *o = accumulate ? *o + v : v;
    }
  }
}

template <DType D, int NR>
inline void stream_rows(const float* x, int64_t m, int64_t ldx, const char* w, int64_t k,
                        int64_t r0, float* out, int64_t ldo, const float* scales, bool accumulate,
                        bool prefetch) {
  int64_t m0 = 0;
  for (; m0 + kBatchTile <= m; m0 += kBatchTile)
    stream_tile<D, NR, kBatchTile>(x, ldx, w, k, r0, m0, out, ldo, scales, accumulate,
                                   prefetch && m0 == 0);
  switch (m - m0) {
    case 3:
      stream_tile<D, NR, 3>(x, ldx, w, k, r0, m0, out, ldo, scales, accumulate,
                            prefetch && m0 == 0);
      break;
    case 2:
      stream_tile<D, NR, 2>(x, ldx, w, k, r0, m0, out, ldo, scales, accumulate,
                            prefetch && m0 == 0);
      break;
    case 1:
      stream_tile<D, NR, 1>(x, ldx, w, k, r0, m0, out, ldo, scales, accumulate,
                            prefetch && m0 == 0);
      break;
    default: break;
  }
}

template <DType D>
void streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
               bool accumulate) {
  const char* data = static_cast<const char*>(w.data);
  const int64_t tiles = (w.n + kRowTile - 1) / kRowTile;
  // Static split: each thread streams one contiguous range of weight rows.
#pragma omp parallel for schedule(static) if (tiles > 1)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r0 = t * kRowTile;
    if (r0 + kRowTile <= w.n) {
      // The last tile of the matrix has no next tile to prefetch.
      stream_rows<D, kRowTile>(x, m, ldx, data, w.k, r0, out, ldo, w.scales, accumulate,
                               r0 + 2 * kRowTile <= w.n);
    } else {
      for (int64_t r = r0; r < w.n; ++r)
        stream_rows<D, 1>(x, m, ldx, data, w.k, r, out, ldo, w.scales, accumulate, false);
    }
  }
}

#ifdef __AVX512VNNI__
// I8 weights take an integer path for few rows: each row of x is scaled to
// int16 (error at most 2^-16 of its largest |value|, far below the int8
// weights' own rounding), weights widen to int16, and VNNI's vpdpwssd
// accumulates exact int32 products of 32 columns per instruction: half the
// instructions of widening to F32, which lets the loop keep pace with memory.
// Column chunks of kI8ChunkCols keep the int32 lane sums from overflowing
// (each pair adds at most 2 * 127 * 32767).
constexpr int64_t kI8ChunkCols = 8192;
constexpr int kI8RowTile = 2;

struct QuantizedRows {
  std::vector<int16_t> values;  // [m, k_padded], zero past k
  std::vector<float> scales;    // x ≈ values * scale, per row
  int64_t k_padded = 0;
};

QuantizedRows quantize_rows_int16(const float* x, int64_t m, int64_t ldx, int64_t k) {
  QuantizedRows q;
  q.k_padded = (k + 31) / 32 * 32;
  q.values.assign(size_t(m * q.k_padded), 0);
  q.scales.resize(size_t(m));
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * ldx;
    float largest = 0.f;
    for (int64_t j = 0; j < k; ++j) largest = std::max(largest, std::fabs(row[j]));
    const float scale = largest > 0.f ? largest / 32767.f : 1.f;
    q.scales[size_t(i)] = scale;
    const float inverse = 1.f / scale;
    int16_t* dst = q.values.data() + i * q.k_padded;
    for (int64_t j = 0; j < k; ++j) dst[j] = int16_t(std::lrint(row[j] * inverse));
  }
  return q;
}

template <int NR, int MR>
inline void stream_tile_i8(const QuantizedRows& xq, int64_t m0, const int8_t* w, int64_t k,
                           int64_t r0, const float* w_scales, float* out, int64_t ldo,
                           bool accumulate, bool prefetch) {
  const int8_t* rows[NR];
  for (int r = 0; r < NR; ++r) rows[r] = w + (r0 + r) * k;
  const int64_t next_tile = NR * k;
  __m512 sums[NR][MR];
  for (int r = 0; r < NR; ++r)
    for (int i = 0; i < MR; ++i) sums[r][i] = _mm512_setzero_ps();
  for (int64_t c0 = 0; c0 < k; c0 += kI8ChunkCols) {
    const int64_t c1 = std::min(k, c0 + kI8ChunkCols);
    __m512i acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_si512();
    for (int64_t kk = c0; kk < c1; kk += 32) {
      const __mmask32 mask = c1 - kk >= 32 ? ~__mmask32(0) : __mmask32((1u << (c1 - kk)) - 1);
      __m512i xv[MR];
      for (int i = 0; i < MR; ++i)
        xv[i] = _mm512_loadu_si512(xq.values.data() + (m0 + i) * xq.k_padded + kk);
      for (int r = 0; r < NR; ++r) {
        const int8_t* p = rows[r] + kk;
        if (prefetch && kk % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(p + next_tile), _MM_HINT_T1);
        const __m512i wv = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, p));
        for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_dpwssd_epi32(acc[r][i], wv, xv[i]);
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i)
        sums[r][i] = _mm512_add_ps(sums[r][i], _mm512_cvtepi32_ps(acc[r][i]));
  }
  for (int r = 0; r < NR; ++r)
    for (int i = 0; i < MR; ++i) {
      float* o = out + (m0 + i) * ldo + r0 + r;
      const float v =
          _mm512_reduce_add_ps(sums[r][i]) * xq.scales[size_t(m0 + i)] * w_scales[r0 + r];
      *o = accumulate ? *o + v : v;
    }
}

template <int NR>
inline void stream_rows_i8(const QuantizedRows& xq, int64_t m, const int8_t* w, int64_t k,
                           int64_t r0, const float* w_scales, float* out, int64_t ldo,
                           bool accumulate, bool prefetch) {
  int64_t m0 = 0;
  for (; m0 + kBatchTile <= m; m0 += kBatchTile)
    stream_tile_i8<NR, kBatchTile>(xq, m0, w, k, r0, w_scales, out, ldo, accumulate,
                                   prefetch && m0 == 0);
  switch (m - m0) {
    case 3:
      stream_tile_i8<NR, 3>(xq, m0, w, k, r0, w_scales, out, ldo, accumulate, prefetch && m0 == 0);
      break;
    case 2:
      stream_tile_i8<NR, 2>(xq, m0, w, k, r0, w_scales, out, ldo, accumulate, prefetch && m0 == 0);
      break;
    case 1:
      stream_tile_i8<NR, 1>(xq, m0, w, k, r0, w_scales, out, ldo, accumulate, prefetch && m0 == 0);
      break;
    default: break;
  }
}

void streaming_i8(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                  int64_t ldo, bool accumulate) {
  const QuantizedRows xq = quantize_rows_int16(x, m, ldx, w.k);
  const auto* data = static_cast<const int8_t*>(w.data);
  const int64_t tiles = (w.n + kI8RowTile - 1) / kI8RowTile;
#pragma omp parallel for schedule(static) if (tiles > 1)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r0 = t * kI8RowTile;
    if (r0 + kI8RowTile <= w.n) {
      stream_rows_i8<kI8RowTile>(xq, m, data, w.k, r0, w.scales, out, ldo, accumulate,
                                 r0 + 2 * kI8RowTile <= w.n);
    } else {
      for (int64_t r = r0; r < w.n; ++r)
        stream_rows_i8<1>(xq, m, data, w.k, r, w.scales, out, ldo, accumulate, false);
    }
  }
}
#endif

void sgemm(const float* x, int64_t m, int64_t ldx, const float* w, int64_t n, int64_t k,
           int64_t ldw, float* out, int64_t ldo, bool accumulate) {
  const dnnl_status_t status =
      dnnl_sgemm('N', 'T', m, n, k, 1.0f, x, ldx, w, ldw, accumulate ? 1.0f : 0.0f, out, ldo);
  if (status != dnnl_success)
    throw std::runtime_error(
        fmt::format("cpu backend: dnnl_sgemm failed (status {})", int(status)));
}

// exp on 16 lanes: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p a
// degree-6 Taylor polynomial (relative error below 1e-6); inputs clamp to
// [-87.33, 88.72], the normal F32 range of the result.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-87.33f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln2 split in two
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

}  // namespace

void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, exp16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    // silu(g) = g / (1 + exp(-g)), as math::silu computes it.
    const __m512 s =
        _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

int64_t attention_scratch(int64_t tokens, int64_t first_pos) {
  return std::min(tokens, kAttentionBlockRows) * (first_pos + tokens);
}

// s[0, length) <- softmax(scale * s[0, length)); s[length, width) <- 0, the
// weights of keys a causal query must not see.
void softmax_row(float* s, int64_t length, int64_t width, float scale) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < length; j += 16) {
    const __mmask16 m = tail_mask(length - j);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
  }
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(vmax) * scale);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < length; j += 16) {
    const __mmask16 m = tail_mask(length - j);
    const __m512 e = exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, s + j), vscale, shift));
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
    _mm512_mask_storeu_ps(s + j, m, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 m = tail_mask(width - j);
    const __mmask16 live = j < length ? __mmask16(m & tail_mask(length - j)) : __mmask16(0);
    _mm512_mask_storeu_ps(s + j, m,
                          _mm512_maskz_mul_ps(live, _mm512_maskz_loadu_ps(m, s + j), inv));
  }
}

void attention_decode_group(const float* q, int64_t heads, int64_t keys, const float* k,
                            const float* v, int64_t head_dim, float scale, float* out,
                            float* scratch) {
  // Scores: one pass over the keys, every head's dot product per key.
  for (int64_t j = 0; j < keys; ++j) {
    const float* key = k + j * head_dim;
    for (int64_t h = 0; h < heads; ++h) {
      const float* query = q + h * head_dim;
      __m512 acc = _mm512_setzero_ps();
      for (int64_t d = 0; d < head_dim; d += 16) {
        const __mmask16 m = tail_mask(head_dim - d);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, query + d),
                              _mm512_maskz_loadu_ps(m, key + d), acc);
      }
      scratch[h * keys + j] = _mm512_reduce_add_ps(acc);
    }
  }
  // Softmax of each head's scores (all keys are visible to the newest token).
  for (int64_t h = 0; h < heads; ++h) softmax_row(scratch + h * keys, keys, keys, scale);
  // Outputs: one pass over the values per 16 columns, every head at once.
  constexpr int64_t kMaxHeads = 16;  // accumulators held in registers
  for (int64_t h0 = 0; h0 < heads; h0 += kMaxHeads) {
    const int64_t hn = std::min(kMaxHeads, heads - h0);
    for (int64_t d = 0; d < head_dim; d += 16) {
      const __mmask16 m = tail_mask(head_dim - d);
      __m512 acc[kMaxHeads];
      for (int64_t h = 0; h < hn; ++h) acc[h] = _mm512_setzero_ps();
      for (int64_t j = 0; j < keys; ++j) {
        const __m512 value = _mm512_maskz_loadu_ps(m, v + j * head_dim + d);
        for (int64_t h = 0; h < hn; ++h)
          acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(scratch[(h0 + h) * keys + j]), value, acc[h]);
      }
      for (int64_t h = 0; h < hn; ++h)
        _mm512_mask_storeu_ps(out + (h0 + h) * head_dim + d, m, acc[h]);
    }
  }
}

void attention_head(const float* q, int64_t ldq, int64_t tokens, int64_t first_pos, const float* k,
                    const float* v, int64_t head_dim, float scale, int64_t window, float* out,
                    float* scratch) {
  for (int64_t i0 = 0; i0 < tokens; i0 += kAttentionBlockRows) {
    const int64_t rows = std::min(kAttentionBlockRows, tokens - i0);
    // Keys the block's queries see: from the first query's window start (0
    // without a window) to the last query's position; each row masks the rest.
    const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first_pos + i0 + 1 - window) : 0;
    const int64_t keys = first_pos + i0 + rows - key_begin;
    const float* k_block = k + key_begin * head_dim;
    const float* v_block = v + key_begin * head_dim;
    if (rows == 1) {
      // One query sees every key: the GEMM-free single-head decode kernel.
      attention_decode_group(q + i0 * ldq, 1, keys, k_block, v_block, head_dim, scale,
                             out + i0 * ldq, scratch);
      continue;
    }
    sgemm(q + i0 * ldq, rows, ldq, k_block, keys, head_dim, head_dim, scratch, keys, false);
    for (int64_t i = 0; i < rows; ++i) {
      // Causal: query i sees keys up to its own position, and within the window.
      const int64_t position = first_pos + i0 + i, visible_end = position + 1 - key_begin;
      const int64_t hidden = window > 0 ? std::max<int64_t>(0, visible_end - window) : 0;
      float* row = scratch + i * keys;
      std::fill(row, row + hidden, 0.0f);
      softmax_row(row + hidden, visible_end - hidden, keys - hidden, scale);
    }
    // out rows = weights [rows, keys] · V [keys, head_dim]
    const dnnl_status_t status = dnnl_sgemm('N', 'N', rows, head_dim, keys, 1.0f, scratch, keys,
                                            v_block, head_dim, 0.0f, out + i0 * ldq, ldq);
    if (status != dnnl_success)
      throw std::runtime_error("cpu backend: dnnl_sgemm failed in attention");
  }
}

void widen_rows(const WeightView& w, int64_t row_begin, int64_t rows, float* dst) {
  if (w.dtype != DType::F32 && w.dtype != DType::BF16 && w.dtype != DType::F16 &&
      w.dtype != DType::I8)
    throw std::logic_error("cpu backend: weight dtype must be F32, BF16, F16 or I8");
  const size_t elem = dtype_size(w.dtype);
#pragma omp parallel for schedule(static) if (rows * w.k > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const char* src = static_cast<const char*>(w.data) + size_t(row_begin + r) * size_t(w.k) * elem;
    float* o = dst + r * w.k;
    switch (w.dtype) {
      case DType::F32: widen_row<DType::F32>(src, w.k, 1.0f, o); break;
      case DType::BF16: widen_row<DType::BF16>(src, w.k, 1.0f, o); break;
      case DType::F16: widen_row<DType::F16>(src, w.k, 1.0f, o); break;
      case DType::I8: widen_row<DType::I8>(src, w.k, w.scales[row_begin + r], o); break;
      default: break;  // checked above: no exception may leave the parallel loop
    }
  }
}

void matmul_streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                      int64_t ldo, bool accumulate) {
  switch (w.dtype) {
    case DType::F32: return streaming<DType::F32>(x, m, ldx, w, out, ldo, accumulate);
    case DType::BF16: return streaming<DType::BF16>(x, m, ldx, w, out, ldo, accumulate);
    case DType::F16: return streaming<DType::F16>(x, m, ldx, w, out, ldo, accumulate);
#ifdef __AVX512VNNI__
    case DType::I8: return streaming_i8(x, m, ldx, w, out, ldo, accumulate);
#else
    case DType::I8: return streaming<DType::I8>(x, m, ldx, w, out, ldo, accumulate);
#endif
    default:
      throw std::logic_error("cpu backend: matmul weight dtype must be F32, BF16, F16 or I8");
  }
}

void matmul_panel(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                  int64_t ldo, bool accumulate) {
  if (w.dtype == DType::F32)
    return sgemm(x, m, ldx, static_cast<const float*>(w.data), w.n, w.k, w.k, out, ldo, accumulate);
  // Panels of about 8 MiB of F32: large enough for sgemm to run at full
  // speed, small enough to stay in the last-level cache between the widening
  // and the GEMM that reads it.
  const int64_t panel_rows = std::min<int64_t>(
      w.n, std::max<int64_t>(64, (int64_t(8) << 20) / (4 * std::max<int64_t>(w.k, 1))));
  std::unique_ptr<float, decltype(&std::free)> panel(
      static_cast<float*>(std::aligned_alloc(64, (size_t(panel_rows * w.k) * 4 + 63) / 64 * 64)),
      std::free);
  if (!panel) throw std::bad_alloc();
  for (int64_t r0 = 0; r0 < w.n; r0 += panel_rows) {
    const int64_t rows = std::min(panel_rows, w.n - r0);
    widen_rows(w, r0, rows, panel.get());
    sgemm(x, m, ldx, panel.get(), rows, w.k, w.k, out + r0, ldo, accumulate);
  }
}

void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
            bool accumulate) {
  if (m <= kStreamingMaxRows)
    matmul_streaming(x, m, ldx, w, out, ldo, accumulate);
  else
    matmul_panel(x, m, ldx, w, out, ldo, accumulate);
}

}  // namespace shardlm::cpu
