#include "kernels/cpu/cpu_kernels.hpp"

#include <fmt/format.h>
#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <vector>

#include "kernels/math.hpp"

// The vector kernels below are written for AVX-512 (F, BW, VL and DQ); where
// the compiler targets less (-march=native on an AVX2 machine), the portable
// kernels of portable_kernels.hpp take their place.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SHARDLM_AVX512 1
#include "kernels/cpu/exp16.hpp"
#else
#define SHARDLM_AVX512 0
#include "kernels/cpu/portable_kernels.hpp"
#endif

// GCC 12 reports its own _mm512_undefined_*() (a self-initialised variable
// inside the AVX-512 intrinsics) as uninitialised once they are inlined here;
// the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::cpu {
namespace {

// F32 scratch on 64-byte boundaries: a vector load that straddles two cache
// lines costs two, which in the streaming kernel's inner loop (a dozen loads
// per step) was measured to cost a third of its speed.
using AlignedFloats = std::unique_ptr<float[], decltype(&std::free)>;
AlignedFloats aligned_floats(size_t count) {
  void* memory = std::aligned_alloc(64, std::max<size_t>(64, (count * 4 + 63) / 64 * 64));
  if (!memory) throw std::bad_alloc();
  return AlignedFloats(static_cast<float*>(memory), &std::free);
}

#if SHARDLM_AVX512
// The lanes of a 16-float vector that hold the `left` values still to go.
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

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

// The streaming kernel walks its columns in steps: 16 for F32, F16 and I8
// (one vector of widened weights), 32 for BF16, whose 32 values load as one
// vector and widen into two with one integer op each: the even columns
// (shifted up) and the odd columns (masked), so x is prepared with each 32-column
// block split into its 16 even and 16 odd columns. Widening bf16 with
// vpmovzxwd + shift cost a shuffle per 16 weights, which with a batch of rows
// left the FMA units half idle.
template <DType D>
constexpr int64_t step_cols() {
  return D == DType::BF16 ? 32 : 16;
}

// A tile is 6 weight rows x 3 rows of x: 18 accumulators, 6 x vectors (even
// and odd columns for BF16) and the widened weights fit the 32 registers
// without spilling. Measured on one core with the weights in L2 (GFLOP/s at
// 8 and 32 rows of x, BF16): 6x3 128/171, 8x3 122/144, 8x2 116/140, 4x4 77/109,
// against 161 for oneDNN sgemm 2048^3.
constexpr int kRowTile = 6;    // weight rows per tile
constexpr int kBatchTile = 3;  // rows of x per tile
// Columns per chunk: a tile's weights over a chunk (24 KiB) stay in L1 while
// every group of x rows passes over them, so the weights come from memory
// once per step for all rows, however many. x's rows may come from L2: on the
// EPYC, x from L2 and x from L1 ran the 6x3 tile at the same rate, while
// chunks sized for weights and x together (1024 BF16 columns) ran 32 and 64
// rows 4-5% slower than these (2048), and 512 columns 20% slower: each
// chunk starts and ends every group's accumulators.
template <DType D>
constexpr int64_t chunk_cols() {
  constexpr int64_t bytes_per_col = kRowTile * int64_t(dtype_size(D));
  return (int64_t(24) << 10) / bytes_per_col / step_cols<D>() * step_cols<D>();
}

// x rows as the kernel reads them: as they are, or for BF16 weights split
// into even and odd columns per 32-column block and zero-padded to a whole block.
struct PreparedRows {
  AlignedFloats storage{nullptr, &std::free};
  const float* data = nullptr;
  int64_t ld = 0;
};

template <DType D>
PreparedRows prepare_rows(const float* x, int64_t m, int64_t ldx, int64_t k) {
  PreparedRows p;
  if constexpr (D != DType::BF16) {
    p.data = x;
    p.ld = ldx;
  } else {
    // Two permutes a block: this runs on one thread before the others start
    // (a model's worth of 1b's matmuls at 8 rows took 3% less time than with
    // a scalar scatter).
    p.ld = (k + 31) / 32 * 32;
    p.storage = aligned_floats(size_t(m * p.ld));
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t i = 0; i < m; ++i) {
      const float* src = x + i * ldx;
      float* dst = p.storage.get() + i * p.ld;
      for (int64_t j = 0; j < k; j += 32) {
        const __m512 lo = _mm512_maskz_loadu_ps(tail_mask(k - j), src + j);
        const __m512 hi = _mm512_maskz_loadu_ps(tail_mask(k - j - 16), src + j + 16);
        _mm512_store_ps(dst + j, _mm512_permutex2var_ps(lo, even, hi));
        _mm512_store_ps(dst + j + 16, _mm512_permutex2var_ps(lo, odd, hi));
      }
    }
    p.data = p.storage.get();
  }
  return p;
}

// A tile's weight rows: `first` and the rows after it, `stride` bytes apart.
// Addressed as two pointers and a stride (row r at the pointer of its half plus
// (r % 3) * stride, which x86 addressing computes for free): an array of six
// row pointers left too few general registers for the loop and made the
// compiler keep two rows' weights on the stack.
struct WeightRows {
  const char* first;
  ptrdiff_t stride;
  [[gnu::always_inline]] const char* row(const char* at, int r) const {
    const char* half = r < 3 ? at : at + 3 * stride;
    return half + (r % 3) * stride;
  }
};

// acc[r][i] += weights of row r · x row i over one step of columns at kk;
// `tail` masks the columns past k (the x padding of BF16 is zero already).
template <DType D, int NR, int MR, bool Tail>
[[gnu::always_inline]] inline void stream_step(const float* x, int64_t ldx, WeightRows rows,
                                               int64_t kk, int64_t k, __m512 (&acc)[NR][MR]) {
  constexpr size_t elem = dtype_size(D);
  const char* at = rows.first + size_t(kk) * elem;
  if constexpr (D == DType::BF16) {
    const __mmask32 mask = Tail ? __mmask32((uint64_t(1) << (k - kk)) - 1) : ~__mmask32(0);
    __m512 xe[MR], xo[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      xe[i] = _mm512_loadu_ps(x + i * ldx + kk);
      xo[i] = _mm512_loadu_ps(x + i * ldx + kk + 16);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const char* p = rows.row(at, r);
      const __m512i raw = Tail ? _mm512_maskz_loadu_epi16(mask, p) : _mm512_loadu_si512(p);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      const __m512 odd =
          _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(int32_t(0xffff0000u))));
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        acc[r][i] = _mm512_fmadd_ps(even, xe[i], acc[r][i]);
        acc[r][i] = _mm512_fmadd_ps(odd, xo[i], acc[r][i]);
      }
    }
  } else {
    const __mmask16 mask = Tail ? __mmask16((1u << (k - kk)) - 1) : __mmask16(0xffff);
    __m512 xv[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
      xv[i] =
          Tail ? _mm512_maskz_loadu_ps(mask, x + i * ldx + kk) : _mm512_loadu_ps(x + i * ldx + kk);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512 wv = load16<D>(rows.row(at, r), mask);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
    }
  }
}

// Weight rows r0 .. r0 + NR - 1 times x rows m0 .. m0 + MR - 1 over columns
// [c0, c1). `partial` keeps the accumulators between chunks ([NR][MR] vectors);
// the first chunk starts from zero and the last writes the sums to out.
// Without `partial` every chunk starts from zero and adds its sums to out
// (stream_tile_chunk).
// Each step asks for up to `prefetch.per_step` lines of the weights this
// thread reads next, in address order (see stream_rows).
struct PrefetchStream {
  const char* next = nullptr;
  const char* end = nullptr;
  int per_step = 0;
};

template <DType D, int NR, int MR>
[[gnu::always_inline]] inline void stream_chunk(const float* x, int64_t ldx, WeightRows rows,
                                                int64_t c0, int64_t c1, int64_t k, float* partial,
                                                float* out, int64_t ldo, const float* scales,
                                                bool accumulate, PrefetchStream& prefetch) {
  constexpr int64_t S = step_cols<D>();
  __m512 acc[NR][MR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
      acc[r][i] =
          c0 == 0 || !partial ? _mm512_setzero_ps() : _mm512_loadu_ps(partial + (r * MR + i) * 16);
  const int64_t end = std::min(c1, k), full_end = end - (end - c0) % S;
  const char* next = prefetch.next;
  const char* const prefetch_end = prefetch.end;
  const int per_step = prefetch.per_step;
  int64_t kk = c0;
  for (; kk < full_end; kk += S) {
    for (int p = 0; p < per_step && next < prefetch_end; ++p, next += 64)
      _mm_prefetch(next, _MM_HINT_T1);
    stream_step<D, NR, MR, false>(x, ldx, rows, kk, k, acc);
  }
  prefetch.next = next;
  if (kk < end) stream_step<D, NR, MR, true>(x, ldx, rows, kk, k, acc);
  if (c1 < k && partial) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) _mm512_storeu_ps(partial + (r * MR + i) * 16, acc[r][i]);
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const float scale = scales ? scales[r] : 1.0f;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      float* o = out + i * ldo + r;
      const float v = _mm512_reduce_add_ps(acc[r][i]) * scale;
      *o = accumulate ? *o + v : v;
    }
  }
}

// Columns a BF16 row of x is padded to (whole steps), else k: where the
// chunks of a row end.
template <DType D>
int64_t padded_cols(const PreparedRows& x, int64_t k) {
  return D == DType::BF16 ? x.ld : k;
}

// The tile `rows` times every group of 3 rows of x (and the 1 or 2 left)
// over the columns [c0, c1), group g asking for the lines of prefetch_of(g).
// With `partial` each group keeps its accumulators there between chunks;
// without, each adds its sums to out.
template <DType D, int NR, typename PrefetchOf>
[[gnu::always_inline]] inline void stream_groups(const PreparedRows& x, int64_t m, WeightRows rows,
                                                 int64_t c0, int64_t c1, int64_t k, float* partial,
                                                 float* out, int64_t ldo, const float* scales,
                                                 bool accumulate, PrefetchOf&& prefetch_of) {
  int64_t g = 0, m0 = 0;
  for (; m0 + kBatchTile <= m; ++g, m0 += kBatchTile)
    stream_chunk<D, NR, kBatchTile>(x.data + m0 * x.ld, x.ld, rows, c0, c1, k,
                                    partial ? partial + m0 * NR * 16 : nullptr, out + m0 * ldo, ldo,
                                    scales, accumulate, prefetch_of(g));
  const float* xm = x.data + m0 * x.ld;
  float* pm = partial ? partial + m0 * NR * 16 : nullptr;
  float* om = out + m0 * ldo;
  static_assert(kBatchTile == 3, "the rows left over are 1 or 2");
  switch (m - m0) {
    case 2:
      stream_chunk<D, NR, 2>(xm, x.ld, rows, c0, c1, k, pm, om, ldo, scales, accumulate,
                             prefetch_of(g));
      break;
    case 1:
      stream_chunk<D, NR, 1>(xm, x.ld, rows, c0, c1, k, pm, om, ldo, scales, accumulate,
                             prefetch_of(g));
      break;
    default: break;
  }
}

// NR weight rows from r0 times all m rows of x, a chunk of columns at a time:
// each chunk of the tile is read from memory by the first group of x rows
// and from L1 by the others. With `prefetch_ahead` > 0 the NR rows that many
// bytes further on (the tile this thread reads next, or a row further ahead;
// consecutive rows, so one range of memory) are asked for into L2 in address
// order, a few lines a step over every group's steps. Asked for by the first
// group alone, the six rows came as a burst while the memory idled through
// the other groups: on the EPYC, spread, 32 and 64 rows from memory ran
// 5-7% faster (spreading them row by row over the groups ran the same as
// in address order; two tiles ahead no faster than one).
template <DType D, int NR>
void stream_rows(const PreparedRows& x, int64_t m, const char* w, int64_t k, int64_t r0, float* out,
                 int64_t ldo, const float* scales, bool accumulate, ptrdiff_t prefetch_ahead,
                 float* partial) {
  constexpr int64_t C = chunk_cols<D>();
  constexpr size_t elem = dtype_size(D);
  const WeightRows rows{w + size_t(r0) * size_t(k) * elem, ptrdiff_t(size_t(k) * elem)};
  const int64_t cols = padded_cols<D>(x, k);
  const int64_t groups = (m + kBatchTile - 1) / kBatchTile;
  PrefetchStream prefetch;
  if (prefetch_ahead > 0) {
    prefetch.next = rows.first + prefetch_ahead;
    prefetch.end = prefetch.next + NR * rows.stride;
    // The NR rows' lines over all groups' steps, rounded up.
    constexpr int64_t step_bytes = NR * step_cols<D>() * int64_t(elem);
    prefetch.per_step = int((step_bytes + 64 * groups - 1) / (64 * groups));
  }
  for (int64_t c0 = 0; c0 < cols; c0 += C) {
    const int64_t c1 = std::min(cols, c0 + C);
    const int64_t c1k = c1 >= cols ? k : c1;  // the last chunk ends at k
    stream_groups<D, NR>(x, m, rows, c0, c1k, k, partial, out + r0, ldo,
                         scales ? scales + r0 : nullptr, accumulate,
                         [&](int64_t) -> PrefetchStream& { return prefetch; });
  }
}

// One chunk of columns [c0, c0 + chunk_cols) of the tile at r0 times all m
// rows of x, its sums added to out (written where !accumulate). Where x's
// rows take more than half of L2, streaming() has every tile of a thread go
// over one chunk before any goes over the next, so that chunk of x stays in
// L2 while the weights stream past; going over a tile's chunks in turn read
// all of x from L3 for every tile. Group g < NR asks for row g of the next
// tile over the same columns, a line a step (at least as fast as it reads).
template <DType D, int NR>
void stream_tile_chunk(const PreparedRows& x, int64_t m, const char* w, int64_t k, int64_t r0,
                       int64_t c0, float* out, int64_t ldo, const float* scales, bool accumulate,
                       bool prefetch_next) {
  constexpr size_t elem = dtype_size(D);
  const WeightRows rows{w + size_t(r0) * size_t(k) * elem, ptrdiff_t(size_t(k) * elem)};
  const int64_t cols = padded_cols<D>(x, k);
  const int64_t c1 = std::min(cols, c0 + chunk_cols<D>()), c1k = c1 >= cols ? k : c1;
  PrefetchStream prefetch;
  stream_groups<D, NR>(x, m, rows, c0, c1k, k, nullptr, out + r0, ldo,
                       scales ? scales + r0 : nullptr, accumulate,
                       [&](int64_t g) -> PrefetchStream& {
                         prefetch = {};
                         if (prefetch_next && g < NR) {
                           prefetch.next = rows.first + (NR + g) * rows.stride + c0 * int64_t(elem);
                           prefetch.end = prefetch.next + (c1k - c0) * int64_t(elem);
                           prefetch.per_step = 1;
                         }
                         return prefetch;
                       });
}

// Half of this core's L2 (1 MiB where the CPU does not say): the x rows
// above which the tiles go chunk by chunk (stream_tile_chunk).
int64_t x_rows_in_l2_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return int64_t(l2 > 0 ? l2 : 1 << 20) / 2;
  }();
  return bytes;
}

// Reading a row at a time (decode_reads_rows_in_order), the row this far
// ahead is asked for: 4 KiB (one row of k = 2048 BF16) read 1.7x slower than
// 8 at k = 768, and 16 no faster than 8.
constexpr ptrdiff_t kRowOrderPrefetchBytes = 8192;
// Reading pairs of rows (stream_row_pair_bf16), the pair this many pairs on.
constexpr int64_t kRowPairs = 2;
// Pairs of rows a block (of 256 KiB at k = 2048) whose columns go by chunks
// when x's rows do not fit in L1: 16, 32 and 64 measured the same.
constexpr int64_t kPairBlock = 32;

// Two BF16 weight rows, r0 and r0 + 1, times MR rows of x (4 to 6) over the
// columns [c0, c1) in one pass: 2 x MR accumulators, the x vectors loaded
// from L1 by each step's FMAs, and the line `ahead` bytes on asked for.
// Unlike the tiles of stream_rows, every weight byte is widened once and read
// in one pass (the tiles go over each chunk once per 3 rows of x).
template <int MR>
void stream_row_pair_bf16(const PreparedRows& x, const char* w, int64_t k, int64_t r0, int64_t c0,
                          int64_t c1, float* out, int64_t ldo, bool accumulate, ptrdiff_t ahead) {
  const char* row0 = w + size_t(r0) * size_t(k) * 2;
  const char* row1 = row0 + size_t(k) * 2;
  __m512 acc[2][MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc[0][i] = acc[1][i] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(int32_t(0xffff0000u));
  for (int64_t kk = c0; kk < c1; kk += 32) {
    const __mmask32 mask =
        kk + 32 <= k ? ~__mmask32(0) : __mmask32((uint64_t(1) << std::max<int64_t>(0, k - kk)) - 1);
    if (ahead) {
      _mm_prefetch(row0 + kk * 2 + ahead, _MM_HINT_T0);
      _mm_prefetch(row1 + kk * 2 + ahead, _MM_HINT_T0);
    }
    const __m512i raw0 = _mm512_maskz_loadu_epi16(mask, row0 + kk * 2);
    const __m512i raw1 = _mm512_maskz_loadu_epi16(mask, row1 + kk * 2);
    const __m512 e0 = _mm512_castsi512_ps(_mm512_slli_epi32(raw0, 16));
    const __m512 o0 = _mm512_castsi512_ps(_mm512_and_si512(raw0, high));
    const __m512 e1 = _mm512_castsi512_ps(_mm512_slli_epi32(raw1, 16));
    const __m512 o1 = _mm512_castsi512_ps(_mm512_and_si512(raw1, high));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float* xi = x.data + i * x.ld + kk;
      const __m512 xe = _mm512_loadu_ps(xi), xo = _mm512_loadu_ps(xi + 16);
      acc[0][i] = _mm512_fmadd_ps(e0, xe, acc[0][i]);
      acc[1][i] = _mm512_fmadd_ps(e1, xe, acc[1][i]);
      acc[0][i] = _mm512_fmadd_ps(o0, xo, acc[0][i]);
      acc[1][i] = _mm512_fmadd_ps(o1, xo, acc[1][i]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int r = 0; r < 2; ++r) {
      float* o = out + i * ldo + r0 + r;
      const float v = _mm512_reduce_add_ps(acc[r][i]);
      *o = accumulate ? *o + v : v;
    }
}

template <DType D>
void streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
               bool accumulate) {
  const char* data = static_cast<const char*>(w.data);
  const PreparedRows prepared = prepare_rows<D>(x, m, ldx, w.k);
  const int64_t tiles = (w.n + kRowTile - 1) / kRowTile;
#pragma omp parallel if (tiles > 1)
  {
    const AlignedFloats partial = aligned_floats(size_t(kRowTile * (m + kBatchTile) * 16));
    // Static split: each thread streams one contiguous range of weight rows.
    const ptrdiff_t row_bytes = ptrdiff_t(size_t(w.k) * dtype_size(D));
    // x's rows are read again for every weight row: only while they fit in
    // half of L1 (a 48 KiB L1 on the EPYC; 3 rows of k = 5632 from L2 read
    // the weights at 20 GB/s against 32 a tile at a time).
    const int64_t x_bytes = m * ((w.k + 31) / 32 * 32) * int64_t(sizeof(float));
    const bool x_in_l1 = x_bytes <= (24 << 10);
    // 4 to 6 rows of x: pairs of weight rows in one pass each, in address
    // order, a block of kPairBlock pairs at a time. Where x's rows take more
    // than 32 KiB (6 rows of 2048 columns: 48 KiB) the block goes over its
    // columns in chunks whose x stays in L1. Measured against the tiles on
    // the same EPYC (GB/s of weights, 2 threads, medians of 4 alternations):
    // 2048 x 768 at 4 rows 34 against 29; 5632 x 2048 at 4 rows 33 against
    // 30; at 4 and 5 rows chunked no faster (26 against 30, 32 against 30):
    // those keep the tiles. From 7 rows the tiles, with their prefetches
    // spread over the groups of x rows (stream_rows), read faster (three
    // alternations, 1b's shapes: 8 rows 32-38 against 26-35 GB/s, 7 rows
    // 32-38 against 29-33; 4-6 rows within a few percent either way).
    const bool pairs_path = D == DType::BF16 && m > kBatchTile && m <= 6 &&
                            (x_bytes <= (32 << 10) || m >= 6) && decode_reads_rows_in_order();
    if (pairs_path) {
      const int64_t chunk = std::max<int64_t>(32, (int64_t(32) << 10) / (m * 4) / 32 * 32);
      const int64_t pairs = w.n / 2, blocks = (pairs + kPairBlock - 1) / kPairBlock;
      const ptrdiff_t ahead = 2 * kRowPairs * row_bytes;
      constexpr decltype(&stream_row_pair_bf16<4>) kPairKernels[] = {
          stream_row_pair_bf16<4>, stream_row_pair_bf16<5>, stream_row_pair_bf16<6>};
      const auto pair_kernel = kPairKernels[m - 4];
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t c0 = 0; c0 < prepared.ld; c0 += chunk) {
          const int64_t c1 = std::min(prepared.ld, c0 + chunk);
          const bool add = accumulate || c0 > 0;  // later chunks add to the first's sums
          for (int64_t pair = b * kPairBlock; pair < std::min(pairs, (b + 1) * kPairBlock);
               ++pair) {
            const int64_t r0 = 2 * pair;
            const ptrdiff_t a = r0 + 2 * kRowPairs + 2 <= w.n ? ahead : 0;
            pair_kernel(prepared, data, w.k, r0, c0, c1, out, ldo, add, a);
          }
        }
      if (w.n % 2)
#pragma omp single nowait
        stream_rows<D, 1>(prepared, m, data, w.k, w.n - 1, out, ldo, w.scales, accumulate, 0,
                          partial.get());
    } else if (m <= kBatchTile && x_in_l1 && decode_reads_rows_in_order()) {
      // One weight row at a time, in address order, asking for the row
      // kRowOrderPrefetchBytes or more ahead.
      const int64_t ahead =
          std::max<int64_t>(1, (kRowOrderPrefetchBytes + row_bytes - 1) / row_bytes);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < w.n; ++r)
        stream_rows<D, 1>(prepared, m, data, w.k, r, out, ldo, w.scales, accumulate,
                          r + ahead < w.n ? ahead * row_bytes : 0, partial.get());
    } else if (x_bytes > x_rows_in_l2_bytes() && m >= kRowTile * kBatchTile) {
      // x's rows past half of L2, and a group of x rows for each row of the
      // next tile to ask for: chunk by chunk over all of this thread's
      // tiles (the same static split every chunk, so each tile's outputs
      // stay with one thread and no barrier is needed between chunks).
      const int64_t cols = padded_cols<D>(prepared, w.k);
      const int64_t whole = w.n / kRowTile;
      for (int64_t c0 = 0; c0 < cols; c0 += chunk_cols<D>()) {
#pragma omp for schedule(static) nowait
        for (int64_t t = 0; t < whole; ++t)
          stream_tile_chunk<D, kRowTile>(prepared, m, data, w.k, t * kRowTile, c0, out, ldo,
                                         w.scales, accumulate || c0 > 0, t + 1 < whole);
      }
#pragma omp single nowait
      for (int64_t r = whole * kRowTile; r < w.n; ++r)
        stream_rows<D, 1>(prepared, m, data, w.k, r, out, ldo, w.scales, accumulate, 0,
                          partial.get());
    } else {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t r0 = t * kRowTile;
        if (r0 + kRowTile <= w.n) {
          // The next tile's rows at the offset being read now: rows of a few
          // KB are too short for the hardware prefetcher to ramp up on each
          // of the NR streams, and the next tile is where this thread goes
          // next. The last tile of the matrix has no next tile to prefetch.
          stream_rows<D, kRowTile>(prepared, m, data, w.k, r0, out, ldo, w.scales, accumulate,
                                   r0 + 2 * kRowTile <= w.n ? kRowTile * row_bytes : 0,
                                   partial.get());
        } else {
          for (int64_t r = r0; r < w.n; ++r)
            stream_rows<D, 1>(prepared, m, data, w.k, r, out, ldo, w.scales, accumulate, 0,
                              partial.get());
        }
      }
    }
  }
}

#endif  // SHARDLM_AVX512

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

}  // namespace

#if SHARDLM_AVX512
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
#else
void exp_inplace(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store8(x + i, exp8(load8(x + i)));
  if (i < n) {  // the tail through one padded vector
    float tail[kLanes] = {};
    std::copy(x + i, x + n, tail);
    store8(tail, exp8(load8(tail)));
    std::copy(tail, tail + (n - i), x + i);
  }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  // silu(g) = g / (1 + exp(-g)), as math::silu computes it.
  const int64_t whole = n / kLanes * kLanes;
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < whole; i += kLanes) {
    const Floats8 g = load8(gate + i);
    store8(out + i, g / (1.0f + exp8(-g)) * load8(up + i));
  }
  for (int64_t i = whole; i < n; ++i) out[i] = math::silu(gate[i]) * up[i];
}
#endif

namespace {

// Rows [begin, begin + count) of a K or V cache of `kv` values, head_dim
// wide, as F32: the cache itself when it is F32, else widened into `buffer`.
const float* kv_rows_f32(const void* cache, DType kv, int64_t begin, int64_t count,
                         int64_t head_dim, float* buffer) {
  if (kv == DType::F32) return static_cast<const float*>(cache) + begin * head_dim;
  // Whole vectors, no scale: this pass is on the path of every decode step.
  const auto* src = static_cast<const uint16_t*>(cache) + begin * head_dim;
  const int64_t n = count * head_dim;
#if SHARDLM_AVX512
  const int64_t full = n / 32 * 32;
  if (kv == DType::BF16) {
    for (int64_t i = 0; i < full; i += 32) {
      const __m512i a = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i)));
      const __m512i b = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i + 16)));
      _mm512_storeu_ps(buffer + i, _mm512_castsi512_ps(_mm512_slli_epi32(a, 16)));
      _mm512_storeu_ps(buffer + i + 16, _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)));
    }
  } else {
    for (int64_t i = 0; i < full; i += 32) {
      _mm512_storeu_ps(buffer + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
      _mm512_storeu_ps(buffer + i + 16,
                       _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i + 16))));
    }
  }
#else
  const int64_t full = 0;
#endif
  if (full < n) {
    const char* tail = reinterpret_cast<const char*>(src + full);
    if (kv == DType::BF16)
      widen_row<DType::BF16>(tail, n - full, 1.0f, buffer + full);
    else
      widen_row<DType::F16>(tail, n - full, 1.0f, buffer + full);
  }
  return buffer;
}

// Keys per online-softmax step: scores a block of keys at a time, then
// the softmax and the P.V products over all of them, so that a step's chain
// of dependent work (the row maxima, the shrink's exp, the sums' loads and
// permutations) is paid once per 64 keys, not once per 16. The portable
// kernel's AVX2 steps cost more: 128 keys, 4 % faster than 64 on a Zen 3
// EPYC (3 rows over 1024 BF16 keys in L2).
constexpr int64_t kDecodeStepKeys = SHARDLM_AVX512 ? 64 : 128;

#if SHARDLM_AVX512
constexpr int kDecodeRowBlock = 4;  // query rows whose output sums stay in registers

// Each block of 16 keys of the AVX-512 fused decode kernel asks for the K
// and V lines of the block this many keys on (into L1): the hardware
// prefetcher does not follow the two streams read a block at a time in turn.
// On a 2-core EPYC, 384 caches of 4096 BF16 keys (G = 3, 2 threads, 5
// alternations): 14.4 ms at 256 keys, 12.6-12.8 at 16 or 32, 25-32 without.
// (With one 16-key step at a time, 256 keys on was the best distance.)
// The L1 prefetches alone keep too few lines in flight to stream (the fill
// buffers bound them), so each block also asks for the block
// kDecodePrefetchL2Keys on into L2: 384 caches, G = 3, 16.2 -> 14.6 ms
// (6 alternations; 256 keys 14.7, 1024 no better); in L2 the extra
// prefetches cost 0.5 us per 1024 keys.
constexpr int64_t kDecodePrefetchKeys = 32, kDecodePrefetchL2Keys = 384;

// The K and V lines of `bytes` from `offset` into each cache, with
// __builtin_prefetch's `kLocality` (3: into L1 as prefetcht0, 2: into L2 as
// prefetcht1; GCC and Clang type _mm_prefetch's hint differently).
template <int kLocality>
inline void prefetch_kv_block(const KVView& kv, size_t offset, size_t bytes) {
  const char* k = static_cast<const char*>(kv.k) + offset;
  const char* v = static_cast<const char*>(kv.v) + offset;
  for (size_t line = 0; line < bytes; line += 64) {
    __builtin_prefetch(k + line, 0, kLocality);
    __builtin_prefetch(v + line, 0, kLocality);
  }
}

// Decode attention, fused: query rows that share one position (the query
// heads of one token over its KV head) meet the keys 16 at a time, K and V
// widened in registers as they are read, no sgemm call and no F32 copy of the
// cache. The sgemm form spent most of its time outside the arithmetic at one
// token's few rows: 240-300 us for 4 heads over 4096 BF16 keys on one core,
// about 4 GB/s of cache read from L2.

// Lane j of the result: the sum of the 16 lanes of v[j]. Summing each vector
// on its own (a reduction per query row and key) cost more than the dot
// products; this transposes as it adds, 45 operations for all 16.
inline __m512 sum_lanes_16(const __m512 (&v)[16]) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit block: [a0+a2, b0+b2, a1+a3, b1+b3]
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per block: four vectors' sums over that block
    const __m512d a = _mm512_castps_pd(pairs[2 * i]), b = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // Blocks added across: quads[m] holds vectors 4m..4m+3, one block per 128 bits.
  const __m512 low =
      _mm512_add_ps(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 high =
      _mm512_add_ps(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(3, 1, 3, 1)));
}

// scores[r * kDecodeStepKeys + j] = q_r · k_{j0 + j} for every row and j < 16:
// the n <= 16 keys widened once into `keys` (16 rows, zero past n, so all 16
// lanes are defined), then each row's 16 dot products summed together by
// sum_lanes_16.
template <DType D>
void decode_scores(const AttentionQuery& q, const KVView& kv, int64_t j0, int64_t n, float* keys,
                   float* scores) {
  const int64_t head_dim = kv.head_dim, ld = (head_dim + 15) / 16 * 16;
  const auto* k = static_cast<const char*>(kv.k);
  for (int64_t j = 0; j < 16; ++j)
    for (int64_t c = 0; c < ld; c += 16)
      _mm512_storeu_ps(keys + j * ld + c,
                       j < n ? load16<D>(k + size_t((j0 + j) * head_dim + c) * dtype_size(D),
                                         tail_mask(head_dim - c))
                             : _mm512_setzero_ps());
  for (int64_t r = 0; r < q.rows; ++r) {
    __m512 dot[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) dot[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < ld; c += 16) {
      const __m512 qv = _mm512_maskz_loadu_ps(tail_mask(head_dim - c), q.q + r * q.ldq + c);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        dot[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(keys + j * ld + c), dot[j]);
    }
    _mm512_storeu_ps(scores + r * kDecodeStepKeys, sum_lanes_16(dot));
  }
}

// Whether the vector decode kernel rounds Q and P to BF16 for this cache
// (decode_scores_bf16, decode_values_bf16).
bool vector_decode_rounds([[maybe_unused]] const KVView& kv) {
#ifdef __AVX512BF16__
  return kv.dtype == DType::BF16 && kv.head_dim % 32 == 0;
#else
  return false;
#endif
}

#ifdef __AVX512BF16__
// Q's rows rounded to BF16 (nearest even), head_dim values a row (a multiple
// of 32: vector_decode_rounds). As amx::round_row rounds, which this file
// cannot call: it carries the AMX target.
void round_queries_bf16(const AttentionQuery& q, int64_t head_dim, uint16_t* dst) {
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < head_dim; c += 32) {
      const float* p = q.q + r * q.ldq + c;
      _mm512_storeu_si512(
          dst + r * head_dim + c,
          __m512i(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + 16), _mm512_loadu_ps(p))));
    }
}

// decode_scores for a BF16 cache with Q rounded to BF16 (`qb`, from
// round_queries_bf16), as the AMX kernel rounds it: each key's 32-column
// steps go straight from the cache into vdpbf16ps (the products of two BF16
// values are exact in F32), with no widened copy of the keys. A score moves
// by at most 2^-8 scale sum_d |q_d k_d|, the bound the cache's own rounding
// of K puts on it. On a 2-core EPYC, G = 3 over 4096 keys in L2: 50-64 ->
// 40-42 us against widening the keys (3 alternations). kWhole: all 16 keys
// there (decode_scores_bf16 picks it).
template <bool kWhole>
void decode_scores_bf16_block(const uint16_t* qb, int64_t rows, const KVView& kv, int64_t j0,
                              int64_t n, float* scores) {
  const int64_t head_dim = kv.head_dim;  // a multiple of 32 (vector_decode_rounds)
  const auto* k = static_cast<const uint16_t*>(kv.k) + j0 * head_dim;
  for (int64_t r = 0; r < rows; ++r) {
    __m512 dot[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) dot[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < head_dim; c += 32) {
      const __m512bh qv = __m512bh(_mm512_loadu_si512(qb + r * head_dim + c));
      // Keys past n (the last block) are zeros, not read.
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        dot[j] =
            _mm512_dpbf16_ps(dot[j],
                             __m512bh(kWhole ? _mm512_loadu_si512(k + j * head_dim + c)
                                             : _mm512_maskz_loadu_epi16(j < n ? ~__mmask32(0) : 0,
                                                                        k + j * head_dim + c)),
                             qv);
    }
    _mm512_storeu_ps(scores + r * kDecodeStepKeys, sum_lanes_16(dot));
  }
}

// A whole block of 16 keys reads them unmasked: the masks of a partial block,
// one per key, came from the stack on every load.
void decode_scores_bf16(const uint16_t* qb, int64_t rows, const KVView& kv, int64_t j0, int64_t n,
                        float* scores) {
  if (n == 16)
    decode_scores_bf16_block<true>(qb, rows, kv, j0, n, scores);
  else
    decode_scores_bf16_block<false>(qb, rows, kv, j0, n, scores);
}
#endif

// acc_r += sum_j weights[r][j] · v_{j0 + j} for the rows [r0, r0 + R): per
// 16 columns of the head, the keys in four interleaved chains of FMAs, so
// that the adds wait on the FMA latency a quarter as often.
template <DType D, int R>
void decode_values(const KVView& kv, const AttentionState& st, int64_t r0, int64_t j0, int64_t n,
                   const float* weights) {
  const int64_t head_dim = kv.head_dim;
  const auto* v = static_cast<const char*>(kv.v);
  for (int64_t c = 0; c < head_dim; c += 16) {
    const __mmask16 m = tail_mask(head_dim - c);
    __m512 acc[4][R];
    for (int r = 0; r < R; ++r) {
      acc[0][r] = _mm512_maskz_loadu_ps(m, st.acc + (r0 + r) * st.ld + c);
      acc[1][r] = acc[2][r] = acc[3][r] = _mm512_setzero_ps();
    }
    // Four keys a turn, each into its own chain (a chain index known at
    // compile time keeps the sums in registers); past n the weights are 0.
    for (int64_t j = 0; j < n; j += 4) {
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        if (j + t >= n) break;
        const __m512 v16 = load16<D>(v + size_t((j0 + j + t) * head_dim + c) * dtype_size(D), m);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          acc[t][r] = _mm512_fmadd_ps(_mm512_set1_ps(weights[(r0 + r) * kDecodeStepKeys + j + t]),
                                      v16, acc[t][r]);
      }
    }
    for (int r = 0; r < R; ++r)
      _mm512_mask_storeu_ps(
          st.acc + (r0 + r) * st.ld + c, m,
          _mm512_add_ps(_mm512_add_ps(acc[0][r], acc[1][r]), _mm512_add_ps(acc[2][r], acc[3][r])));
  }
}

#ifdef __AVX512BF16__
// decode_values for a BF16 cache, head_dim a multiple of 32, with P rounded to
// BF16 (as the AMX kernel rounds it): a pair of keys' V rows, interleaved
// 16 bits at a time (unpacklo / unpackhi within each 128-bit lane), meets each
// row's pair of weights in one vdpbf16ps per 16 columns. Lane 4L + t of the
// unpacklo sums is column 8L + t of the 32, of the unpackhi sums 8L + 4 + t:
// the sums are taken out of and put back into st.acc's order once per call.
template <int R>
void decode_values_bf16(const KVView& kv, const AttentionState& st, int64_t r0, int64_t j0,
                        int64_t n, const float* weights) {
  const int64_t head_dim = kv.head_dim;
  const auto* v = static_cast<const uint16_t*>(kv.v) + j0 * head_dim;
  // Row r's weights as BF16 pairs: keys 2i and 2i + 1.
  alignas(64) uint32_t pairs[R][kDecodeStepKeys / 2];
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < n; j += 16)
      _mm256_store_si256(
          reinterpret_cast<__m256i*>(pairs[r] + j / 2),
          __m256i(_mm512_cvtneps_pbh(_mm512_loadu_ps(weights + (r0 + r) * kDecodeStepKeys + j))));
  const __m512i to_lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i to_hi = _mm512_add_epi32(to_lo, _mm512_set1_epi32(4));
  const __m512i back_first =
      _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i back_second = _mm512_add_epi32(back_first, _mm512_set1_epi32(8));
  for (int64_t c = 0; c < head_dim; c += 32) {
    __m512 lo[R], hi[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      float* acc = st.acc + (r0 + r) * st.ld + c;
      const __m512 first = _mm512_loadu_ps(acc), second = _mm512_loadu_ps(acc + 16);
      lo[r] = _mm512_permutex2var_ps(first, to_lo, second);
      hi[r] = _mm512_permutex2var_ps(first, to_hi, second);
    }
    for (int64_t j = 0; j < n; j += 2) {
      const __m512i a = _mm512_loadu_si512(v + j * head_dim + c);
      // Past the last key: zeros (never read), with weight 0.
      const __m512i b = _mm512_maskz_loadu_epi16(j + 1 < n ? ~__mmask32(0) : __mmask32(0),
                                                 v + (j + 1) * head_dim + c);
      const __m512bh pair_lo = __m512bh(_mm512_unpacklo_epi16(a, b));
      const __m512bh pair_hi = __m512bh(_mm512_unpackhi_epi16(a, b));
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512bh w = __m512bh(_mm512_set1_epi32(int32_t(pairs[r][j / 2])));
        lo[r] = _mm512_dpbf16_ps(lo[r], pair_lo, w);
        hi[r] = _mm512_dpbf16_ps(hi[r], pair_hi, w);
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      float* acc = st.acc + (r0 + r) * st.ld + c;
      _mm512_storeu_ps(acc, _mm512_permutex2var_ps(lo[r], back_first, hi[r]));
      _mm512_storeu_ps(acc + 16, _mm512_permutex2var_ps(lo[r], back_second, hi[r]));
    }
  }
}
#endif

// The keys [lo, hi) for rows that all sit at one position and all see them;
// scratch holds kDecodeStepKeys floats per row, then 16 widened keys.
template <DType D>
void attention_decode(const AttentionQuery& q, const KVView& kv, int64_t lo, int64_t hi,
                      const AttentionState& st, float* scratch) {
  // On a cache line: each of its vectors is stored, then loaded once per row.
  float* keys = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(scratch + q.rows * kDecodeStepKeys) + 63) & ~uintptr_t(63));
  const __m512 scale = _mm512_set1_ps(kv.scale);
#ifdef __AVX512BF16__
  // A BF16 cache: Q's rows rounded once per call, for decode_scores_bf16,
  // and P rounded by decode_values_bf16.
  static thread_local std::vector<uint16_t> queries;
  const bool rounds = D == DType::BF16 && vector_decode_rounds(kv);
  if (rounds) {
    queries.resize(size_t(q.rows * kv.head_dim));
    round_queries_bf16(q, kv.head_dim, queries.data());
  }
#endif
  constexpr int kBlocks = kDecodeStepKeys / 16;
  const size_t row_bytes = size_t(kv.head_dim) * dtype_size(D);
  for (int64_t j0 = lo; j0 < hi; j0 += kDecodeStepKeys) {
    const int64_t n = std::min<int64_t>(kDecodeStepKeys, hi - j0);
    for (int64_t b = 0; b * 16 < n; ++b) {
      const int64_t keys_in_block = std::min<int64_t>(16, n - b * 16);
      // The blocks kDecodePrefetchKeys (into L1) and kDecodePrefetchL2Keys
      // (into L2) on, one block at a time: a whole step's prefetches at once
      // read from memory 1.1x slower.
      if (const int64_t ahead = j0 + b * 16 + kDecodePrefetchKeys; ahead + 16 <= hi)
        prefetch_kv_block<3>(kv, size_t(ahead) * row_bytes, 16 * row_bytes);
      if (const int64_t ahead = j0 + b * 16 + kDecodePrefetchL2Keys; ahead + 16 <= hi)
        prefetch_kv_block<2>(kv, size_t(ahead) * row_bytes, 16 * row_bytes);
#ifdef __AVX512BF16__
      if (rounds)
        decode_scores_bf16(queries.data(), q.rows, kv, j0 + b * 16, keys_in_block,
                           scratch + b * 16);
      else
#endif
        decode_scores<D>(q, kv, j0 + b * 16, keys_in_block, keys, scratch + b * 16);
    }
    for (int64_t row = 0; row < q.rows; ++row) {
      // Online softmax over this step's keys, as attention_partial does over
      // its blocks (see there); past n the weights are 0.
      float* s = scratch + row * kDecodeStepKeys;
      __m512 scaled[kBlocks];
      __m512 row_max = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) {
        const __mmask16 live = tail_mask(std::clamp<int64_t>(n - b * 16, 0, 16));
        scaled[b] = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, s + b * 16), scale);
        row_max = _mm512_mask_max_ps(row_max, live, row_max, scaled[b]);
      }
      const float new_max = std::max(st.max[row], _mm512_reduce_max_ps(row_max));
      const float shrink = st.max[row] == -INFINITY ? 0.0f : std::exp(st.max[row] - new_max);
      st.max[row] = new_max;
      __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int b = 0; b < kBlocks; ++b) {
        const __mmask16 live = tail_mask(std::clamp<int64_t>(n - b * 16, 0, 16));
        const __m512 p =
            _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(scaled[b], _mm512_set1_ps(new_max))));
        _mm512_storeu_ps(s + b * 16, p);
        sum = _mm512_add_ps(sum, p);
      }
      st.sum[row] = st.sum[row] * shrink + _mm512_reduce_add_ps(sum);
      if (shrink != 1.0f) {
        float* acc = st.acc + row * st.ld;
        for (int64_t d = 0; d < kv.head_dim; d += 16) {
          const __mmask16 m = tail_mask(kv.head_dim - d);
          _mm512_mask_storeu_ps(
              acc + d, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, acc + d), _mm512_set1_ps(shrink)));
        }
      }
    }
    // Direct calls, one switch per kernel: through a table of function
    // pointers one head per KV head read its caches from memory 1.2x slower.
    for (int64_t r0 = 0; r0 < q.rows; r0 += kDecodeRowBlock) {
#ifdef __AVX512BF16__
      if (rounds) {
        switch (std::min<int64_t>(kDecodeRowBlock, q.rows - r0)) {
          case 1: decode_values_bf16<1>(kv, st, r0, j0, n, scratch); break;
          case 2: decode_values_bf16<2>(kv, st, r0, j0, n, scratch); break;
          case 3: decode_values_bf16<3>(kv, st, r0, j0, n, scratch); break;
          default: decode_values_bf16<4>(kv, st, r0, j0, n, scratch); break;
        }
        continue;
      }
#endif
      switch (std::min<int64_t>(kDecodeRowBlock, q.rows - r0)) {
        case 1: decode_values<D, 1>(kv, st, r0, j0, n, scratch); break;
        case 2: decode_values<D, 2>(kv, st, r0, j0, n, scratch); break;
        case 3: decode_values<D, 3>(kv, st, r0, j0, n, scratch); break;
        default: decode_values<D, 4>(kv, st, r0, j0, n, scratch); break;
      }
    }
  }
}

#endif  // SHARDLM_AVX512

// One row's scores s[0, keys) of a key block, of which it sees [from, to):
// the row's running max and sum take the block in, s becomes the weights
// exp(scale s - max) (0 where hidden), and the result is the factor
// exp(old max - new max) by which what earlier blocks added shrinks.
float softmax_block_row(float* s, int64_t keys, int64_t from, int64_t to, float scale, float& max,
                        float& sum) {
#if SHARDLM_AVX512
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int64_t j = from; j < to; j += 16) {
    const __mmask16 m = tail_mask(to - j);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, s + j));
  }
  const float block_max = _mm512_reduce_max_ps(vmax) * scale;
#else
  // Eight lanes at a time: a scalar max or sum over a step's keys waits on
  // each compare or add in turn.
  Floats8 vmax = splat8(-INFINITY);
  int64_t j = from;
  for (; j + kLanes <= to; j += kLanes) {
    const Floats8 v = load8(s + j);
    vmax = v > vmax ? v : vmax;
  }
  float block_max = -INFINITY;
  for (int i = 0; i < kLanes; ++i) block_max = std::max(block_max, vmax[i]);
  for (; j < to; ++j) block_max = std::max(block_max, s[j]);
  block_max *= scale;
#endif
  const float new_max = std::max(max, block_max);
  const float shrink = max == -INFINITY ? 0.0f : std::exp(max - new_max);
  max = new_max;
#if SHARDLM_AVX512
  const __m512 vscale = _mm512_set1_ps(scale), shift = _mm512_set1_ps(new_max);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 m = tail_mask(keys - j);
    // Lanes before `from` or from `to` on are hidden: weight 0.
    const __mmask16 before = tail_mask(std::clamp<int64_t>(from - j, 0, 16));
    const __mmask16 live = m & tail_mask(std::max<int64_t>(0, to - j)) & __mmask16(~before);
    const __m512 e = exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, s + j), vscale, shift));
    const __m512 p = _mm512_maskz_mov_ps(live, e);
    vsum = _mm512_add_ps(vsum, p);
    _mm512_mask_storeu_ps(s + j, m, p);
  }
  sum = sum * shrink + _mm512_reduce_add_ps(vsum);
#else
  std::fill(s, s + from, 0.0f);
  std::fill(s + to, s + keys, 0.0f);
  for (int64_t i = from; i < to; ++i) s[i] = s[i] * scale - new_max;
  exp_inplace(s + from, to - from);
  Floats8 vsum = {};
  for (j = from; j + kLanes <= to; j += kLanes) vsum += load8(s + j);
  float block_sum = sum8(vsum);
  for (; j < to; ++j) block_sum += s[j];
  sum = sum * shrink + block_sum;
#endif
  return shrink;
}

#if !SHARDLM_AVX512
// The lines of [p, p + bytes), asked for into L1.
inline void prefetch_lines(const char* p, size_t bytes) {
  for (size_t line = 0; line < bytes; line += 64) __builtin_prefetch(p + line);
}

// Decode attention, fused, in the portable build: as attention_decode above,
// a step of kDecodeStepKeys keys at a time. K and V are widened in registers
// as they are read, 16 columns a load (load16_widened: for BF16 on AVX2 the
// even columns then the odd ones, so the query rows are put in that order
// once a call and the output sums kept in it while a step adds to them). A
// block of query rows meets as many keys as dots() meets weight rows, by its
// dot_group (6-8 sums), added across lanes into one vector of scores
// (lane_sums); softmax_block_row turns a row's step of
// scores into weights, and each widened value vector serves every row of a
// block. It replaces a kernel that widened 8 keys into scratch, one row at a
// time summed them by an 8 x 8 transposition, and kept 2R sums for P·V
// (latency-bound below 4 rows): 67 cycles a key for 3 rows in cache.
// Of the lines ahead it asks only for a step's values while its keys are
// scored (below): the AVX-512 kernel's prefetches (K and V a fixed distance
// on) made 384 caches of 4096 keys on a Zen 3 EPYC no faster at 3 rows and
// 1.13x slower at one row.

// Lane i of the result: the sum of v[i]'s 8 lanes (pairwise sums, each level
// two shuffles and an add, then the two halves of a register added).
inline Floats8 lane_sums(const Floats8 (&v)[8]) {
  auto pairs = [](Floats8 a, Floats8 b) {
    return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  };
  const Floats8 low = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
  const Floats8 high = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
  return __builtin_shufflevector(low, high, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(low, high, 4, 5, 6, 7, 12, 13, 14, 15);
}

// Lane r * KB + j: query row r (of RB, ordered as load16_widened orders the
// keys) times key j (of KB); head_dim a multiple of 16. The dot products are
// dots()'s (dot_group), with no prefetch between their groups of 16 columns.
template <DType D, int RB, int KB>
inline Floats8 score_block(const float* q, int64_t ldq, const char* const* keys, int64_t head_dim) {
  Floats8 acc[RB][KB] = {};
  for (int64_t c = 0; c < head_dim; c += 16) dot_group<D, RB, KB>(q, ldq, keys, c, acc);
  Floats8 flat[kLanes] = {};  // flat[r * KB + j]
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < KB; ++j) flat[r * KB + j] = acc[r][j];
  return lane_sums(flat);
}

// scores[r * kDecodeStepKeys + j] = q_r · k_{j0 + j} for RB rows and the 8
// keys from j0 (of which n are real: the others repeat the last real one, and
// their scores go unread): as many keys at a time as dots() takes weight
// rows, 8 sums (6 at 3 rows). Returns the rows it took.
template <DType D, int RB>
inline int64_t decode_scores_portable(const float* q, int64_t ldq, const KVView& kv, int64_t j0,
                                      int64_t n, float* scores) {
  constexpr int KB = dot_weight_rows(RB);
  const size_t row_bytes = size_t(kv.head_dim) * dtype_size(D);
  const char* k = static_cast<const char*>(kv.k);
  for (int64_t j = 0; j < kLanes; j += KB) {
    const char* keys[KB];
    for (int i = 0; i < KB; ++i)
      keys[i] = k + size_t(j0 + std::min<int64_t>(j + i, n - 1)) * row_bytes;
    const Floats8 s = score_block<D, RB, KB>(q, ldq, keys, kv.head_dim);
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < KB; ++i) scores[r * kDecodeStepKeys + j + i] = s[r * KB + i];
  }
  return RB;
}

// 16 output sums of a row as two vectors, in the order load16_widened gives
// value columns, and back.
template <DType D>
inline void load_sums(const float* acc, Floats8& first, Floats8& second) {
  first = load8(acc);
  second = load8(acc + kLanes);
  if constexpr (kDotEvenOdd<D>) split_even_odd(first, second, first, second);
}
template <DType D>
inline void store_sums(float* acc, Floats8 first, Floats8 second) {
  if constexpr (kDotEvenOdd<D>) join_even_odd(first, second, first, second);
  store8(acc, first);
  store8(acc + kLanes, second);
}

// The columns a P·V pass of R rows takes: C groups of 16, 2RC = 8 sums in
// registers, enough for both FMA units to run past their latency and few
// enough to leave registers for the values (3 rows as 2 + 1: 12 sums spilled).
template <int R>
constexpr int kValueGroups = 4 / R;

// acc_r += sum_j weights[r][j] · v_{j0 + j} for the rows [r0, r0 + R), over
// the columns [c_begin, c_end) (a multiple of 16 C).
template <DType D, int R, int C>
void decode_values_portable(const KVView& kv, const AttentionState& st, int64_t r0, int64_t j0,
                            int64_t n, const float* weights, int64_t c_begin, int64_t c_end) {
  const size_t row_bytes = size_t(kv.head_dim) * dtype_size(D);
  const char* v = static_cast<const char*>(kv.v) + size_t(j0) * row_bytes;
  for (int64_t c = c_begin; c < c_end; c += 16 * C) {
    Floats8 acc[R][C][2];
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < C; ++g)
        load_sums<D>(st.acc + (r0 + r) * st.ld + c + 16 * g, acc[r][g][0], acc[r][g][1]);
    for (int64_t j = 0; j < n; ++j) {
      const char* row = v + size_t(j) * row_bytes;
      for (int g = 0; g < C; ++g) {
        Floats8 v0, v1;
        load16_widened<D>(row, c + 16 * g, v0, v1);
        for (int r = 0; r < R; ++r) {
          const Floats8 p = splat8(weights[(r0 + r) * kDecodeStepKeys + j]);
          acc[r][g][0] += p * v0;
          acc[r][g][1] += p * v1;
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int g = 0; g < C; ++g)
        store_sums<D>(st.acc + (r0 + r) * st.ld + c + 16 * g, acc[r][g][0], acc[r][g][1]);
  }
}

// The rows [r0, r0 + R) over every column; returns R.
template <DType D, int R>
int64_t decode_values_rows(const KVView& kv, const AttentionState& st, int64_t r0, int64_t j0,
                           int64_t n, const float* weights) {
  constexpr int C = kValueGroups<R>;
  const int64_t grouped = kv.head_dim / (16 * C) * (16 * C);
  decode_values_portable<D, R, C>(kv, st, r0, j0, n, weights, 0, grouped);
  if constexpr (C > 1)
    decode_values_portable<D, R, 1>(kv, st, r0, j0, n, weights, grouped, kv.head_dim);
  return R;
}

// The keys [lo, hi) for rows that all sit at one position and all see them;
// head_dim a multiple of 16. scratch holds kDecodeStepKeys floats per row,
// then the query rows in load16_widened's column order.
template <DType D>
void attention_decode_portable(const AttentionQuery& q, const KVView& kv, int64_t lo, int64_t hi,
                               const AttentionState& st, float* scratch) {
  const int64_t head_dim = kv.head_dim;
  const size_t row_bytes = size_t(head_dim) * dtype_size(D);
  const float* query = q.q;
  int64_t ldq = q.ldq;
  if constexpr (kDotEvenOdd<D>) {
    float* ordered = scratch + q.rows * kDecodeStepKeys;
    even_odd_order(q.q, q.rows, q.ldq, head_dim, ordered);
    query = ordered;
    ldq = head_dim;
  }
  for (int64_t j0 = lo; j0 < hi; j0 += kDecodeStepKeys) {
    const int64_t n = std::min<int64_t>(kDecodeStepKeys, hi - j0);
    for (int64_t b = 0; b * kLanes < n; ++b) {
      const int64_t j = j0 + b * kLanes, keys = std::min<int64_t>(kLanes, n - b * kLanes);
      // This block's values, asked for while its keys are scored: the P·V
      // passes read them after the whole step's scores. Reading K and V in
      // turn, 16 KiB of each a step, the core did not overlap the arithmetic
      // with the read; with these lines 384 caches of 4096 BF16 keys (G = 3,
      // 2 threads, from memory) took 17.2-18.4 ms against 20.8-22.1, and
      // asking also for the next step's keys was slower (18.8-19.5).
      prefetch_lines(static_cast<const char*>(kv.v) + size_t(j) * row_bytes,
                     size_t(keys) * row_bytes);
      for (int64_t r = 0; r < q.rows;) {
        const float* rows = query + r * ldq;
        float* out = scratch + r * kDecodeStepKeys + b * kLanes;
        switch (std::min<int64_t>(4, q.rows - r)) {
          case 1: r += decode_scores_portable<D, 1>(rows, ldq, kv, j, keys, out); break;
          case 2: r += decode_scores_portable<D, 2>(rows, ldq, kv, j, keys, out); break;
          case 3: r += decode_scores_portable<D, 3>(rows, ldq, kv, j, keys, out); break;
          default: r += decode_scores_portable<D, 4>(rows, ldq, kv, j, keys, out); break;
        }
      }
    }
    for (int64_t row = 0; row < q.rows; ++row) {
      const float shrink = softmax_block_row(scratch + row * kDecodeStepKeys, n, 0, n, kv.scale,
                                             st.max[row], st.sum[row]);
      if (shrink != 1.0f)
        for (int64_t d = 0; d < head_dim; ++d) st.acc[row * st.ld + d] *= shrink;
    }
    for (int64_t r0 = 0; r0 < q.rows;) {
      const int64_t left = q.rows - r0;
      r0 += left >= 4   ? decode_values_rows<D, 4>(kv, st, r0, j0, n, scratch)
            : left >= 2 ? decode_values_rows<D, 2>(kv, st, r0, j0, n, scratch)
                        : decode_values_rows<D, 1>(kv, st, r0, j0, n, scratch);
    }
  }
}
#endif  // !SHARDLM_AVX512

}  // namespace

int64_t attention_scratch(int64_t rows, int64_t head_dim) {
  return std::min(rows, kAttentionBlockRows) * kAttentionBlockKeys +
         2 * kAttentionBlockKeys * head_dim;
}

void attention_state_init(const AttentionState& st, int64_t rows, int64_t head_dim) {
  for (int64_t i = 0; i < rows; ++i)
    std::fill(st.acc + i * st.ld, st.acc + i * st.ld + head_dim, 0.0f);
  std::fill(st.max, st.max + rows, -INFINITY);
  std::fill(st.sum, st.sum + rows, 0.0f);
}

void attention_partial(const AttentionQuery& q, const KVView& kv, int64_t key_begin,
                       int64_t key_end, const AttentionState& st, float* scratch) {
  if (q.pos_step == 0 && q.rows <= kAttentionBlockRows) {
    // One token's query heads: one position, so every row sees the same keys.
    const int64_t lo =
        std::max(key_begin, q.window > 0 ? std::max<int64_t>(0, q.first_pos + 1 - q.window) : 0);
    const int64_t hi = std::min(key_end, q.first_pos + 1);
    // The AMX kernel's cost per key is the same for 1 to 16 rows; the vector
    // kernel's grows with the rows and is the cheaper one for a single row.
    if (q.rows >= 2 && amx_attention_fits(kv)) return attention_decode_amx(q, kv, lo, hi, st);
#if SHARDLM_AVX512
    switch (kv.dtype) {
      case DType::BF16: return attention_decode<DType::BF16>(q, kv, lo, hi, st, scratch);
      case DType::F16: return attention_decode<DType::F16>(q, kv, lo, hi, st, scratch);
      default: return attention_decode<DType::F32>(q, kv, lo, hi, st, scratch);
    }
#else
    if (kv.head_dim % 16 == 0) switch (kv.dtype) {
        case DType::BF16: return attention_decode_portable<DType::BF16>(q, kv, lo, hi, st, scratch);
        case DType::F16: return attention_decode_portable<DType::F16>(q, kv, lo, hi, st, scratch);
        default: return attention_decode_portable<DType::F32>(q, kv, lo, hi, st, scratch);
      }
#endif
  }
  const int64_t head_dim = kv.head_dim;
  float* scores = scratch;
  float* k_buffer = scratch + std::min(q.rows, kAttentionBlockRows) * kAttentionBlockKeys;
  float* v_buffer = k_buffer + kAttentionBlockKeys * head_dim;
  for (int64_t i0 = 0; i0 < q.rows; i0 += kAttentionBlockRows) {
    const int64_t rows = std::min(kAttentionBlockRows, q.rows - i0);
    // Keys some row of this block sees: from the first row's window start to
    // the last row's position, within [key_begin, key_end).
    const int64_t first_row_pos = q.first_pos + i0 * q.pos_step;
    const int64_t last_row_pos = q.first_pos + (i0 + rows - 1) * q.pos_step;
    const int64_t lo =
        std::max(key_begin, q.window > 0 ? std::max<int64_t>(0, first_row_pos + 1 - q.window) : 0);
    const int64_t hi = std::min(key_end, last_row_pos + 1);
    for (int64_t j0 = lo; j0 < hi; j0 += kAttentionBlockKeys) {
      const int64_t keys = std::min(kAttentionBlockKeys, hi - j0);
      const float* kb = kv_rows_f32(kv.k, kv.dtype, j0, keys, head_dim, k_buffer);
      const float* vb = kv_rows_f32(kv.v, kv.dtype, j0, keys, head_dim, v_buffer);
      sgemm(q.q + i0 * q.ldq, rows, q.ldq, kb, keys, head_dim, head_dim, scores, keys, false);
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t row = i0 + i, position = q.first_pos + row * q.pos_step;
        // The keys of the block this row sees: [from, to).
        const int64_t from =
            std::max<int64_t>(0, (q.window > 0 ? position + 1 - q.window : 0) - j0);
        const int64_t to = std::min<int64_t>(keys, position + 1 - j0);
        float* s = scores + i * keys;
        float* acc = st.acc + row * st.ld;
        if (to <= from) {
          std::fill(s, s + keys, 0.0f);
          continue;
        }
        const float shrink =
            softmax_block_row(s, keys, from, to, kv.scale, st.max[row], st.sum[row]);
        if (shrink != 1.0f)
          for (int64_t d = 0; d < head_dim; ++d) acc[d] *= shrink;
      }
      // acc rows += weights [rows, keys] · V [keys, head_dim]
      const dnnl_status_t status = dnnl_sgemm('N', 'N', rows, head_dim, keys, 1.0f, scores, keys,
                                              vb, head_dim, 1.0f, st.acc + i0 * st.ld, st.ld);
      if (status != dnnl_success)
        throw std::runtime_error("cpu backend: dnnl_sgemm failed in attention");
    }
  }
}

void attention_merge(const AttentionState& into, const AttentionState& from, int64_t rows,
                     int64_t head_dim) {
  for (int64_t i = 0; i < rows; ++i)
    math::softmax_merge(into.max[i], into.sum[i], into.acc + i * into.ld, from.max[i], from.sum[i],
                        from.acc + i * from.ld, head_dim);
}

bool decode_attention_rounds(const KVView& kv, int64_t rows) {
#if SHARDLM_AVX512
  if (vector_decode_rounds(kv)) return true;
#endif
  return rows >= 2 && amx_attention_fits(kv);
}

void attention_finish(const AttentionState& st, int64_t rows, int64_t head_dim, float* out,
                      int64_t ldo) {
  for (int64_t i = 0; i < rows; ++i) {
    const float inv = st.sum[i] > 0 ? 1.0f / st.sum[i] : 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) out[i * ldo + d] = st.acc[i * st.ld + d] * inv;
  }
}

int64_t attention_rows_scratch(int64_t rows, int64_t head_dim) {
  return attention_scratch(rows, head_dim) + rows * (head_dim + 2);
}

void attention_rows(const AttentionQuery& q, const KVView& kv, float* out, int64_t ldo,
                    float* scratch) {
  // The state follows the block scratch: acc [rows, head_dim], max, sum.
  const int64_t head_dim = kv.head_dim;
  float* state = scratch + attention_scratch(q.rows, head_dim);
  const AttentionState st{state, head_dim, state + q.rows * head_dim,
                          state + q.rows * (head_dim + 1)};
  attention_state_init(st, q.rows, head_dim);
  attention_partial(q, kv, 0, q.first_pos + (q.rows - 1) * q.pos_step + 1, st, scratch);
  attention_finish(st, q.rows, head_dim, out, ldo);
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

#ifdef __AVX512BF16__
namespace {
// A tile of RX rows of x against RW weight rows: each 32-column step (64
// bytes of a row) loads RW weight vectors and RX x vectors for RX · RW
// vdpbf16ps, sixteen lanes of pair sums per (x row, weight row), reduced at
// the end. Below four rows of x a tile is one weight row (RW = 1): on AMD
// cores reading a row at a time keeps the prefetchers streaming (see
// default_decode_order_is_rows); from four rows the x loads dominate and four
// weight rows share each (on this EPYC, 1b at batch 32: 1 row 75 tok/s).
template <int RW, int RX>
void bf16_dot_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t k, float* out,
                   int64_t ldo, bool accumulate) {
  __m512 acc[RX][RW];
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) acc[i][j] = _mm512_setzero_ps();
  const auto step = [&](int64_t c, auto load) {
    __m512bh wv[RW];
    for (int j = 0; j < RW; ++j) wv[j] = __m512bh(load(w + j * k + c));
    for (int i = 0; i < RX; ++i) {
      const __m512bh xv = __m512bh(load(x + i * ldx + c));
      for (int j = 0; j < RW; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
    }
  };
  int64_t c = 0;
  for (; c + 32 <= k; c += 32) {
    // 8 KiB on: the next rows of this thread's share, in order.
    for (int j = 0; j < RW; ++j)
      _mm_prefetch(reinterpret_cast<const char*>(w + j * k + c) + 8192, _MM_HINT_T0);
    step(c, [](const uint16_t* p) { return _mm512_loadu_si512(p); });
  }
  if (c < k) {
    const __mmask32 tail = __mmask32((uint64_t(1) << (k - c)) - 1);
    step(c, [tail](const uint16_t* p) { return _mm512_maskz_loadu_epi16(tail, p); });
  }
  for (int i = 0; i < RX; ++i)
    for (int j = 0; j < RW; ++j) {
      const float sum = _mm512_reduce_add_ps(acc[i][j]);
      float& o = out[i * ldo + j];
      o = accumulate ? o + sum : sum;
    }
}

// Rows of x in tiles of up to kTileRows against RW weight rows.
constexpr int64_t kTileRows = 6;

template <int RW>
void bf16_dot_rows(const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k,
                   float* out, int64_t ldo, bool accumulate) {
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const uint16_t* xi = x + i0 * ldx;
    float* oi = out + i0 * ldo;
    switch (std::min(kTileRows, m - i0)) {
      case 1: bf16_dot_tile<RW, 1>(xi, ldx, w, k, oi, ldo, accumulate); break;
      case 2: bf16_dot_tile<RW, 2>(xi, ldx, w, k, oi, ldo, accumulate); break;
      case 3: bf16_dot_tile<RW, 3>(xi, ldx, w, k, oi, ldo, accumulate); break;
      case 4: bf16_dot_tile<RW, 4>(xi, ldx, w, k, oi, ldo, accumulate); break;
      case 5: bf16_dot_tile<RW, 5>(xi, ldx, w, k, oi, ldo, accumulate); break;
      default: bf16_dot_tile<RW, 6>(xi, ldx, w, k, oi, ldo, accumulate); break;
    }
  }
}
}  // namespace

bool bf16_dot_available() {
  return true;
}

// `1b` bf16 decode on the 2-core EPYC, tok/s, widened F32 paths against this
// kernel (medians of 3 alternations, 2026-12-04): batch 1 22.5 / 24.2, 8
// 136-150 / 100-113 (the F32 pair kernel reads two weight rows in address
// order; four side by side read slower here), 16 132 / 149, 32 161 / 190,
// 64 147-165 / 204-218. Above 64 rows the panel and AMX paths block for
// caches this kernel does not.
bool bf16_dot_suits(int64_t m) {
  return m <= 3 || (m >= 16 && m <= kBf16DotMaxRows);
}

void matmul_bf16_dot(const uint16_t* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                     int64_t ldo, bool accumulate) {
  if (w.dtype != DType::BF16)
    throw std::logic_error("cpu backend: matmul_bf16_dot wants BF16 weights");
  const auto* weights = static_cast<const uint16_t*>(w.data);
  const int64_t rw = m < 4 ? 1 : 4, blocks = (w.n + rw - 1) / rw;
  // Each thread streams one contiguous share of the weight rows.
#pragma omp parallel for schedule(static) if (w.n * w.k > (1 << 15))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r = b * rw;
    if (r + rw <= w.n && rw == 4) {
      bf16_dot_rows<4>(x, m, ldx, weights + r * w.k, w.k, out + r, ldo, accumulate);
    } else {
      for (int64_t j = r; j < std::min(r + rw, w.n); ++j)
        bf16_dot_rows<1>(x, m, ldx, weights + j * w.k, w.k, out + j, ldo, accumulate);
    }
  }
}
#else
bool bf16_dot_available() {
  return false;
}

bool bf16_dot_suits(int64_t) {
  return false;
}

void matmul_bf16_dot(const uint16_t*, int64_t, int64_t, const WeightView&, float*, int64_t, bool) {
  throw std::logic_error("cpu backend: matmul_bf16_dot needs AVX512-BF16 (bf16_dot_available)");
}
#endif

void matmul_panel(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                  int64_t ldo, bool accumulate) {
  if (w.dtype == DType::F32)
    return sgemm(x, m, ldx, static_cast<const float*>(w.data), w.n, w.k, w.k, out, ldo, accumulate);
  // Panels of about 8 MiB of F32: large enough for sgemm to run at full
  // speed, small enough to stay in the last-level cache between the widening
  // and the GEMM that reads it.
  const int64_t panel_rows = std::min<int64_t>(
      w.n, std::max<int64_t>(64, (int64_t(8) << 20) / (4 * std::max<int64_t>(w.k, 1))));
  const AlignedFloats panel = aligned_floats(size_t(panel_rows * w.k));
  for (int64_t r0 = 0; r0 < w.n; r0 += panel_rows) {
    const int64_t rows = std::min(panel_rows, w.n - r0);
    widen_rows(w, r0, rows, panel.get());
    sgemm(x, m, ldx, panel.get(), rows, w.k, w.k, out + r0, ldo, accumulate);
  }
}

namespace {
// Decode of up to 3 rows of x reads the weights a row at a time on AMD (Zen)
// cores and a tile of 6 rows at a time elsewhere. A 2-core EPYC (family 26)
// read a 5632 x 2048 BF16 weight 1.2x faster a row at a time at 1 row of x
// (37-40 against 32 GB/s, 2 threads, medians of 4-5 alternations; 36-37
// against 33 at k = 768 and 5632): reading six rows side by side 64 bytes at
// a time defeats its prefetchers (a plain read in that order: 23-25 GB/s; in
// address order: 40-67). The tiles were tuned on Xeons, where one stream per
// thread read a third slower. The portable build's dots() reads rows in
// order only where they are shorter than a page (kInOrderRowBytes): on a
// Zen 3 core longer ones read as fast in its strips. SHARDLM_DECODE_ORDER=rows|tiles
// overrides.
bool default_decode_order_is_rows() {
  const char* setting = std::getenv("SHARDLM_DECODE_ORDER");
  if (setting && std::string_view(setting) == "rows") return true;
  if (setting && std::string_view(setting) == "tiles") return false;
  return __builtin_cpu_is("amd");
}
std::atomic<bool> decode_rows_in_order{default_decode_order_is_rows()};
std::atomic<int64_t> streaming_rows_limit{kDefaultStreamingMaxRows};
std::atomic<int64_t> amx_streaming_rows_limit{kDefaultAmxStreamingMaxRows};
}  // namespace

int64_t streaming_max_rows() {
  return streaming_rows_limit.load(std::memory_order_relaxed);
}

void set_streaming_max_rows(int64_t rows) {
  if (rows < 1) throw std::invalid_argument("cpu backend: streaming_max_rows must be >= 1");
  streaming_rows_limit.store(rows, std::memory_order_relaxed);
}

bool decode_reads_rows_in_order() {
  return decode_rows_in_order.load(std::memory_order_relaxed);
}

void set_decode_reads_rows_in_order(bool rows) {
  decode_rows_in_order.store(rows, std::memory_order_relaxed);
}

int64_t amx_streaming_max_rows() {
  return amx_streaming_rows_limit.load(std::memory_order_relaxed);
}

void set_amx_streaming_max_rows(int64_t rows) {
  if (rows < 1) throw std::invalid_argument("cpu backend: amx_streaming_max_rows must be >= 1");
  amx_streaming_rows_limit.store(rows, std::memory_order_relaxed);
}

void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
            bool accumulate) {
  // Int8 keeps its own limit with AMX too: its streaming path (VNNI) beats
  // AMX, which widens each block to BF16 first, at every count it takes.
  const bool amx = amx_fits(w);
  const int64_t streaming_limit = w.dtype == DType::I8
                                      ? std::min(kI8StreamingMaxRows, streaming_max_rows())
                                  : amx ? amx_streaming_max_rows()
                                        : streaming_max_rows();
  if (m <= streaming_limit)
    matmul_streaming(x, m, ldx, w, out, ldo, accumulate);
  else if (amx)
    matmul_amx(x, m, ldx, w, out, ldo, accumulate);
  else
    matmul_panel(x, m, ldx, w, out, ldo, accumulate);
}

void* allocate_streamed(size_t bytes) {
  constexpr size_t kHugePage = size_t(2) << 20;
  static const bool huge_pages = [] {
    const char* setting = std::getenv("SHARDLM_HUGE_PAGES");
    return !(setting && std::string_view(setting) == "0");
  }();
  bytes = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  const bool huge = huge_pages && bytes >= kHugePage;
  // posix_memalign, not aligned_alloc: the size need not be a multiple of
  // 2 MiB. The slack before the boundary is address space, never touched.
  void* memory = nullptr;
  if (posix_memalign(&memory, huge ? kHugePage : 64, bytes) != 0) throw std::bad_alloc();
  // Advice only: where the kernel has no huge pages to give, ordinary ones.
  if (huge) ::madvise(memory, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
  return memory;
}

}  // namespace shardlm::cpu
