// BF16 weights multiplied on AMX tiles (Intel Advanced Matrix Extensions):
// out = x · wᵀ with TDPBF16PS, which multiplies a 16 x 32 BF16 tile by a
// 32 x 16 one into 16 x 16 F32 sums in 16 cycles, 16 times the FMA units'
// rate. The weights are read as stored: a tile of 16 weight rows is 64 bytes
// of each row, loaded with the row stride, so the matmul computes
// outᵀ = w · xᵀ and x is the operand rearranged, once per call.
//
// Accuracy: each x value is split into two BF16 values, hi = bf16(x) and
// lo = bf16(x - hi), so x is carried to within 2^-18 of itself (instead of
// the 2^-8 of one BF16) and every product with a BF16 weight is exact in
// F32; only the F32 accumulation order differs from the streaming kernel.
// That costs two tile products per weight tile, which decode (bound by
// memory) does not notice and prefill can afford.
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string_view>

#include "kernels/cpu/amx_tiles.hpp"
#include "kernels/cpu/cpu_kernels.hpp"

// GCC 12 reports its own _mm512_undefined_*() inside the AVX-512 intrinsics
// as uninitialised once they are inlined (as in cpu_kernels.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace shardlm::cpu {

namespace {
// Linux hands out the AMX register state only to processes that ask for it.
bool request_amx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool tile = edx & (1u << 24), bf16 = edx & (1u << 22);
  if (!tile || !bf16) return false;
  // The kernel rounds x to BF16 with AVX512-BF16 (CPUID 7.1 EAX bit 5).
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !(eax & (1u << 5))) return false;
  constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
}

// A 64-byte-aligned buffer of 16-bit values, one per thread, kept between
// calls and grown when a call needs more: the rearranged x tiles and the
// widened int8 blocks.
struct GrowingBuffer {
  std::unique_ptr<uint16_t, decltype(&std::free)> storage{nullptr, &std::free};
  size_t capacity = 0;
  uint16_t* reserve(size_t values) {
    if (values > capacity) {
      void* memory = std::aligned_alloc(64, values * 2);
      if (!memory) throw std::bad_alloc();
      storage.reset(static_cast<uint16_t*>(memory));
      capacity = values;
    }
    return storage.get();
  }
};
}  // namespace

bool amx_available() {
  // SHARDLM_AMX=0 turns the kernel off: the other paths alone, to compare
  // or to test them on a CPU that has AMX.
  static const bool available = [] {
    const char* setting = std::getenv("SHARDLM_AMX");
    return !(setting && std::string_view(setting) == "0") && request_amx();
  }();
  return available;
}

SHARDLM_AMX_BEGIN
namespace {

using namespace amx;

constexpr int64_t kBlockRows = 32;   // weight rows per block: two tiles
constexpr int64_t kChunkRows = 128;  // x rows rearranged at once: their tiles stay in L2
// Steps (of 64 bytes per row) between the one read and the one prefetched.
// With the weights on huge pages, 2 read 8 and 16 rows from memory 10-15%
// faster than 8 (medians of 4 alternations: 18.1 and 19.6 GB/s against 16.5
// and 16.9; 16 and 32 steps were slower still), and as fast on 4 KiB pages
// (matmul_bench --weights bf16 --rows 8,16 --path amx --threads 2).
constexpr int64_t kPrefetchSteps = 2;

// Rearranges rows [0, rows) of x (k columns, a multiple of 32) into dst as
// tiles: for each group of 16 rows and each step of 32 columns, a hi tile
// then a lo tile, each [16 column pairs][16 rows][2], the layout TDPBF16PS
// wants of its second operand; rows past the end are zero. Called by every
// thread of a parallel region, which share the work.
void rearrange(const float* x, int64_t rows, int64_t ldx, int64_t k, uint16_t* dst) {
  const int64_t groups = (rows + kTileRows - 1) / kTileRows, steps = k / kStepCols;
#pragma omp for collapse(2) schedule(static)
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t s = 0; s < steps; ++s)
      rearrange_tile(x, rows, ldx, g, s, dst + ((g * steps + s) * 2) * (kTileBytes / 2));
}

// Adds the sums of tile `sums` (sums[j][i]: x row i, weight row j), times
// scales[j] where given (int8 weights), to out rows [0, valid), columns [0, 16).
inline void write_sums(const float (&sums)[kTileRows][kTileRows], int64_t valid, float* out,
                       int64_t ldo, bool accumulate, const float* scales) {
  for (int64_t i = 0; i < valid; ++i)
    for (int64_t j = 0; j < kTileRows; ++j) {
      const float sum = scales ? sums[j][i] * scales[j] : sums[j][i];
      float& o = out[i * ldo + j];
      o = accumulate ? o + sum : sum;
    }
}

// Int8 weight rows as BF16 (every integer up to 256 is exact in BF16):
// `count` values from q to dst, a multiple of 16.
void int8_to_bf16(const int8_t* q, int64_t count, uint16_t* dst) {
  for (int64_t c = 0; c < count; c += 16) {
    const __m512 f = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + c))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), __m256i(_mm512_cvtneps_pbh(f)));
  }
}

// Weight rows [r0, r0 + 32) (BF16) times the rearranged x rows [0, rows) into
// out[i][r0 + j], the sums of row r0 + j times scales[j] where given, two groups of 16 x rows per
// pass over the weights: each weight tile is loaded once per pass for four tile products (two
// groups, hi and lo). The first pass reads the weights from memory, the others (more than 32 rows)
// from L2. Tile registers: 0 and 1 hold weight tiles, 2 and 3 the hi and lo parts of x, 4 to 7
// the sums.
void multiply_block(const uint16_t* tiles, int64_t rows, const char* w, int64_t k, int64_t r0,
                    float* out, int64_t ldo, bool accumulate, const float* scales) {
  const int64_t steps = k / kStepCols, groups = (rows + kTileRows - 1) / kTileRows;
  const size_t stride = size_t(k) * 2;
  const char* block = w + size_t(r0) * stride;
  alignas(64) float sums[kTileRows][kTileRows];
  for (int64_t g = 0; g < groups; g += 2) {
    const bool pair = g + 1 < groups;
    const uint16_t* first = tiles + g * steps * kTileBytes;
    const uint16_t* second = first + steps * kTileBytes;
    _tile_zero(4);
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    for (int64_t s = 0; s < steps; ++s) {
      const char* at = block + s * 64;
      // The first pass streams the weights from memory: ask for them in L2
      // ahead of the tile loads, which the hardware prefetcher (following
      // 32 rows 2k bytes apart) does not do well.
      if (g == 0 && s + kPrefetchSteps < steps)
        for (int64_t r = 0; r < kBlockRows; ++r)
          _mm_prefetch(at + r * stride + kPrefetchSteps * 64, _MM_HINT_T1);
      _tile_loadd(0, at, stride);
      _tile_loadd(1, at + kTileRows * stride, stride);
      _tile_loadd(2, first + s * kTileBytes, 64);
      _tile_loadd(3, first + s * kTileBytes + kTileBytes / 2, 64);
      _tile_dpbf16ps(4, 0, 2);
      _tile_dpbf16ps(5, 1, 2);
      _tile_dpbf16ps(4, 0, 3);
      _tile_dpbf16ps(5, 1, 3);
      if (pair) {  // the same for the second group (tile numbers must be literals)
        _tile_loadd(2, second + s * kTileBytes, 64);
        _tile_loadd(3, second + s * kTileBytes + kTileBytes / 2, 64);
        _tile_dpbf16ps(6, 0, 2);
        _tile_dpbf16ps(7, 1, 2);
        _tile_dpbf16ps(6, 0, 3);
        _tile_dpbf16ps(7, 1, 3);
      }
    }
    float* o = out + g * kTileRows * ldo + r0;
    const int64_t valid = std::min(kTileRows, rows - g * kTileRows);
    _tile_stored(4, sums, 64);
    write_sums(sums, valid, o, ldo, accumulate, scales);
    _tile_stored(5, sums, 64);
    write_sums(sums, valid, o + kTileRows, ldo, accumulate, scales ? scales + kTileRows : nullptr);
    if (pair) {
      o += kTileRows * ldo;
      const int64_t valid2 = std::min(kTileRows, rows - (g + 1) * kTileRows);
      _tile_stored(6, sums, 64);
      write_sums(sums, valid2, o, ldo, accumulate, scales);
      _tile_stored(7, sums, 64);
      write_sums(sums, valid2, o + kTileRows, ldo, accumulate,
                 scales ? scales + kTileRows : nullptr);
    }
  }
}

// One thread's share of matmul_amx for the blocks of 32 weight rows (every
// thread of the parallel region calls it; the x tiles are shared). A
// function of its own so that it, not the compiler's outlined parallel
// region, carries the AMX target.
void multiply_blocks(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                     int64_t ldo, bool accumulate, uint16_t* tiles) {
  const int64_t blocks = w.n / kBlockRows;
  const char* data = static_cast<const char*>(w.data);
  const bool int8 = w.dtype == DType::I8;
  configure_tiles();
  // Int8 weights: each thread widens a block at a time to BF16 here, just
  // before multiplying it, so the block is still in L2.
  static thread_local GrowingBuffer widened;
  uint16_t* block = int8 ? widened.reserve(size_t(kBlockRows * w.k)) : nullptr;
  for (int64_t c0 = 0; c0 < m; c0 += kChunkRows) {
    const int64_t rows = std::min(kChunkRows, m - c0);
    rearrange(x + c0 * ldx, rows, ldx, w.k, tiles);  // ends with a barrier
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlockRows;
      if (int8) {
        int8_to_bf16(reinterpret_cast<const int8_t*>(data) + r0 * w.k, kBlockRows * w.k, block);
        multiply_block(tiles, rows, reinterpret_cast<const char*>(block), w.k, 0,
                       out + c0 * ldo + r0, ldo, accumulate, w.scales + r0);
      } else {
        multiply_block(tiles, rows, data, w.k, r0, out + c0 * ldo, ldo, accumulate, nullptr);
      }
    }
  }
  _tile_release();
}

}  // namespace

SHARDLM_AMX_END

void matmul_amx(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                int64_t ldo, bool accumulate) {
  if (!amx_available())
    throw std::logic_error("cpu backend: matmul_amx called on a CPU without AMX (see amx_fits)");
  const int64_t blocks = w.n / kBlockRows, block_end = blocks * kBlockRows;
  if (blocks > 0) {
    static thread_local GrowingBuffer rearranged;
    const int64_t chunk = std::min(m, kChunkRows);
    uint16_t* tiles = rearranged.reserve(
        size_t((chunk + kTileRows - 1) / kTileRows * (w.k / kStepCols)) * kTileBytes);
#pragma omp parallel
    multiply_blocks(x, m, ldx, w, out, ldo, accumulate, tiles);
  }
  if (block_end < w.n) {
    // The last rows: BF16 streams (exact); int8 takes the panel path, whose
    // F32 products are exact too (int8 streaming would round x to int16).
    const WeightView rest{
        static_cast<const char*>(w.data) + size_t(block_end) * size_t(w.k) * dtype_size(w.dtype),
        w.dtype, w.scales ? w.scales + block_end : nullptr, w.n - block_end, w.k};
    if (w.dtype == DType::I8)
      matmul_panel(x, m, ldx, rest, out + block_end, ldo, accumulate);
    else
      matmul_streaming(x, m, ldx, rest, out + block_end, ldo, accumulate);
  }
}

bool amx_fits(const WeightView& w) {
  return (w.dtype == DType::BF16 || (w.dtype == DType::I8 && w.scales)) && w.k % 32 == 0 &&
         w.n >= 32 && amx_available();
}

}  // namespace shardlm::cpu
