// The CPU kernels cpu_kernels.cpp builds where the compiler targets no
// AVX-512 (an AVX2 machine, say, where -march=native leaves it out): the
// same functions in GCC's generic vectors of 8 floats, which the compiler
// maps onto the machine's registers (one AVX register, or two SSE ones).
// Included by cpu_kernels.cpp alone, internal to it like exp16.hpp: these
// replace the AVX-512 kernels, not add to them.
//
// The streaming matmul has two shapes here: for a few rows of x, dots(), dot
// products of weights widened in registers as they are read; from 9 rows the
// sgemm shape of strips(), whose transposed panels let a weight vector serve
// six rows of x for two loads. What is left to the AVX-512 build: the BF16 and VNNI dot
// products. (The portable fused decode attention lives in cpu_kernels.cpp,
// beside the AVX-512 one, whose constants and prefetches it shares.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__F16C__) || defined(__AVX2__)
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
  return Floats8{f, f, f, f, f, f, f, f};  // not {} + f: that costs an add (-0 + 0 is +0)
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
#ifdef __AVX2__
    // The loop below compiles to two 128-bit halves stored to the stack and
    // read back as one vector, a store-forwarding stall every 8 values.
    out = Floats8(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))), 16));
#else
    uint16_t h[kLanes];
    std::memcpy(h, src + 2 * i, sizeof h);
    Ints8 bits;
    for (int j = 0; j < kLanes; ++j) bits[j] = int32_t(uint32_t(h[j]) << 16);
    std::memcpy(&out, &bits, sizeof out);
#endif
  } else if constexpr (D == DType::F16) {
#ifdef __F16C__
    out = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
#else
    uint16_t h[kLanes];
    std::memcpy(h, src + 2 * i, sizeof h);
    for (int j = 0; j < kLanes; ++j) out[j] = math::f16_to_float(h[j]);
#endif
  } else {
#ifdef __AVX2__
    // GCC leaves the loop below scalar: 8 conversions and inserts for 8 values.
    out = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i))));
#else
    const auto* q = reinterpret_cast<const int8_t*>(src) + i;
    for (int j = 0; j < kLanes; ++j) out[j] = float(q[j]);
#endif
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

// The sgemm-shaped kernel for several rows of x: a strip of kStripRows weight
// rows is widened and transposed, kStripDepth columns at a time, into a panel
// [depth][kStripRows] that stays in L1; each loaded panel vector then serves
// every row of a block of x (one broadcast value a row), with no sums across
// lanes: from 9 rows of x, fewer operations per FMA than dots() below.
constexpr int kStripRows = 16;    // two vectors of output columns
constexpr int kStripDepth = 256;  // a panel of 16 KiB
constexpr int kBlockRows = 6;     // 12 sums + 2 panel vectors + a broadcast: 15 registers

// v[i][j] becomes v[j][i]: eight vectors of 8 as a square, transposed.
inline void transpose8(Floats8 (&v)[8]) {
  Floats8 t[8], u[8];
  for (int j = 0; j < 8; j += 2) {
    t[j] = __builtin_shufflevector(v[j], v[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[j + 1] = __builtin_shufflevector(v[j], v[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int j = 0; j < 8; j += 4)
    for (int h = 0; h < 2; ++h) {
      u[j + 2 * h] = __builtin_shufflevector(t[j + h], t[j + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[j + 2 * h + 1] =
          __builtin_shufflevector(t[j + h], t[j + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int j = 0; j < 4; ++j) {
    v[j] = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    v[j + 4] = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// The panel position of weight row r of a strip: r, except for BF16 weights
// on AVX2, whose 16-bit transposition (pack_strip) leaves rows 4-7 and 8-11
// swapped.
template <DType D>
constexpr int panel_lane(int r) {
#ifdef __AVX2__
  if constexpr (D == DType::BF16) return (r & 12) == 4 || (r & 12) == 8 ? r ^ 12 : r;
#endif
  return r;
}

#ifdef __AVX2__
// 16 rows x 8 columns of BF16 into the panel: transposed while 16-bit (two
// rows a register, one a lane: 24 shuffles for 128 weights, half what the
// widened floats take), then widened by interleaving with zeros.
inline void pack_bf16_columns(const char* const (&rows)[kStripRows], int64_t c, float* panel) {
  __m256i a[8];
  for (int r = 0; r < 8; ++r)
    a[r] = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(rows[r + 8] + 2 * c),
                               reinterpret_cast<const __m128i*>(rows[r] + 2 * c));
  __m256i t[8], u[8];
  for (int j = 0; j < 4; ++j) {
    t[2 * j] = _mm256_unpacklo_epi16(a[2 * j], a[2 * j + 1]);
    t[2 * j + 1] = _mm256_unpackhi_epi16(a[2 * j], a[2 * j + 1]);
  }
  for (int h = 0; h < 2; ++h)
    for (int j = 0; j < 2; ++j) {
      u[4 * h + 2 * j] = _mm256_unpacklo_epi32(t[4 * h + j], t[4 * h + j + 2]);
      u[4 * h + 2 * j + 1] = _mm256_unpackhi_epi32(t[4 * h + j], t[4 * h + j + 2]);
    }
  const __m256i zero = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i col[2] = {_mm256_unpacklo_epi64(u[j], u[j + 4]),
                            _mm256_unpackhi_epi64(u[j], u[j + 4])};
    for (int e = 0; e < 2; ++e) {
      float* dst = panel + (c + 2 * j + e) * kStripRows;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_unpacklo_epi16(zero, col[e]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + kLanes),
                          _mm256_unpackhi_epi16(zero, col[e]));
    }
  }
}
#endif

// rows[r] = row r of a strip (`strip`: its first row) from column c0; rows
// at and past `live` (past the weight's last row) point at a chunk of zeros.
template <DType D>
inline void strip_rows(const char* strip, size_t row_bytes, int64_t live, int64_t c0,
                       const char* (&rows)[kStripRows]) {
  static const float zeros[kStripDepth] = {};  // a chunk of any weight dtype
  for (int r = 0; r < kStripRows; ++r)
    rows[r] = r < live ? strip + size_t(r) * row_bytes + size_t(c0) * dtype_size(D)
                       : reinterpret_cast<const char*>(zeros);
}

// panel[c][panel_lane(r)] = row r of the strip at column c0 + c, for c <
// depth, r < kStripRows; rows at and past `live` read as zero. Unscaled:
// scales are per output column here, applied to the sums.
template <DType D>
inline void pack_strip(const char* data, size_t row_bytes, int64_t live, int64_t c0, int64_t depth,
                       float* panel) {
  const char* rows[kStripRows];
  strip_rows<D>(data, row_bytes, live, c0, rows);
  int64_t c = 0;
#ifdef __AVX2__
  if constexpr (D == DType::BF16)
    for (; c + kLanes <= depth; c += kLanes) pack_bf16_columns(rows, c, panel);
#endif
  for (; c + kLanes <= depth; c += kLanes) {
    for (int half = 0; half < kStripRows / kLanes; ++half) {
      Floats8 v[8];
      for (int r = 0; r < kLanes; ++r) v[r] = load8_widened<D>(rows[half * kLanes + r], c);
      transpose8(v);
      for (int j = 0; j < kLanes; ++j) store8(panel + (c + j) * kStripRows + half * kLanes, v[j]);
    }
  }
  for (; c < depth; ++c)
    for (int r = 0; r < kStripRows; ++r)
      panel[c * kStripRows + panel_lane<D>(r)] = widened<D>(rows[r], c);
}

// The cache lines of the chunk pack_strip takes next, fetched a few at a time
// while this one is multiplied, in the order it reads them: without it a
// chunk's arithmetic and its successor's reads from memory take turns.
struct ChunkAhead {
  const char* base = nullptr;  // the chunk's first column in its strip's first row
  size_t row_bytes = 0;
  int64_t rows = 1, next = 0, count = 0;  // rows in the strip, lines issued, lines in the chunk
  // The next line: its row in the strip and its byte offset along the row,
  // kept as it advances: dividing `next` instead, every few columns of the
  // arithmetic, cost more than the prefetch saved.
  int64_t row = 0;
  size_t column = 0;

  // The chunk after the one at column c0 of the strip from weight row r0: the
  // strip's next, or past its last the next strip's first (none past the
  // weight's last strip).
  static ChunkAhead after(const WeightView& w, int64_t r0, int64_t c0) {
    const size_t element = dtype_size(w.dtype), row_bytes = size_t(w.k) * element;
    const bool last = c0 + kStripDepth >= w.k;
    const int64_t next_c0 = last ? 0 : c0 + kStripDepth;
    const int64_t next_r0 = last ? r0 + kStripRows : r0;
    ChunkAhead ahead;
    if (next_r0 >= w.n) return ahead;
    ahead.base =
        static_cast<const char*>(w.data) + size_t(next_r0) * row_bytes + size_t(next_c0) * element;
    ahead.row_bytes = row_bytes;
    ahead.rows = std::min<int64_t>(kStripRows, w.n - next_r0);
    const int64_t bytes = std::min<int64_t>(kStripDepth, w.k - next_c0) * int64_t(element);
    ahead.count = (bytes + 63) / 64 * ahead.rows;
    return ahead;
  }

  // One line in every `spacing(steps)` of `steps` steps of a chunk's
  // arithmetic spreads the lines over all of it: the power of 2 at or below
  // its share.
  int64_t spacing(int64_t steps) const {
    int64_t every = 1;
    while (count > 0 && every * 2 * count <= steps) every *= 2;
    return every;
  }

  // The lines the arithmetic left unissued.
  void issue_rest() {
    while (next < count) issue();
  }

  void issue() {
    if (next < count) {
      __builtin_prefetch(base + size_t(row) * row_bytes + column, 0, 3);
      ++next;
      if (++row == rows) {
        row = 0;
        column += 64;
      }
    }
  }
};

// sums[i][0..kStripRows) += x row i · panel over `depth` columns, for MR rows of x.
template <int MR>
inline void panel_block(const float* x, int64_t ldx, const float* panel, int64_t depth, float* sums,
                        ChunkAhead& ahead, int64_t every) {
  static_assert(kStripRows == 2 * kLanes, "a panel row is two vectors");
  Floats8 acc[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) acc[i][h] = load8(sums + i * kStripRows + h * kLanes);
  for (int64_t c = 0; c < depth; ++c) {
    if ((c & (every - 1)) == 0) ahead.issue();
    Floats8 lo = load8(panel + c * kStripRows), hi = load8(panel + c * kStripRows + kLanes);
#if defined(__x86_64__)
    // Held in registers: GCC would otherwise fold each load into the MR FMAs
    // that use it, more loads than the core issues a cycle. Two variables, not
    // an array: an array held this way went through the stack every column.
    asm("" : "+x"(lo), "+x"(hi));
#endif
    for (int i = 0; i < MR; ++i) {
      const Floats8 a = splat8(x[i * ldx + c]);
      acc[i][0] += a * lo;
      acc[i][1] += a * hi;
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h) store8(sums + i * kStripRows + h * kLanes, acc[i][h]);
}

// f(std::integral_constant<int, R>{}) with R = rows, 1 <= rows <= MaxRows:
// a count of x's rows known at run time handed to a kernel that takes it as
// a template argument.
template <int MaxRows, class F>
inline void with_rows(int64_t rows, F&& f) {
  if constexpr (MaxRows > 1)
    if (rows < MaxRows) return with_rows<MaxRows - 1>(rows, f);
  f(std::integral_constant<int, MaxRows>{});
}

// The blocks of m rows of x, of as even a size as MaxRows allows (14 rows of
// at most 6 as 4 + 5 + 5, not 6 + 6 + 2: a block of 2 loads a vector of
// weights per two FMAs): block(first row, rows) for each.
template <int MaxRows, class Block>
inline void row_blocks(int64_t m, Block&& block) {
  const int64_t blocks = (m + MaxRows - 1) / MaxRows;
  for (int64_t b = 0, i = 0; b < blocks; ++b) {
    const int64_t rows = (m - i) / (blocks - b);
    block(i, rows);
    i += rows;
  }
}

// All m rows of x over the panel, in row_blocks of up to kBlockRows.
inline void panel_rows(const float* x, int64_t m, int64_t ldx, const float* panel, int64_t depth,
                       float* sums, ChunkAhead& ahead) {
  const int64_t every = ahead.spacing((m + kBlockRows - 1) / kBlockRows * depth);
  row_blocks<kBlockRows>(m, [&](int64_t i, int64_t rows) {
    with_rows<kBlockRows>(rows, [&](auto mr) {
      panel_block<decltype(mr)::value>(x + i * ldx, ldx, panel, depth, sums + i * kStripRows, ahead,
                                       every);
    });
  });
  ahead.issue_rest();
}

template <DType D>
void strips(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
            bool accumulate) {
  const char* data = static_cast<const char*>(w.data);
  const size_t row_bytes = size_t(w.k) * dtype_size(D);
  const int64_t count = (w.n + kStripRows - 1) / kStripRows;
  const int64_t chunks = (w.k + kStripDepth - 1) / kStripDepth;
#pragma omp parallel if (count > 1)
  {
    std::vector<float> panel(size_t(kStripDepth * kStripRows)), sums(size_t(m * kStripRows));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < count; ++s) {
      const int64_t r0 = s * kStripRows, live = std::min<int64_t>(kStripRows, w.n - r0);
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t q = 0; q < chunks; ++q) {
        const int64_t c0 = q * kStripDepth, depth = std::min<int64_t>(kStripDepth, w.k - c0);
        pack_strip<D>(data + size_t(r0) * row_bytes, row_bytes, live, c0, depth, panel.data());
        ChunkAhead ahead = ChunkAhead::after(w, r0, c0);
        panel_rows(x + c0, m, ldx, panel.data(), depth, sums.data(), ahead);
      }
      for (int64_t i = 0; i < m; ++i)
        for (int64_t r = 0; r < live; ++r) {
          const float sum = sums[size_t(i * kStripRows + panel_lane<D>(int(r)))] *
                            (w.scales ? w.scales[r0 + r] : 1.0f);
          float& o = out[i * ldo + r0 + r];
          o = accumulate ? o + sum : sum;
        }
    }
  }
}

// Up to kDotMaxRows rows of x (decode of a few sequences), the dot-product
// shape: no panel to pack, each weight vector widened in registers as it is
// read and multiplied into up to kDotBlock rows of x at once, 8 sums of 8
// lanes (dot_weight_rows weight rows a time) that keep both FMA units busy
// past their latency, every x vector loaded serving those weight rows. It
// walks the same strips and chunks as strips(), prefetching the next chunk
// likewise, and keeps each strip's sums as 8 lanes a weight row until its
// last chunk. From 9 rows strips() reuses a widened weight for more rows;
// on a Zen 3 EPYC the two were level at 12 rows, strips() 1.07x ahead at 16
// and this 1.35x ahead at 8, 1.7-2.1x at 1-4 rows against the tiles of
// scratch-widened weight rows it replaced (perf/results/portable-dots-zen3.md).
constexpr int kDotBlock = 4;  // 8 sums, 4 widened weight vectors, 2 of x, the BF16 mask
constexpr int64_t kDotMaxRows = 8;

// The weight rows a block of x's rows meets at once: 8 sums where the rows
// allow (6 at 3 rows). Each sum takes two FMAs in turn a 16 columns, so 2
// sums (one row of x against 2 weight rows) bound a core to 64 bytes of BF16
// weights each 2 FMA latencies. One row of x against a [1024 x 2048] BF16
// weight in L3, on one core of a Zen 3 EPYC, 3 alternations: 20-21 GB/s at 2
// weight rows a block, 25 at 8.
constexpr int dot_weight_rows(int64_t rows_of_x) {
  return rows_of_x == 1 ? 8 : rows_of_x == 2 ? 4 : 2;
}

// BF16 weights on AVX2 come out of a 256-bit load as 8 pairs: shifting each
// 32-bit lane left by 16 gives the even columns as floats, masking off its
// low half the odd ones (2 operations for 16 weights). x's columns are
// rearranged to match, once a call: each 16 as its 8 even then its 8 odd.
template <DType D>
constexpr bool kDotEvenOdd =
#ifdef __AVX2__
    D == DType::BF16;
#else
    false;
#endif

// Weights [c, c + 16) of a stored row as two vectors of floats, in x's order.
template <DType D>
inline void load16_widened(const char* row, int64_t c, Floats8& first, Floats8& second) {
#ifdef __AVX2__
  if constexpr (kDotEvenOdd<D>) {
    const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
    first = Floats8(_mm256_slli_epi32(pairs, 16));
    second = Floats8(_mm256_and_si256(pairs, _mm256_set1_epi32(int32_t(0xffff0000u))));
    return;
  }
#endif
  first = load8_widened<D>(row, c);
  second = load8_widened<D>(row, c + kLanes);
}

// 16 consecutive floats (a, b) as their 8 even then their 8 odd ones, and back.
inline void split_even_odd(Floats8 a, Floats8 b, Floats8& even, Floats8& odd) {
  even = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
  odd = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}
inline void join_even_odd(Floats8 even, Floats8 odd, Floats8& a, Floats8& b) {
  a = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
  b = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
}

// x's m rows, k16 columns (a multiple of 16), each 16 as its 8 even columns
// then its 8 odd ones.
inline void even_odd_order(const float* x, int64_t m, int64_t ldx, int64_t k16, float* ordered) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < k16; c += 16) {
      Floats8 even, odd;
      split_even_odd(load8(x + i * ldx + c), load8(x + i * ldx + c + kLanes), even, odd);
      store8(ordered + i * k16 + c, even);
      store8(ordered + i * k16 + c + kLanes, odd);
    }
}

// acc[i][r] += x row i · row r over the 16 columns from c, lane by lane, for
// MR rows of x (in load16_widened's column order) and WR stored rows (weights,
// or the keys of decode attention).
template <DType D, int MR, int WR>
inline void dot_group(const float* x, int64_t ldx, const char* const* rows, int64_t c,
                      Floats8 (&acc)[MR][WR]) {
  if constexpr (WR <= 2) {
    // The stored rows widened first, then each row of x loaded once.
    Floats8 first[WR], second[WR];
    for (int r = 0; r < WR; ++r) load16_widened<D>(rows[r], c, first[r], second[r]);
    for (int i = 0; i < MR; ++i) {
      Floats8 x0 = load8(x + i * ldx + c), x1 = load8(x + i * ldx + c + kLanes);
#if defined(__x86_64__)
      // Loaded once: GCC would otherwise fold each load into both FMAs that
      // use it, more loads than an AVX2 core issues a cycle.
      asm("" : "+x"(x0), "+x"(x1));
#endif
      // Two statements a sum: two FMAs, not a multiply and two adds.
      for (int r = 0; r < WR; ++r) acc[i][r] += x0 * first[r];
      for (int r = 0; r < WR; ++r) acc[i][r] += x1 * second[r];
    }
  } else {
    // Few rows of x: theirs held, each stored row widened as it is met.
    Floats8 x0[MR], x1[MR];
    for (int i = 0; i < MR; ++i) {
      x0[i] = load8(x + i * ldx + c);
      x1[i] = load8(x + i * ldx + c + kLanes);
#if defined(__x86_64__)
      asm("" : "+x"(x0[i]), "+x"(x1[i]));
#endif
    }
    for (int r = 0; r < WR; ++r) {
      Floats8 first, second;
      load16_widened<D>(rows[r], c, first, second);
      for (int i = 0; i < MR; ++i) {
        acc[i][r] += x0[i] * first;
        acc[i][r] += x1[i] * second;
      }
    }
  }
}

// partial[i][r] += x row i · weight row r over `vectors` groups of 16
// columns, lane by lane, for MR rows of x and WR weight rows (partial:
// kStripRows vectors a row of x).
template <DType D, int MR, int WR>
inline void dot_block(const float* x, int64_t ldx, const char* const* rows, int64_t vectors,
                      Floats8* partial, ChunkAhead& ahead, int64_t every) {
  Floats8 acc[MR][WR];
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < WR; ++r) acc[i][r] = partial[i * kStripRows + r];
  for (int64_t v = 0; v < vectors; ++v) {
    if ((v & (every - 1)) == 0) ahead.issue();
    dot_group<D, MR, WR>(x, ldx, rows, 16 * v, acc);
  }
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < WR; ++r) partial[i * kStripRows + r] = acc[i][r];
}

// MR rows of x against the strip's weight rows, dot_weight_rows(MR) at a time.
template <DType D, int MR>
inline void dot_strip_block(const float* x, int64_t ldx, const char* const* rows, int64_t vectors,
                            Floats8* partial, ChunkAhead& ahead, int64_t every) {
  constexpr int WR = dot_weight_rows(MR);
  for (int r = 0; r < kStripRows; r += WR)
    dot_block<D, MR, WR>(x, ldx, rows + r, vectors, partial + r, ahead, every);
}

// A weight's rows shorter than a 4 KiB page share pages with their
// neighbours, and read a few rows at once, as dot_block reads them, such a
// page sees several interleaved streams: one Zen 3 core read 768-column BF16
// rows in that order at 11.5-13.6 GB/s, in address order at 18-20 (a plain
// read; from 2048 columns on the two were level). So where decode reads rows
// in order (decode_reads_rows_in_order: AMD cores), dots() takes such a
// weight one row at a time, each in full, its sums spread over the row's
// columns; no software prefetch (8 KiB ahead measured level). At 4 rows of x
// the two orders were level from memory, at 8 this one 0.8x: past 3 rows
// dot_block's reuse of each widened weight wins.
constexpr int64_t kInOrderRowBytes = 4096, kInOrderMaxRows = 3;

// partial[i] += x row i · the stored row over `vectors` groups of 16
// columns, lane by lane, for MR rows of x: P groups in turn, each into sums of
// its own, as many as dot_block keeps (P in place of its weight rows).
template <DType D, int MR>
inline void dot_row_in_order(const float* x, int64_t ldx, const char* row, int64_t vectors,
                             Floats8* partial) {
  constexpr int P = dot_weight_rows(MR);
  Floats8 acc[P][MR][1] = {};
  const char* const rows[1] = {row};
  int64_t v = 0;
  for (; v + P <= vectors; v += P)
    for (int p = 0; p < P; ++p) dot_group<D, MR, 1>(x, ldx, rows, 16 * (v + p), acc[p]);
  for (; v < vectors; ++v) dot_group<D, MR, 1>(x, ldx, rows, 16 * v, acc[0]);
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < P; ++p) partial[i * kStripRows] += acc[p][i][0];
}

template <DType D>
void dots(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
          bool accumulate) {
  const char* data = static_cast<const char*>(w.data);
  const size_t row_bytes = size_t(w.k) * dtype_size(D);
  const int64_t k16 = w.k / 16 * 16;  // the columns past it: one at a time, at the end
  std::vector<float> ordered;
  const float* xs = x;
  int64_t ldxs = ldx;
  if constexpr (kDotEvenOdd<D>) {
    ordered.resize(size_t(m * k16));
    even_odd_order(x, m, ldx, k16, ordered.data());
    xs = ordered.data();
    ldxs = k16;
  }
  const int64_t count = (w.n + kStripRows - 1) / kStripRows;
  const bool in_order =
      decode_reads_rows_in_order() && int64_t(row_bytes) < kInOrderRowBytes && m <= kInOrderMaxRows;
  // In order, a strip's rows are taken whole, not a chunk at a time.
  const int64_t chunks = in_order ? 0 : (k16 + kStripDepth - 1) / kStripDepth;
  // dot_block calls a column of the strip takes, for the prefetch spacing.
  int64_t steps_per_vector = 0;
  row_blocks<kDotBlock>(m, [&](int64_t, int64_t block_rows) {
    steps_per_vector += kStripRows / dot_weight_rows(block_rows);
  });
#pragma omp parallel if (count > 1)
  {
    std::vector<Floats8> partial(size_t(m * kStripRows));
#pragma omp for schedule(static)
    for (int64_t s = 0; s < count; ++s) {
      const int64_t r0 = s * kStripRows, live = std::min<int64_t>(kStripRows, w.n - r0);
      std::fill(partial.begin(), partial.end(), Floats8{});
      if (in_order)
        with_rows<kInOrderMaxRows>(m, [&](auto mr) {
          for (int64_t r = 0; r < live; ++r)
            dot_row_in_order<D, decltype(mr)::value>(xs, ldxs, data + size_t(r0 + r) * row_bytes,
                                                     k16 / 16, partial.data() + r);
        });
      for (int64_t q = 0; q < chunks; ++q) {
        const int64_t c0 = q * kStripDepth, vectors = std::min<int64_t>(kStripDepth, k16 - c0) / 16;
        const char* rows[kStripRows];
        strip_rows<D>(data + size_t(r0) * row_bytes, row_bytes, live, c0, rows);
        ChunkAhead ahead = ChunkAhead::after(w, r0, c0);
        const int64_t every = ahead.spacing(steps_per_vector * vectors);
        row_blocks<kDotBlock>(m, [&](int64_t i, int64_t block_rows) {
          with_rows<kDotBlock>(block_rows, [&](auto mr) {
            dot_strip_block<D, decltype(mr)::value>(xs + i * ldxs + c0, ldxs, rows, vectors,
                                                    partial.data() + i * kStripRows, ahead, every);
          });
        });
        ahead.issue_rest();
      }
      for (int64_t i = 0; i < m; ++i)
        for (int64_t r = 0; r < live; ++r) {
          const char* row = data + size_t(r0 + r) * row_bytes;
          float sum = sum8(partial[size_t(i * kStripRows + r)]);
          for (int64_t c = k16; c < w.k; ++c) sum += x[i * ldx + c] * widened<D>(row, c);
          sum *= w.scales ? w.scales[r0 + r] : 1.0f;
          float& o = out[i * ldo + r0 + r];
          o = accumulate ? o + sum : sum;
        }
    }
  }
}

// out = x · wᵀ (+ out): dots() up to kDotMaxRows rows of x, strips() past it.
template <DType D>
void streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
               bool accumulate) {
  if (m <= kDotMaxRows) return dots<D>(x, m, ldx, w, out, ldo, accumulate);
  strips<D>(x, m, ldx, w, out, ldo, accumulate);
}

}  // namespace
}  // namespace shardlm::cpu
