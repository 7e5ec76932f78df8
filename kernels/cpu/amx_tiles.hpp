// What the AMX kernels (amx_matmul.cpp, amx_attention.cpp) share: the target
// their functions are compiled for, the tile shape and configuration, and
// F32 rows rounded to BF16 (or split into two BF16 halves) and rearranged as
// the second operand of TDPBF16PS.
//
// The kernels are compiled for AMX whatever the build machine (-march=native
// may lack it) and run only where amx_available() says the CPU has it: each
// file puts its AMX functions between SHARDLM_AMX_BEGIN and SHARDLM_AMX_END.
#pragma once

#include <immintrin.h>

#include <cstdint>

// clang-format off
#if defined(__clang__)
#define SHARDLM_AMX_BEGIN _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16\"))), apply_to = function)")
#define SHARDLM_AMX_END _Pragma("clang attribute pop")
#else
#define SHARDLM_AMX_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16\")")
#define SHARDLM_AMX_END _Pragma("GCC pop_options")
#endif
// clang-format on

SHARDLM_AMX_BEGIN
namespace shardlm::cpu::amx {

constexpr int64_t kTileRows = 16;  // rows of every tile
constexpr int64_t kStepCols = 32;  // BF16 columns of one tile row (64 bytes)
constexpr int64_t kTileBytes = 1024;

// Every tile register 16 rows of 64 bytes (the kernels load partial tiles
// from zero-padded buffers instead of configuring smaller ones).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

inline void configure_tiles() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = kTileRows;
  }
  // Not _tile_loadconfig: GCC's declares only the first 8 bytes of the
  // configuration as read, and once inlined the stores of the rest can be
  // dropped (seen with GCC 12: LDTILECFG then faults on a zero row width).
  __asm__ volatile("ldtilecfg %0" ::"m"(config));
}

inline __m512 bf16_to_f32(__m256bh h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(__m256i(h)), 16));
}

// 32 floats at p rounded to BF16 (nearest even), in order.
inline __m512i round_row(const float* p) {
  return __m512i(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p)));
}

// 32 floats at p as hi and lo BF16 halves (32 values each, in order):
// hi = bf16(x), lo = bf16(x - hi), so hi + lo is within 2^-18 of x and every
// product of either with a BF16 value is exact in F32.
inline void split_row(const float* p, __m512i& hi, __m512i& lo) {
  const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
  const __m256bh ha = _mm512_cvtneps_pbh(a), hb = _mm512_cvtneps_pbh(b);
  const __m256bh la = _mm512_cvtneps_pbh(_mm512_sub_ps(a, bf16_to_f32(ha)));
  const __m256bh lb = _mm512_cvtneps_pbh(_mm512_sub_ps(b, bf16_to_f32(hb)));
  hi = _mm512_inserti64x4(_mm512_castsi256_si512(__m256i(ha)), __m256i(hb), 1);
  lo = _mm512_inserti64x4(_mm512_castsi256_si512(__m256i(la)), __m256i(lb), 1);
}

// Rows [16 g, 16 g + 16) of x (stride ldx; rows from `rows` on are zero),
// columns [32 s, 32 s + 32), as a hi tile and then a lo tile at `tiles`
// (with split false: one tile, rounded), each [16 column pairs][16 rows][2]:
// the layout TDPBF16PS wants of its second operand.
inline void rearrange_tile(const float* x, int64_t rows, int64_t ldx, int64_t g, int64_t s,
                           uint16_t* tiles, bool split = true) {
  // Column pair c of row i goes to dword c * 16 + i of its tile.
  const __m512i to_pair_rows =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(kTileRows));
  auto* hi_tile = reinterpret_cast<int32_t*>(tiles);
  int32_t* lo_tile = hi_tile + kTileBytes / 4;
  for (int64_t i = 0; i < kTileRows; ++i) {
    const int64_t row = g * kTileRows + i;
    __m512i hi = _mm512_setzero_si512(), lo = _mm512_setzero_si512();
    if (row < rows) {
      if (split)
        split_row(x + row * ldx + s * kStepCols, hi, lo);
      else
        hi = round_row(x + row * ldx + s * kStepCols);
    }
    _mm512_i32scatter_epi32(hi_tile + i, to_pair_rows, hi, 4);
    if (split) _mm512_i32scatter_epi32(lo_tile + i, to_pair_rows, lo, 4);
  }
}

}  // namespace shardlm::cpu::amx
SHARDLM_AMX_END
