// Decode attention on AMX tiles: the query heads of one token that share a
// KV head (up to 16 rows, all at one position) over a BF16 cache, 32 keys at
// a time. The vector kernel (attention_decode in cpu_kernels.cpp) spends
// 20-40 cycles per key and query row on the dot products, the lane sums and
// the weighted sum of V; here both products run on the tile unit, 16 tile
// products per 32 keys whatever the number of rows, so its time per key
// does not grow with the rows (2.7-6.5x faster than the vector kernel for
// 4-16 rows over a cache in L2; from memory both take in K and V well below
// the memory's rate: perf/results/amx-attention-xeon.md).
//
// Per block of 32 keys:
//   scoresᵀ [32 keys][16 rows] = K · Qᵀ: K tiles as stored (16 keys of 32
//     BF16 dims, the row stride apart), Q split into hi and lo BF16 halves
//     and rearranged once per call;
//   the online softmax on those scores, one vector per key across the rows
//     (no lane sums: each row's max and sum are a lane of a vector);
//   P [16 rows][32 keys] by transposing the weights, split hi / lo;
//   P · V [16 rows][head_dim] with V rearranged into key pairs (the layout
//     TDPBF16PS wants of its second operand), added to the rows' sums after
//     they shrink by exp(old max - new max).
// Accuracy: the hi / lo splits make every product exact in F32 (as in
// amx_matmul.cpp), so the result differs from the vector kernel only in the
// order of F32 additions.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/amx_tiles.hpp"
#include "kernels/cpu/cpu_kernels.hpp"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::cpu {

namespace {
constexpr int64_t kBlockKeys = 32;
constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxSteps = kMaxHeadDim / amx::kStepCols;
// Each line of K and V read is followed by a prefetch (to L2) of the line
// this many keys on: with the cache in memory, 8 blocks ahead read 1.35x
// faster than with the hardware prefetcher alone (matmul_bench --attention
// 4096 --group 8 --caches 384 --threads 2, medians of three alternations:
// 44 against 59 ms per pass; 64, 512 and 1024 keys ahead did less).
constexpr int64_t kPrefetchKeys = 256;
}  // namespace

bool amx_attention_fits(const KVView& kv) {
  return kv.dtype == DType::BF16 && kv.head_dim % amx::kStepCols == 0 &&
         kv.head_dim <= kMaxHeadDim && amx_available();
}

}  // namespace shardlm::cpu

SHARDLM_AMX_BEGIN
#include "kernels/cpu/exp16.hpp"

namespace shardlm::cpu {
namespace {

using namespace amx;

// out[c] lane r = in[r] lane c: a 16 x 16 block of floats transposed in
// registers (in pairs, then pairs of pairs, then 128-bit blocks).
inline void transpose16(const __m512 (&in)[16], __m512 (&out)[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(in[2 * i], in[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(in[2 * i], in[2 * i + 1]);
  }
  // b[4 i + c], 128-bit block L: column 4 L + c of rows 4 i .. 4 i + 3.
  for (int i = 0; i < 4; ++i)
    for (int h = 0; h < 2; ++h) {
      const __m512d x = _mm512_castps_pd(a[4 * i + h]), y = _mm512_castps_pd(a[4 * i + 2 + h]);
      b[4 * i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
      b[4 * i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
    }
  for (int c = 0; c < 4; ++c) {
    const __m512 t0 = _mm512_shuffle_f32x4(b[c], b[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 t1 = _mm512_shuffle_f32x4(b[c], b[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 t2 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 t3 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    out[c] = _mm512_shuffle_f32x4(t0, t2, _MM_SHUFFLE(2, 0, 2, 0));
    out[4 + c] = _mm512_shuffle_f32x4(t0, t2, _MM_SHUFFLE(3, 1, 3, 1));
    out[8 + c] = _mm512_shuffle_f32x4(t1, t3, _MM_SHUFFLE(2, 0, 2, 0));
    out[12 + c] = _mm512_shuffle_f32x4(t1, t3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// Everything one call keeps between blocks, on the stack (about 40 KiB).
struct alignas(64) Scratch {
  uint16_t query[kMaxSteps][2][kTileBytes / 2];       // Q hi / lo tiles per 32 dims
  uint16_t values[kMaxHeadDim / 16][kTileBytes / 2];  // V of a block in key pairs, per 16 dims
  uint16_t weights[2][kTileBytes / 2];                // P hi / lo [16 rows][32 keys]
  float scores[kBlockKeys][kTileRows];                // scoresᵀ [key][row]
  float weights_f32[kTileRows][kBlockKeys];           // P rows before the split
  float products[kTileRows][kMaxHeadDim];             // P · V of a block
  uint16_t keys[kBlockKeys * kMaxHeadDim];            // K of a block, zero past its last key
};

// Keys [0, n) at k (head_dim BF16 each) into keys, rows n to 32 zero; with
// `ahead`, each line read is followed by a prefetch kPrefetchKeys keys on.
void copy_keys(const uint16_t* k, int64_t n, int64_t head_dim, uint16_t* keys, bool ahead) {
  for (int64_t j = 0; j < kBlockKeys; ++j)
    for (int64_t d = 0; d < head_dim; d += 32) {
      if (ahead)
        _mm_prefetch(reinterpret_cast<const char*>(k + (j + kPrefetchKeys) * head_dim + d),
                     _MM_HINT_T1);
      _mm512_store_si512(keys + j * head_dim + d,
                         j < n ? _mm512_loadu_si512(k + j * head_dim + d) : _mm512_setzero_si512());
    }
}

// V rows [0, n) at v (head_dim BF16 each; rows n to 32 zero) as TDPBF16PS's
// second operand, one tile per 16 dims: dword c of row p is dim c of keys 2p
// and 2p + 1.
void rearrange_values(const uint16_t* v, int64_t n, int64_t head_dim, Scratch& s, bool ahead) {
  // unpacklo/hi interleave within 128-bit blocks: lo holds dims 0-3, 8-11,
  // 16-19, 24-27 of the 32, hi the others; these put them back in order.
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  auto row = [&](int64_t j, int64_t d) {
    return j < n ? _mm512_loadu_si512(v + j * head_dim + d) : _mm512_setzero_si512();
  };
  for (int64_t p = 0; p < kBlockKeys / 2; ++p)
    for (int64_t h = 0; h < head_dim / 32; ++h) {
      if (ahead) {
        _mm_prefetch(reinterpret_cast<const char*>(v + (2 * p + kPrefetchKeys) * head_dim + 32 * h),
                     _MM_HINT_T1);
        _mm_prefetch(
            reinterpret_cast<const char*>(v + (2 * p + 1 + kPrefetchKeys) * head_dim + 32 * h),
            _MM_HINT_T1);
      }
      const __m512i even = row(2 * p, 32 * h), odd = row(2 * p + 1, 32 * h);
      const __m512i lo = _mm512_unpacklo_epi16(even, odd), hi = _mm512_unpackhi_epi16(even, odd);
      _mm512_store_si512(s.values[2 * h] + p * 32, _mm512_permutex2var_epi64(lo, first, hi));
      _mm512_store_si512(s.values[2 * h + 1] + p * 32, _mm512_permutex2var_epi64(lo, second, hi));
    }
}

// P · V for one group of up to four 16-dim tiles (tiles 4-7), P hi / lo in
// tiles 0 and 1; tile numbers must be literals, hence the cases.
void weighted_values(const Scratch& s, int64_t first_tile, int64_t tiles, float* products) {
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  const int64_t stride = sizeof(Scratch::products[0]);
  const uint16_t* v = s.values[first_tile];
  _tile_loadd(2, v, 64);
  _tile_dpbf16ps(4, 0, 2);
  _tile_dpbf16ps(4, 1, 2);
  _tile_stored(4, products, stride);
  if (tiles > 1) {
    _tile_loadd(3, v + kTileBytes / 2, 64);
    _tile_dpbf16ps(5, 0, 3);
    _tile_dpbf16ps(5, 1, 3);
    _tile_stored(5, products + 16, stride);
  }
  if (tiles > 2) {
    _tile_loadd(2, v + 2 * kTileBytes / 2, 64);
    _tile_dpbf16ps(6, 0, 2);
    _tile_dpbf16ps(6, 1, 2);
    _tile_stored(6, products + 32, stride);
  }
  if (tiles > 3) {
    _tile_loadd(3, v + 3 * kTileBytes / 2, 64);
    _tile_dpbf16ps(7, 0, 3);
    _tile_dpbf16ps(7, 1, 3);
    _tile_stored(7, products + 48, stride);
  }
}

// Up to 16 rows at one position over the keys [lo, hi) (see the file's
// comment); the state's rows [0, rows).
void attention_rows_amx(const float* q, int64_t ldq, int64_t rows, const KVView& kv, int64_t lo,
                        int64_t hi, const AttentionState& st, Scratch& s) {
  const int64_t head_dim = kv.head_dim, steps = head_dim / kStepCols;
  const size_t stride = size_t(head_dim) * 2;
  for (int64_t step = 0; step < steps; ++step)
    rearrange_tile(q, rows, ldq, 0, step, s.query[step][0]);
  const __mmask16 live_rows = __mmask16((1u << rows) - 1);
  __m512 max = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), live_rows, st.max);
  __m512 sum = _mm512_maskz_loadu_ps(live_rows, st.sum);
  const __m512 scale = _mm512_set1_ps(kv.scale);
  const auto* k_cache = static_cast<const uint16_t*>(kv.k);
  const auto* v_cache = static_cast<const uint16_t*>(kv.v);
  for (int64_t j0 = lo; j0 < hi; j0 += kBlockKeys) {
    const int64_t n = std::min(kBlockKeys, hi - j0);
    // K and V are read with vector loads (the out-of-order core runs ahead
    // of those), into buffers the tile loads read from L1; keys past the last
    // are zero there, so no load reads past the cache.
    const bool ahead = j0 + kPrefetchKeys + kBlockKeys <= hi;
    copy_keys(k_cache + j0 * head_dim, n, head_dim, s.keys, ahead);
    // scoresᵀ = K · Qᵀ: tiles 0 and 1 hold keys 0-15 and 16-31, 2 and 3 Q's halves.
    _tile_zero(4);
    _tile_zero(5);
    for (int64_t step = 0; step < steps; ++step) {
      const uint16_t* at = s.keys + step * kStepCols;
      _tile_loadd(0, at, stride);
      _tile_loadd(1, at + kTileRows * head_dim, stride);
      _tile_loadd(2, s.query[step][0], 64);
      _tile_loadd(3, s.query[step][1], 64);
      _tile_dpbf16ps(4, 0, 2);
      _tile_dpbf16ps(5, 1, 2);
      _tile_dpbf16ps(4, 0, 3);
      _tile_dpbf16ps(5, 1, 3);
    }
    _tile_stored(4, s.scores[0], 64);
    _tile_stored(5, s.scores[kTileRows], 64);
    rearrange_values(v_cache + j0 * head_dim, n, head_dim, s, ahead);

    // The online softmax, one vector (across the rows) per key; keys from
    // n on weigh nothing.
    __m512 block_max = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; ++j)
      block_max = _mm512_max_ps(block_max, _mm512_mul_ps(_mm512_load_ps(s.scores[j]), scale));
    const __m512 new_max = _mm512_max_ps(max, block_max);
    // What earlier blocks added shrinks by exp(old max - new max); nothing
    // was added while the max was -inf.
    const __m512 shrink =
        _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(max, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                            exp16(_mm512_sub_ps(max, new_max)));
    max = new_max;
    __m512 p[2][kTileRows], block_sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < kBlockKeys; ++j) {
      __m512& e = p[j / kTileRows][j % kTileRows];
      e = j < n ? exp16(_mm512_fmsub_ps(_mm512_load_ps(s.scores[j]), scale, new_max))
                : _mm512_setzero_ps();
      block_sum = _mm512_add_ps(block_sum, e);
    }
    sum = _mm512_fmadd_ps(sum, shrink, block_sum);

    // P [16 rows][32 keys], split into BF16 halves: tiles 0 and 1.
    for (int half = 0; half < 2; ++half) {
      __m512 rows_of[kTileRows];
      transpose16(p[half], rows_of);
      for (int64_t r = 0; r < kTileRows; ++r)
        _mm512_store_ps(s.weights_f32[r] + half * kTileRows, rows_of[r]);
    }
    for (int64_t r = 0; r < kTileRows; ++r) {
      __m512i high, low;
      split_row(s.weights_f32[r], high, low);
      _mm512_store_si512(s.weights[0] + r * 32, high);
      _mm512_store_si512(s.weights[1] + r * 32, low);
    }
    _tile_loadd(0, s.weights[0], 64);
    _tile_loadd(1, s.weights[1], 64);
    for (int64_t t0 = 0; t0 < head_dim / 16; t0 += 4)
      weighted_values(s, t0, std::min<int64_t>(4, head_dim / 16 - t0), s.products[0] + t0 * 16);

    alignas(64) float shrinks[kTileRows];
    _mm512_store_ps(shrinks, shrink);
    for (int64_t r = 0; r < rows; ++r) {
      float* acc = st.acc + r * st.ld;
      const __m512 by = _mm512_set1_ps(shrinks[r]);
      for (int64_t d = 0; d < head_dim; d += 16)
        _mm512_storeu_ps(acc + d, _mm512_fmadd_ps(_mm512_loadu_ps(acc + d), by,
                                                  _mm512_loadu_ps(s.products[r] + d)));
    }
  }
  _mm512_mask_storeu_ps(st.max, live_rows, max);
  _mm512_mask_storeu_ps(st.sum, live_rows, sum);
}

}  // namespace

void attention_decode_amx(const AttentionQuery& q, const KVView& kv, int64_t lo, int64_t hi,
                          const AttentionState& st) {
  if (hi <= lo) return;
  Scratch s;
  configure_tiles();
  for (int64_t r0 = 0; r0 < q.rows; r0 += kTileRows) {
    const AttentionState rows_state{st.acc + r0 * st.ld, st.ld, st.max + r0, st.sum + r0};
    attention_rows_amx(q.q + r0 * q.ldq, q.ldq, std::min(kTileRows, q.rows - r0), kv, lo, hi,
                       rows_state, s);
  }
  _tile_release();
}

}  // namespace shardlm::cpu
SHARDLM_AMX_END
