// Decode attention on AMX tiles: the G query heads of one token that share a
// KV head (up to 16 rows, all at one position) over a BF16 cache.
//
// A tile product has 16 output columns; a token has only G rows per KV head
// (3 for `small`, 4 or 8 for larger models). Given one block of keys per
// score tile, 16 - G of its columns would be zero, and every vector step
// after it (scale, max, exp, sum, transposes) would run on 16 lanes of which
// G are live; that, not the tile products, was most of the time. So a score
// tile packs nb = 16 / G blocks of 16 keys: block b's keys meet a Q tile
// whose rows sit in columns [G b, G b + G) (zero elsewhere), all into one
// accumulator, and column G b + r of row i is the score of query row r and
// key 16 b + i. One pass takes nb blocks (twice that, in two score tiles,
// when nb is odd, so that P · V steps of 32 keys are never half empty):
//   scores: K tiles straight from the cache (a partial block from a
//     zero-padded copy), Q rounded to BF16 and, per block, rearranged once
//     per call; four accumulators, so that no product waits on the one
//     before it;
//   the online softmax on 16 lanes: the pass's maximum of each row is the
//     maximum over its nb columns (permutes), and so is its sum;
//   P [16 rows][32 keys] from the transposed weights, rounded to BF16, and V
//     in key pairs (the layout TDPBF16PS wants of its second operand),
//     interleaved without reordering: the output columns come out in a fixed
//     permuted order (value_column_dim) that is undone once per call.
// Accuracy: Q and P are rounded to BF16 (nearest even), as GPU flash
// attention kernels round P; K and V are BF16 already, so every product is
// exact in F32 and the sums are F32. Rounding Q moves each score by at most
// 2^-8 scale sum_d |q_d k_d| (the bound K's own rounding in the cache
// puts on it), rounding P moves each output by at most 2^-8 sum_j p_j |v_j|
// (V's); tests/unit/test_cpu_kernels.cpp holds the kernel to that. Exact
// hi / lo halves of Q and P (as amx_matmul.cpp splits activations) cost
// twice the tile products: with K and V already rounded, they bought
// accuracy the cache has not kept.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>

#include "kernels/cpu/amx_tiles.hpp"
#include "kernels/cpu/cpu_kernels.hpp"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::cpu {

namespace {
constexpr int64_t kMaxHeadDim = 128;
constexpr int64_t kMaxSteps = kMaxHeadDim / amx::kStepCols;
constexpr int64_t kMaxPerTile = 8;                  // key blocks of 16 whose scores share a tile
constexpr int64_t kMaxPassBlocks = 10;              // key blocks in one pass: 2 x 5 at most
constexpr int64_t kMaxChunks = kMaxPassBlocks / 2;  // P · V steps of 32 keys in one pass
constexpr int64_t kValueTiles = kMaxHeadDim / 16;
constexpr int64_t kChunkKeys = 32;  // keys of one P · V product
// Each line of K and V is prefetched (to L2) this many keys before it is
// read, spread over the pass as its blocks are read: issued all at once at
// the start of a pass they stalled on the fill buffers (8-12% slower from
// memory, perf/results/amx-attention-xeon.md); 128 and 512 did no better.
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

// How G rows pack into the tiles (see the file's comment).
struct Packing {
  int64_t rows;         // G
  int64_t per_tile;     // key blocks whose scores share a tile
  int64_t score_tiles;  // 1, or 2 when a tile holds an odd number of blocks
  int64_t blocks() const { return per_tile * score_tiles; }
  int64_t keys() const { return blocks() * kTileRows; }
};

Packing packing_for(int64_t rows) {
  // An even number of blocks per pass, so that no P · V step is half empty.
  const int64_t per_tile = std::min(kTileRows / rows, kMaxPerTile);
  return {rows, per_tile, per_tile % 2 == 1 ? 2 : 1};
}

// Everything one call keeps between passes (about 140 KiB: per thread, not
// on the stack).
struct alignas(64) Scratch {
  // Q per block of a score tile and 32 dims, in that block's columns.
  uint16_t query[kMaxPerTile][kMaxSteps][kTileBytes / 2];
  // V per 32 keys in key pairs, per 16 output columns (value_column_dim).
  uint16_t values[kMaxChunks][kValueTiles][kTileBytes / 2];
  uint16_t weights[kMaxChunks][kTileBytes / 2];  // P [16 rows][32 keys]
  uint16_t keys[kTileRows * kMaxHeadDim];        // a partial block of K, zero past its last key
  float scores[4][kTileRows][kTileRows];         // the four score accumulators
  float probs[kTileRows][kMaxPassBlocks * kTileRows];  // P by row: 16 b + i is key i of block b
  float acc[kTileRows][kMaxHeadDim];  // the rows' output sums, in the V tiles' column order
};

// Output column c of the V tile pair covering dims [32 h, 32 h + 32) is dim
// 32 h + value_column_dim(c): unpacklo / unpackhi interleave two keys' rows
// within 128-bit blocks, so tile 2 h holds dims 0-3, 8-11, 16-19, 24-27 of
// the 32 and tile 2 h + 1 the others.
constexpr int value_column_dim(int c) {
  return 8 * (c % 16 / 4) + 4 * (c / 16) + c % 4;
}

// The rows' sums between the state (dims in order) and the scratch (columns
// in the V tiles' order), 32 dims at a time.
void load_sums(const AttentionState& st, int64_t rows, int64_t head_dim, Scratch& s) {
  alignas(64) int32_t gather[32];
  for (int c = 0; c < 32; ++c) gather[c] = value_column_dim(c);
  const __m512i first = _mm512_load_si512(gather), second = _mm512_load_si512(gather + 16);
  for (int64_t r = 0; r < kTileRows; ++r)
    for (int64_t d = 0; d < head_dim; d += 32) {
      __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
      if (r < rows) {
        const __m512 a = _mm512_loadu_ps(st.acc + r * st.ld + d);
        const __m512 b = _mm512_loadu_ps(st.acc + r * st.ld + d + 16);
        lo = _mm512_permutex2var_ps(a, first, b);
        hi = _mm512_permutex2var_ps(a, second, b);
      }
      _mm512_store_ps(s.acc[r] + d, lo);
      _mm512_store_ps(s.acc[r] + d + 16, hi);
    }
}

void store_sums(const Scratch& s, int64_t rows, int64_t head_dim, const AttentionState& st) {
  alignas(64) int32_t scatter[32];
  for (int c = 0; c < 32; ++c) scatter[value_column_dim(c)] = c;
  const __m512i first = _mm512_load_si512(scatter), second = _mm512_load_si512(scatter + 16);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < head_dim; d += 32) {
      const __m512 a = _mm512_load_ps(s.acc[r] + d), b = _mm512_load_ps(s.acc[r] + d + 16);
      _mm512_storeu_ps(st.acc + r * st.ld + d, _mm512_permutex2var_ps(a, first, b));
      _mm512_storeu_ps(st.acc + r * st.ld + d + 16, _mm512_permutex2var_ps(a, second, b));
    }
}

// Q's rows as the second operand of the score products: for each block of a
// score tile and each 32 dims, a tile with row r in column G b + r.
void prepare_queries(const float* q, int64_t ldq, const Packing& pack, int64_t steps, Scratch& s) {
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t step = 0; step < steps; ++step) {
    rearrange_tile(q, pack.rows, ldq, 0, step, s.query[0][step], /*split=*/false);
    for (int64_t b = 1; b < pack.per_tile; ++b) {
      const int shift = int(pack.rows * b);
      const __m512i from = _mm512_sub_epi32(lane, _mm512_set1_epi32(shift));
      const __mmask16 kept = __mmask16(0xffffu << shift);
      for (int64_t p = 0; p < kTileRows; ++p)
        _mm512_store_si512(s.query[b][step] + p * 32,
                           _mm512_maskz_permutexvar_epi32(
                               kept, from, _mm512_load_si512(s.query[0][step] + p * 32)));
    }
  }
}

// Keys [0, n) of a block at k (head_dim BF16 each) into keys, rows n to 16 zero.
void copy_keys(const uint16_t* k, int64_t n, int64_t head_dim, uint16_t* keys) {
  for (int64_t j = 0; j < kTileRows; ++j)
    for (int64_t d = 0; d < head_dim; d += 32)
      _mm512_store_si512(keys + j * head_dim + d,
                         j < n ? _mm512_loadu_si512(k + j * head_dim + d) : _mm512_setzero_si512());
}

// V rows [0, n) at v (rows n to 32 zero) as TDPBF16PS's second operand, one
// tile per 16 output columns: dword c of row p holds column c of keys 2p
// and 2p + 1.
void rearrange_values(const uint16_t* v, int64_t n, int64_t head_dim,
                      uint16_t (*tiles)[kTileBytes / 2], bool ahead) {
  auto row = [&](int64_t j, int64_t d) {
    return j < n ? _mm512_loadu_si512(v + j * head_dim + d) : _mm512_setzero_si512();
  };
  for (int64_t p = 0; p < kChunkKeys / 2; ++p)
    for (int64_t h = 0; h < head_dim / 32; ++h) {
      if (ahead) {
        _mm_prefetch(reinterpret_cast<const char*>(v + (2 * p + kPrefetchKeys) * head_dim + 32 * h),
                     _MM_HINT_T1);
        _mm_prefetch(
            reinterpret_cast<const char*>(v + (2 * p + 1 + kPrefetchKeys) * head_dim + 32 * h),
            _MM_HINT_T1);
      }
      const __m512i even = row(2 * p, 32 * h), odd = row(2 * p + 1, 32 * h);
      _mm512_store_si512(tiles[2 * h] + p * 32, _mm512_unpacklo_epi16(even, odd));
      _mm512_store_si512(tiles[2 * h + 1] + p * 32, _mm512_unpackhi_epi16(even, odd));
    }
}

// GCC's tile intrinsics take their tile numbers as literals (they are pasted
// into the assembly), hence macros rather than templates.
// One block's scores: K tiles (at k, row stride `stride`) into tile a, Q's
// into tile b, products into accumulator acc.
#define SHARDLM_SCORE_BLOCK(acc, a, b, k, stride, query, steps) \
  do {                                                          \
    for (int64_t step = 0; step < (steps); ++step) {            \
      _tile_loadd(a, (k) + step * kStepCols, (stride));         \
      _tile_loadd(b, (query)[step], 64);                        \
      _tile_dpbf16ps(acc, a, b);                                \
    }                                                           \
  } while (0)
// Accumulator acc += P (in tile p) · the V tile at `values`, loaded into
// tile v.
#define SHARDLM_ADD_VALUES(acc, p, v, values) \
  do {                                        \
    _tile_loadd(v, (values), 64);             \
    _tile_dpbf16ps(acc, p, v);                \
  } while (0)
// Chunk c's P (loaded into tile p) times its V tiles t0 .. t0 + tiles - 1
// (the caller's s, t0 and tiles), loaded into tiles va and vb by turns,
// onto accumulators 4 .. 7.
#define SHARDLM_ADD_CHUNK(p, va, vb, c)                               \
  do {                                                                \
    _tile_loadd(p, s.weights[c], 64);                                 \
    SHARDLM_ADD_VALUES(4, p, va, s.values[c][t0]);                    \
    if (tiles > 1) SHARDLM_ADD_VALUES(5, p, vb, s.values[c][t0 + 1]); \
    if (tiles > 2) SHARDLM_ADD_VALUES(6, p, va, s.values[c][t0 + 2]); \
    if (tiles > 3) SHARDLM_ADD_VALUES(7, p, vb, s.values[c][t0 + 3]); \
  } while (0)

// Up to 16 rows at one position over the keys [lo, hi) (see the file's
// comment); the state's rows [0, rows).
void attention_rows_amx(const float* q, int64_t ldq, int64_t rows, const KVView& kv, int64_t lo,
                        int64_t hi, const AttentionState& st, Scratch& s) {
  const Packing pack = packing_for(rows);
  const int64_t head_dim = kv.head_dim, steps = head_dim / kStepCols;
  const int64_t value_tiles = head_dim / 16, pass_keys = pack.keys();
  const size_t stride = size_t(head_dim) * 2, acc_stride = sizeof(s.acc[0]);
  prepare_queries(q, ldq, pack, steps, s);
  load_sums(st, rows, head_dim, s);
  // P's rows from `rows` on stay zero.
  for (auto& chunk : s.weights) std::fill(chunk, chunk + kTileBytes / 2, uint16_t(0));

  // Lane c of a score vector: query row c % G of block c / G. over_blocks
  // gathers each lane's row from every block, so a row's maximum (or sum)
  // over the blocks lands in every lane of that row.
  const int64_t live_lanes = pack.rows * pack.per_tile;
  alignas(64) int32_t row_of[16], block_first_key[16];
  for (int c = 0; c < 16; ++c) {
    row_of[c] = int32_t(c % pack.rows);
    block_first_key[c] = c < live_lanes ? int32_t(16 * (c / pack.rows)) : INT32_MAX / 2;
  }
  const __m512i row_of_lane = _mm512_load_si512(row_of);
  const __m512i first_key = _mm512_load_si512(block_first_key);
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(kv.scale);
  const __mmask16 live_rows = __mmask16((1u << rows) - 1);
  __m512 max = _mm512_permutexvar_ps(row_of_lane, _mm512_mask_loadu_ps(neg_inf, live_rows, st.max));
  __m512 sum = _mm512_permutexvar_ps(row_of_lane, _mm512_maskz_loadu_ps(live_rows, st.sum));
  auto over_blocks = [&](__m512 v, bool take_max) {
    __m512 total = _mm512_permutexvar_ps(row_of_lane, v);
    for (int64_t b = 1; b < pack.per_tile; ++b) {
      const __m512 other = _mm512_permutexvar_ps(
          _mm512_add_epi32(row_of_lane, _mm512_set1_epi32(int32_t(pack.rows * b))), v);
      total = take_max ? _mm512_max_ps(total, other) : _mm512_add_ps(total, other);
    }
    return total;
  };

  const auto* k_cache = static_cast<const uint16_t*>(kv.k);
  const auto* v_cache = static_cast<const uint16_t*>(kv.v);
  for (int64_t j0 = lo; j0 < hi; j0 += pass_keys) {
    const int64_t n = std::min(pass_keys, hi - j0);
    const bool ahead = j0 + kPrefetchKeys + pass_keys <= hi;
    const int64_t chunks = (n + 31) / 32;
    // V first: its tiles are stored long before the P · V products load
    // them (a tile load waits for the stores it reads to drain).
    for (int64_t c = 0; c < chunks; ++c)
      rearrange_values(v_cache + (j0 + 32 * c) * head_dim, std::min<int64_t>(32, n - 32 * c),
                       head_dim, s.values[c], ahead);
    // Scores: block i of score tile t into accumulator 4 + t + 2 (i % 2)
    // where there are two tiles, else 4 + i % 4: four chains of products,
    // K and Q in tiles 0 / 2 and 1 / 3 by turns.
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (int64_t i = 0; i < pack.per_tile; ++i)
      for (int64_t t = 0; t < pack.score_tiles; ++t) {
        const int64_t b = t * pack.per_tile + i;
        if (16 * b >= n) continue;
        const uint16_t* k = k_cache + (j0 + 16 * b) * head_dim;
        if (ahead)
          for (int64_t line = 0; line < 16 * head_dim; line += 32)
            _mm_prefetch(reinterpret_cast<const char*>(k + kPrefetchKeys * head_dim + line),
                         _MM_HINT_T1);
        if (16 * b + 16 > n) {
          copy_keys(k, n - 16 * b, head_dim, s.keys);
          k = s.keys;
        }
        switch (pack.score_tiles == 2 ? t + 2 * (i % 2) : i % 4) {
          case 0: SHARDLM_SCORE_BLOCK(4, 0, 2, k, stride, s.query[i], steps); break;
          case 1: SHARDLM_SCORE_BLOCK(5, 1, 3, k, stride, s.query[i], steps); break;
          case 2: SHARDLM_SCORE_BLOCK(6, 0, 2, k, stride, s.query[i], steps); break;
          default: SHARDLM_SCORE_BLOCK(7, 1, 3, k, stride, s.query[i], steps); break;
        }
      }
    _tile_stored(4, s.scores[0], 64);
    _tile_stored(5, s.scores[1], 64);
    _tile_stored(6, s.scores[2], 64);
    _tile_stored(7, s.scores[3], 64);

    // The online softmax: score vector (t, i) is row i of score tile t, the
    // sum of its accumulators (two tiles: 4 + t and 6 + t; one: all four).
    __m512 e[2][kTileRows];
    __mmask16 valid[2][kTileRows];
    __m512 pass_max = neg_inf;
    for (int64_t t = 0; t < pack.score_tiles; ++t)
      for (int64_t i = 0; i < kTileRows; ++i) {
        __m512 x;
        if (pack.score_tiles == 2)
          x = _mm512_add_ps(_mm512_load_ps(s.scores[t][i]), _mm512_load_ps(s.scores[t + 2][i]));
        else
          x = _mm512_add_ps(
              _mm512_add_ps(_mm512_load_ps(s.scores[0][i]), _mm512_load_ps(s.scores[1][i])),
              _mm512_add_ps(_mm512_load_ps(s.scores[2][i]), _mm512_load_ps(s.scores[3][i])));
        const __m512i key =
            _mm512_add_epi32(first_key, _mm512_set1_epi32(int32_t(16 * pack.per_tile * t + i)));
        valid[t][i] = _mm512_cmplt_epi32_mask(key, _mm512_set1_epi32(int32_t(n)));
        e[t][i] = _mm512_mask_mul_ps(neg_inf, valid[t][i], x, scale);
        pass_max = _mm512_max_ps(pass_max, e[t][i]);
      }
    const __m512 new_max = _mm512_max_ps(max, over_blocks(pass_max, true));
    // What earlier passes added shrinks by exp(old max - new max); nothing
    // was added while the max was -inf.
    const __m512 shrink = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(max, neg_inf, _CMP_NEQ_OQ),
                                              exp16(_mm512_sub_ps(max, new_max)));
    max = new_max;
    __m512 pass_sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < pack.score_tiles; ++t) {
      for (int64_t i = 0; i < kTileRows; ++i) {
        e[t][i] = _mm512_maskz_mov_ps(valid[t][i], exp16(_mm512_sub_ps(e[t][i], new_max)));
        pass_sum = _mm512_add_ps(pass_sum, e[t][i]);
      }
      __m512 by_lane[kTileRows];
      transpose16(e[t], by_lane);
      for (int64_t b = 0; b < pack.per_tile; ++b)
        for (int64_t r = 0; r < rows; ++r)
          _mm512_store_ps(s.probs[r] + 16 * (pack.per_tile * t + b), by_lane[pack.rows * b + r]);
    }
    sum = _mm512_fmadd_ps(sum, shrink, over_blocks(pass_sum, false));

    // P · V, 32 keys at a time, onto the rows' sums after they shrink.
    alignas(64) float shrinks[kTileRows];
    _mm512_store_ps(shrinks, shrink);
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 by = _mm512_set1_ps(shrinks[r]);
      for (int64_t d = 0; d < head_dim; d += 16)
        _mm512_store_ps(s.acc[r] + d, _mm512_mul_ps(_mm512_load_ps(s.acc[r] + d), by));
    }
    for (int64_t c = 0; c < chunks; ++c) {
      for (int64_t r = 0; r < rows; ++r)
        _mm512_store_si512(s.weights[c] + r * 32, round_row(s.probs[r] + 32 * c));
    }
    for (int64_t t0 = 0; t0 < value_tiles; t0 += 4) {
      const int64_t tiles = std::min<int64_t>(4, value_tiles - t0);
      float* sums = s.acc[0] + 16 * t0;
      _tile_loadd(4, sums, acc_stride);
      if (tiles > 1) _tile_loadd(5, sums + 16, acc_stride);
      if (tiles > 2) _tile_loadd(6, sums + 32, acc_stride);
      if (tiles > 3) _tile_loadd(7, sums + 48, acc_stride);
      // Chunks alternate P between tiles 0 and 1 (V: 2 and 3) so that a
      // chunk's loads need not wait for the products of the one before.
      for (int64_t c = 0; c < chunks; ++c)
        if (c % 2 == 0)
          SHARDLM_ADD_CHUNK(0, 2, 3, c);
        else
          SHARDLM_ADD_CHUNK(1, 3, 2, c);
      _tile_stored(4, sums, acc_stride);
      if (tiles > 1) _tile_stored(5, sums + 16, acc_stride);
      if (tiles > 2) _tile_stored(6, sums + 32, acc_stride);
      if (tiles > 3) _tile_stored(7, sums + 48, acc_stride);
    }
  }
  store_sums(s, rows, head_dim, st);
  _mm512_mask_storeu_ps(st.max, live_rows, max);
  _mm512_mask_storeu_ps(st.sum, live_rows, sum);
}

#undef SHARDLM_SCORE_BLOCK
#undef SHARDLM_ADD_VALUES
#undef SHARDLM_ADD_CHUNK

}  // namespace

void attention_decode_amx(const AttentionQuery& q, const KVView& kv, int64_t lo, int64_t hi,
                          const AttentionState& st) {
  if (hi <= lo) return;
  static thread_local std::unique_ptr<Scratch> scratch;
  if (!scratch) scratch = std::make_unique<Scratch>();
  Scratch& s = *scratch;
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
