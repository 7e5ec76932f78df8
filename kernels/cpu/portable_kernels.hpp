// The CPU kernels cpu_kernels.cpp builds where the compiler targets no
// AVX-512 (an AVX2 machine, say, where -march=native leaves it out): the
// same functions in GCC's generic vectors of 8 floats, which the compiler
// maps onto the machine's registers (one AVX register, or two SSE ones).
// Included by cpu_kernels.cpp alone, internal to it like exp16.hpp: these
// replace the AVX-512 kernels, not add to them.
//
// The streaming matmul has two shapes here: dot products of widened weight
// rows for a few rows of x, and from kStripsMinRows rows the sgemm shape of
// strips(), whose transposed panels let a weight vector serve six rows of x
// for two loads. What is left to the AVX-512 build: the BF16 and VNNI dot
// products. (The portable fused decode attention lives in cpu_kernels.cpp,
// beside the AVX-512 one, whose constants and prefetches it shares.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
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

// Below kStripsMinRows rows of x (decode of a few sequences, where the
// weights' read from memory sets the pace): a tile is kPortableRowTile weight
// rows, widened once into scratch, against kPortableBatchTile rows of x at a
// time: 8 independent sums keep two FMA units busy past their latency, and
// each x vector loaded serves 4 weight rows.
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

// The sgemm-shaped kernel for several rows of x: a strip of kStripRows weight
// rows is widened and transposed, kStripDepth columns at a time, into a panel
// [depth][kStripRows] that stays in L1; each loaded panel vector then serves
// every row of a block of x (one broadcast value a row), with no sums across
// lanes. The dot-product tile above compiles to 10 loads per 8 FMAs (GCC folds
// each weight load into both FMAs that use it), more than the two load ports
// of an AVX2 core keep up with.
constexpr int kStripRows = 16;    // two vectors of output columns
constexpr int kStripDepth = 256;  // a panel of 16 KiB
constexpr int kBlockRows = 6;     // 12 sums + 2 panel vectors + a broadcast: 15 registers
// Rows of x from which streaming() takes strips(): on a Zen 3 EPYC the two
// were level at 4 to 8 rows with the weights from memory, and strips() 1.18x
// ahead at 8 rows with them in cache (1.57x at 64); below 8 the panel's
// transposition costs about what it saves (perf/results/portable-strips-zen3.md).
constexpr int64_t kStripsMinRows = 8;

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

// panel[c][panel_lane(r)] = row r of the strip at column c0 + c, for c <
// depth, r < kStripRows; rows at and past `live` read as zero. Unscaled:
// scales are per output column here, applied to the sums.
template <DType D>
inline void pack_strip(const char* data, size_t row_bytes, int64_t live, int64_t c0, int64_t depth,
                       float* panel) {
  const char* rows[kStripRows];
  static const float zeros[kStripDepth] = {};
  for (int r = 0; r < kStripRows; ++r)
    rows[r] = r < live ? data + size_t(r) * row_bytes + c0 * int64_t(dtype_size(D))
                       : reinterpret_cast<const char*>(zeros);  // past the last row
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

template <int MR = kBlockRows>
inline void panel_block_of(int64_t rows, const float* x, int64_t ldx, const float* panel,
                           int64_t depth, float* sums, ChunkAhead& ahead, int64_t every) {
  if constexpr (MR > 1)
    if (rows < MR) return panel_block_of<MR - 1>(rows, x, ldx, panel, depth, sums, ahead, every);
  panel_block<MR>(x, ldx, panel, depth, sums, ahead, every);
}

// All m rows of x over the panel, in blocks of as even a size as kBlockRows
// allows (8 rows as 4 + 4, not 6 + 2: a block of 2 loads a panel vector per
// two FMAs).
inline void panel_rows(const float* x, int64_t m, int64_t ldx, const float* panel, int64_t depth,
                       float* sums, ChunkAhead& ahead) {
  const int64_t blocks = (m + kBlockRows - 1) / kBlockRows;
  // A line every `every` columns of each block: spread over the whole chunk's
  // arithmetic, the power of 2 at or below its share.
  int64_t every = 1;
  while (ahead.count > 0 && every * 2 * ahead.count <= blocks * depth) every *= 2;
  for (int64_t b = 0, i = 0; b < blocks; ++b) {
    const int64_t rows = (m - i) / (blocks - b);
    panel_block_of(rows, x + i * ldx, ldx, panel, depth, sums + i * kStripRows, ahead, every);
    i += rows;
  }
  while (ahead.next < ahead.count) ahead.issue();
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

// out = x · wᵀ (+ out). From kStripsMinRows rows of x, strips(); below it
// OpenMP splits the tiles of weight rows over the threads, and each tile is
// widened (scales applied) into a buffer that stays in cache while every row
// of x passes over it.
template <DType D>
void streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
               bool accumulate) {
  if (m >= kStripsMinRows) return strips<D>(x, m, ldx, w, out, ldo, accumulate);
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
