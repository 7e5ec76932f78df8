// KV-cache write and attention on the GPU, following kernels/cpu (the
// reference): the same head mapping (AttentionHeads), causal limit, sliding
// window and cache rounding, F32 arithmetic throughout.
//
// Two attention kernels:
// - decode (one query token per sequence): memory-bound, so each K/V row is
//   read once per block for all the query heads that share its KV head, with
//   16-byte loads; long contexts are split over several blocks
//   (flash-decoding) whose partials (max, sum, acc) a second kernel merges
//   with math::softmax_merge, the CPU's merge rule.
// - prefill (any batch): flash-attention tiling on CUDA cores. A block takes
//   a tile of query rows of one head, stages K/V tiles of the rows' sequence
//   in shared memory as F32 and carries an online softmax per row, so no
//   score matrix beyond one tile ever exists. F32 FMA on CUDA cores rather
//   than tensor-core MMA: it is exact to the CPU's F32 arithmetic up to
//   summation order, and it could be written and checked without a GPU at
//   hand; prefill attention is a small part of prefill time for the prompt
//   lengths served so far (the matmuls dominate), and an MMA kernel can
//   replace this one behind the same interface.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention.cuh"
#include "kernels/math.hpp"
#include "runtime/errors.hpp"

namespace shardlm::cuda {
namespace {

// --- cache element types ----------------------------------------------------

// How a cache dtype is stored and widened. The rounding on write is the CPU
// backend's (math::float_to_bf16 / float_to_f16, round to nearest even);
// widening is exact.
struct CacheF32 {
  using Storage = float;
  __device__ static float to_float(float x) { return x; }
  __device__ static float from_float(float x) { return x; }
};
struct CacheBF16 {
  using Storage = uint16_t;
  __device__ static float to_float(uint16_t x) { return math::bf16_to_float(x); }
  __device__ static uint16_t from_float(float x) { return math::float_to_bf16(x); }
};
struct CacheF16 {
  using Storage = uint16_t;
  __device__ static float to_float(uint16_t x) { return __half2float(__ushort_as_half(x)); }
  __device__ static uint16_t from_float(float x) { return math::float_to_f16(x); }
};

// Elements of a cache dtype in one 16-byte load.
template <class Cache>
constexpr int kVecOf = int(16 / sizeof(typename Cache::Storage));

// dst <- the kVec values at src (16-byte aligned), widened to F32.
template <class Cache, int kVec>
__device__ inline void load_vec(const typename Cache::Storage* src, float* dst) {
  using Storage = typename Cache::Storage;
  static_assert(kVec * sizeof(Storage) == 16, "one 16-byte load");
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src));
  Storage elems[kVec];
  memcpy(elems, &raw, sizeof raw);
#pragma unroll
  for (int e = 0; e < kVec; ++e) dst[e] = Cache::to_float(elems[e]);
}

void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("cuda ") + kernel +
                             " launch failed: " + cudaGetErrorString(err));
}

// Activations (k, v, q, out) are F32 or BF16 (`bf16`): read widened, written
// rounded to nearest even, as the CPU backend does.
__device__ inline float load_activation(const void* p, int64_t i, bool bf16) {
  return bf16 ? math::bf16_to_float(static_cast<const uint16_t*>(p)[i])
              : static_cast<const float*>(p)[i];
}

__device__ inline void store_activation(void* p, int64_t i, float value, bool bf16) {
  if (bf16)
    static_cast<uint16_t*>(p)[i] = math::float_to_bf16(value);
  else
    static_cast<float*>(p)[i] = value;
}

// --- kv_write -----------------------------------------------------------------

template <class Cache>
__global__ void kv_write_kernel(const void* __restrict__ k, const void* __restrict__ v, bool bf16,
                                typename Cache::Storage* __restrict__ k_cache,
                                typename Cache::Storage* __restrict__ v_cache,
                                const int32_t* __restrict__ token_slot,
                                const int32_t* __restrict__ token_pos, int64_t tokens, int kv_heads,
                                int64_t capacity, int head_dim) {
  const int64_t row = int64_t(kv_heads) * head_dim;
  const int64_t n = tokens * row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t token = i / row, col = i - token * row;
    const int64_t g = col / head_dim, d = col - g * head_dim;
    const int64_t dst =
        ((int64_t(token_slot[token]) * kv_heads + g) * capacity + token_pos[token]) * head_dim + d;
    k_cache[dst] = Cache::from_float(load_activation(k, i, bf16));
    v_cache[dst] = Cache::from_float(load_activation(v, i, bf16));
  }
}

// --- attention: what every kernel is told ------------------------------------

struct AttentionArgs {
  const void* q = nullptr;  // [tokens, heads * head_dim]
  void* out = nullptr;      // like q
  bool bf16 = false;        // q and out BF16 (else F32)
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  const int32_t* token_slot = nullptr;
  const int32_t* token_pos = nullptr;
  int64_t tokens = 0;
  int64_t capacity = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int heads = 0;  // local query heads
  int q_offset = 0, kv_offset = 0, group = 1, window = 0;
  float scale = 1.0f;
  bool vector_loads = false;  // cache rows 16-byte aligned: head_dim * elem % 16 == 0
};

// The keys a query at `pos` sees: [first_key(pos), pos + 1).
__device__ inline int first_key(int pos, int window) {
  return window > 0 ? max(0, pos + 1 - window) : 0;
}

// Start of the (slot, local KV head) cache rows, in elements.
__device__ inline int64_t cache_head_base(const AttentionArgs& a, int slot, int kv_local) {
  return (int64_t(slot) * a.kv_heads + kv_local) * a.capacity * a.head_dim;
}

// --- decode ------------------------------------------------------------------

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr int kDecodeUnroll = 2;  // key rows each lane has in flight per step
// A split gets at least this many keys: fewer would spend more on the merge
// than they save.
constexpr int64_t kMinKeysPerSplit = 256;

// How a decode step is cut into blocks: one per (token, KV head of the
// rank, chunk of at most max_heads query heads of that KV head, split of the
// keys).
struct DecodePlan {
  int kv_groups = 0;    // KV heads the rank's query heads read
  int max_heads = 1;    // query heads per block (1, 4 or 8)
  int head_chunks = 1;  // blocks per KV head for its query heads
  int splits = 1;
  int64_t keys_per_split = 0;
};

struct DecodePartials {
  float* acc = nullptr;  // [tokens, heads, splits, head_dim]
  float* max = nullptr;  // [tokens, heads, splits]
  float* sum = nullptr;
};

// The local query heads [begin, end) that read the KV head of group index
// `gi` (0 for the KV head of local query head 0), as AttentionHeads maps them.
struct HeadRange {
  int begin, end, kv_local;
};
__host__ __device__ inline HeadRange heads_of_group(int heads, int q_offset, int kv_offset,
                                                    int group, int gi) {
  const int kv_global = q_offset / group + gi;
  const int first = kv_global * group, last = (kv_global + 1) * group;  // global heads
  const int begin = (first > q_offset ? first : q_offset) - q_offset;
  const int end = (last < q_offset + heads ? last : q_offset + heads) - q_offset;
  return {begin, end, kv_global - kv_offset};
}

// One block: a token, up to kMaxHeads query heads of one KV head, the keys
// of one split. Lanes are cut into row groups of kRowLanes lanes; a row
// group holds one key row (each lane kVecsPerLane 16-byte vectors of it),
// so a warp reads 32 / kRowLanes rows per step, kDecodeUnroll steps at a
// time, and the four warps take turns over the split's keys. Each warp
// carries its own online softmax (max shared by its lanes); at the end the
// row groups' sums are added, the warps' partials are merged with
// softmax_merge, and the result is either the output (one split) or a
// partial for decode_merge_kernel.
template <class Cache, int kRowLanes, int kVecsPerLane, int kMaxHeads>
__global__ __launch_bounds__(kDecodeThreads) void decode_attention_kernel(AttentionArgs a,
                                                                          DecodePlan plan,
                                                                          DecodePartials part) {
  using Storage = typename Cache::Storage;
  constexpr int kVec = kVecOf<Cache>;
  constexpr int kDims = kVec * kVecsPerLane;      // dims a lane holds
  constexpr int kPaddedDims = kDims * kRowLanes;  // >= head_dim
  constexpr int kRowGroups = 32 / kRowLanes;      // key rows per warp step
  constexpr int kWarpTile = kRowGroups * kDecodeUnroll;
  __shared__ float warp_acc[kDecodeWarps][kMaxHeads][kPaddedDims];
  __shared__ float warp_max[kDecodeWarps][kMaxHeads], warp_sum[kDecodeWarps][kMaxHeads];

  // Block index -> (token, KV head group, head chunk, split).
  int64_t index = blockIdx.x;
  const int split = int(index % plan.splits);
  index /= plan.splits;
  const int chunk = int(index % plan.head_chunks);
  index /= plan.head_chunks;
  const int gi = int(index % plan.kv_groups);
  const int64_t token = index / plan.kv_groups;

  const HeadRange range = heads_of_group(a.heads, a.q_offset, a.kv_offset, a.group, gi);
  const int h0 = range.begin + chunk * kMaxHeads;
  const int nh = min(kMaxHeads, range.end - h0);
  if (nh <= 0) return;
  const int pos = a.token_pos[token];
  const int64_t lo = first_key(pos, a.window), hi = int64_t(pos) + 1;
  const int64_t begin = lo + int64_t(split) * plan.keys_per_split;
  if (begin >= hi) return;  // a short context leaves the later splits empty
  const int64_t end = min(hi, begin + plan.keys_per_split);

  const int head_dim = a.head_dim;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int row_lane = lane % kRowLanes, row_group = lane / kRowLanes;
  const int64_t base = cache_head_base(a, a.token_slot[token], range.kv_local);
  const Storage* k_rows = static_cast<const Storage*>(a.k_cache) + base;
  const Storage* v_rows = static_cast<const Storage*>(a.v_cache) + base;
  // The lane's dims: vector j starts at dim (j * kRowLanes + row_lane) * kVec.
  auto dim_of = [&](int j) { return (j * kRowLanes + row_lane) * kVec; };

  // q of the block's heads, pre-scaled by 1/sqrt(head_dim), in the lane's dims.
  const int64_t q_stride = int64_t(a.heads) * head_dim;
  float q[kMaxHeads][kDims];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h)
#pragma unroll
    for (int j = 0; j < kVecsPerLane; ++j)
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const int d = dim_of(j) + e;
        q[h][j * kVec + e] =
            h < nh && d < head_dim
                ? load_activation(a.q, token * q_stride + int64_t(h0 + h) * head_dim + d, a.bf16) *
                      a.scale
                : 0.0f;
      }

  float row_max[kMaxHeads], row_sum[kMaxHeads], acc[kMaxHeads][kDims];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
    row_max[h] = -INFINITY;
    row_sum[h] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[h][i] = 0.0f;
  }

  // The loop bound depends on the warp only: every lane runs every shuffle.
  for (int64_t tile = begin + int64_t(warp) * kWarpTile; tile < end;
       tile += int64_t(kDecodeWarps) * kWarpTile) {
    float k_val[kDecodeUnroll][kDims], v_val[kDecodeUnroll][kDims];
    bool valid[kDecodeUnroll];
#pragma unroll
    for (int u = 0; u < kDecodeUnroll; ++u) {
      const int64_t key = tile + u * kRowGroups + row_group;
      valid[u] = key < end;
#pragma unroll
      for (int j = 0; j < kVecsPerLane; ++j) {
        const int d = dim_of(j);
        if (valid[u] && d < head_dim) {
          load_vec<Cache, kVec>(k_rows + key * head_dim + d, &k_val[u][j * kVec]);
          load_vec<Cache, kVec>(v_rows + key * head_dim + d, &v_val[u][j * kVec]);
        } else {
          // Zeros, not whatever lies there: p = 0 times a NaN is NaN.
#pragma unroll
          for (int e = 0; e < kVec; ++e) k_val[u][j * kVec + e] = v_val[u][j * kVec + e] = 0.0f;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      if (h >= nh) continue;  // uniform over the block
      float score[kDecodeUnroll];
      float tile_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kDims; ++i) dot = fmaf(q[h][i], k_val[u][i], dot);
          // The row group's lanes hold the row's pieces: sum them.
#pragma unroll
        for (int offset = kRowLanes / 2; offset > 0; offset /= 2)
          dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        score[u] = valid[u] ? dot : -INFINITY;
        tile_max = fmaxf(tile_max, score[u]);
      }
      // One max for the warp: across its row groups.
#pragma unroll
      for (int offset = kRowLanes; offset < 32; offset *= 2)
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
      // tile_max is finite: key `tile` (row group 0, u 0) is below end.
      const float new_max = fmaxf(row_max[h], tile_max);
      const float shrink = expf(row_max[h] - new_max);  // 0 while row_max is -inf
      row_max[h] = new_max;
      row_sum[h] *= shrink;
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[h][i] *= shrink;
#pragma unroll
      for (int u = 0; u < kDecodeUnroll; ++u) {
        const float p = expf(score[u] - new_max);  // 0 for a masked key
        row_sum[h] += p;
#pragma unroll
        for (int i = 0; i < kDims; ++i) acc[h][i] = fmaf(p, v_val[u][i], acc[h][i]);
      }
    }
  }

  // The warp's partial: add the row groups' sums (they share the max).
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) {
#pragma unroll
    for (int offset = kRowLanes; offset < 32; offset *= 2) {
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], offset);
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[h][i] += __shfl_xor_sync(0xffffffffu, acc[h][i], offset);
    }
    if (row_group == 0) {
#pragma unroll
      for (int j = 0; j < kVecsPerLane; ++j)
#pragma unroll
        for (int e = 0; e < kVec; ++e) warp_acc[warp][h][dim_of(j) + e] = acc[h][j * kVec + e];
    }
    if (lane == 0) {
      warp_max[warp][h] = row_max[h];  // -inf for a warp that had no keys
      warp_sum[warp][h] = row_sum[h];
    }
  }
  __syncthreads();

  // The block's partial: the warps' merged, one (head, dim) per thread.
  for (int i = int(threadIdx.x); i < nh * head_dim; i += kDecodeThreads) {
    const int h = i / head_dim, d = i - h * head_dim;
    float max = -INFINITY, sum = 0.0f, value = 0.0f;
    for (int w = 0; w < kDecodeWarps; ++w)
      math::softmax_merge(max, sum, &value, warp_max[w][h], warp_sum[w][h], &warp_acc[w][h][d], 1);
    const int64_t row = token * a.heads + h0 + h;
    if (plan.splits == 1) {
      // sum >= 1: the max key's weight is 1
      store_activation(a.out, row * head_dim + d, value / sum, a.bf16);
    } else {
      const int64_t unit = row * plan.splits + split;
      part.acc[unit * head_dim + d] = value;
      if (d == 0) {
        part.max[unit] = max;
        part.sum[unit] = sum;
      }
    }
  }
}

// out of one (token, head) per block <- the merge of its splits' partials.
__global__ void decode_merge_kernel(AttentionArgs a, DecodePlan plan, DecodePartials part) {
  const int64_t row = blockIdx.x;  // token * heads + head
  const int64_t token = row / a.heads;
  const int pos = a.token_pos[token];
  const int64_t keys = int64_t(pos) + 1 - first_key(pos, a.window);
  // Splits past the token's keys were never written.
  const int64_t used = (keys + plan.keys_per_split - 1) / plan.keys_per_split;
  for (int d = int(threadIdx.x); d < a.head_dim; d += int(blockDim.x)) {
    float max = -INFINITY, sum = 0.0f, value = 0.0f;
    for (int64_t s = 0; s < used; ++s) {
      const int64_t unit = row * plan.splits + s;
      math::softmax_merge(max, sum, &value, part.max[unit], part.sum[unit],
                          &part.acc[unit * a.head_dim + d], 1);
    }
    store_activation(a.out, row * a.head_dim + d, value / sum, a.bf16);
  }
}

int multiprocessors() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      count <= 0) {
    cudaGetLastError();  // not a launch failure of ours: do not leave it sticky
    return 132;          // an H100/H200
  }
  return count;
}

DecodePlan plan_decode(const AttentionArgs& a, const DeviceBatch& batch) {
  DecodePlan plan;
  plan.kv_groups = (a.q_offset + a.heads - 1) / a.group - a.q_offset / a.group + 1;
  int widest = 0;
  for (int gi = 0; gi < plan.kv_groups; ++gi) {
    const HeadRange r = heads_of_group(a.heads, a.q_offset, a.kv_offset, a.group, gi);
    widest = std::max(widest, r.end - r.begin);
  }
  plan.max_heads = widest <= 1 ? 1 : widest <= 4 ? 4 : 8;
  plan.head_chunks = (widest + plan.max_heads - 1) / plan.max_heads;
  // Sized by the cache's capacity, not by the step's longest context: the
  // same plan (and so the same kernels and summation order) at every step,
  // as a captured decode step needs (docs/cuda_backend.md); the splits past
  // a token's keys exit at once and the merge skips them.
  const int64_t max_keys = a.window > 0 ? std::min<int64_t>(a.window, a.capacity) : a.capacity;
  // Enough blocks for four per multiprocessor (a block streams its keys with
  // 4 warps; several per SM keep enough loads in flight to fill HBM), but
  // no split shorter than kMinKeysPerSplit.
  const int64_t blocks = batch.tokens * plan.kv_groups * plan.head_chunks;
  const int64_t wanted = (4 * int64_t(multiprocessors()) + blocks - 1) / blocks;
  const int64_t splits = std::max<int64_t>(1, std::min(wanted, max_keys / kMinKeysPerSplit));
  plan.keys_per_split = std::max<int64_t>(1, (max_keys + splits - 1) / splits);
  plan.splits = int((max_keys + plan.keys_per_split - 1) / plan.keys_per_split);
  plan.splits = std::max(plan.splits, 1);
  return plan;
}

// The decode kernel's lane layout for the head_dim: vectors per row, lanes
// per row (a power of two, padded), vectors per lane.
struct DecodeShape {
  int row_lanes, vecs_per_lane;
};
DecodeShape decode_shape(int head_dim, int vec) {
  const int vecs = head_dim / vec;
  if (vecs <= 4) return {4, 1};
  if (vecs <= 8) return {8, 1};
  if (vecs <= 16) return {16, 1};
  if (vecs <= 32) return {32, 1};
  return {32, 2};  // F32 up to 256 dims
}

template <class Cache, int kRowLanes, int kVecsPerLane>
void launch_decode_heads(const AttentionArgs& a, const DecodePlan& plan, const DecodePartials& part,
                         unsigned blocks, cudaStream_t stream) {
  switch (plan.max_heads) {
    case 1:
      decode_attention_kernel<Cache, kRowLanes, kVecsPerLane, 1>
          <<<blocks, kDecodeThreads, 0, stream>>>(a, plan, part);
      break;
    case 4:
      decode_attention_kernel<Cache, kRowLanes, kVecsPerLane, 4>
          <<<blocks, kDecodeThreads, 0, stream>>>(a, plan, part);
      break;
    default:
      decode_attention_kernel<Cache, kRowLanes, kVecsPerLane, 8>
          <<<blocks, kDecodeThreads, 0, stream>>>(a, plan, part);
  }
}

template <class Cache>
void launch_decode(const AttentionArgs& a, const DecodePlan& plan, const DecodePartials& part,
                   cudaStream_t stream) {
  const int64_t blocks =
      a.tokens * plan.kv_groups * int64_t(plan.head_chunks) * int64_t(plan.splits);
  if (blocks >= (int64_t(1) << 31) || a.tokens * a.heads >= (int64_t(1) << 31))
    throw UsageError("cuda attention: a decode batch of " + std::to_string(a.tokens) +
                     " tokens is more than one launch holds");
  const DecodeShape shape = decode_shape(a.head_dim, kVecOf<Cache>);
  if (shape.vecs_per_lane == 2) {
    // Only F32 rows have more than 32 vectors (head_dim <= kMaxHeadDim).
    if constexpr (kVecOf<Cache> == 4)
      launch_decode_heads<Cache, 32, 2>(a, plan, part, unsigned(blocks), stream);
    else
      throw std::logic_error("cuda attention: no decode layout for head_dim " +
                             std::to_string(a.head_dim));
  } else {
    switch (shape.row_lanes) {
      case 4: launch_decode_heads<Cache, 4, 1>(a, plan, part, unsigned(blocks), stream); break;
      case 8: launch_decode_heads<Cache, 8, 1>(a, plan, part, unsigned(blocks), stream); break;
      case 16: launch_decode_heads<Cache, 16, 1>(a, plan, part, unsigned(blocks), stream); break;
      default: launch_decode_heads<Cache, 32, 1>(a, plan, part, unsigned(blocks), stream);
    }
  }
  check_launch("decode attention");
  if (plan.splits > 1) {
    decode_merge_kernel<<<unsigned(a.tokens * a.heads), 128, 0, stream>>>(a, plan, part);
    check_launch("decode attention merge");
  }
}

// --- prefill -----------------------------------------------------------------

constexpr int kPrefillThreads = 128;
constexpr int kPrefillColThreads = 8;                                     // threads per query row
constexpr int kPrefillRowThreads = kPrefillThreads / kPrefillColThreads;  // 16
constexpr int kPrefillKeys = 32;                                          // keys per K/V tile
constexpr int kPrefillKeysPerThread = kPrefillKeys / kPrefillColThreads;  // 4

template <int kRowsPerThread>
constexpr int kPrefillRows = kPrefillRowThreads* kRowsPerThread;  // query rows per block

// Shared memory of the prefill kernel, in floats: q tile [rows][head_dim + 1]
// (scaled), K tile [keys][head_dim + 1], V tile [keys][head_dim], weights
// [rows][keys + 1]. The +1 strides put the rows that the threads of a warp
// read at once in different banks.
size_t prefill_smem_bytes(int rows, int head_dim) {
  return sizeof(float) * size_t(rows * (head_dim + 1) + kPrefillKeys * (head_dim + 1) +
                                kPrefillKeys * head_dim + rows * (kPrefillKeys + 1));
}

// Thread (ty, tx) of a block owns query rows ty * kRowsPerThread + i, score
// columns tx + 8 j of each K/V tile, and output dims tx + 8 j. The block's
// query rows may belong to several sequences (a ragged batch): they are
// taken as runs of rows of one slot, each run meeting the K/V tiles of its
// slot from the earliest key any of its rows sees to the last row's
// position; rows outside the run, and keys a row does not see, are masked.
template <class Cache, int kRowsPerThread, int kDimsPerThread>
__global__ __launch_bounds__(kPrefillThreads) void prefill_attention_kernel(AttentionArgs a) {
  using Storage = typename Cache::Storage;
  constexpr int kRows = kPrefillRows<kRowsPerThread>;
  constexpr int kVec = kVecOf<Cache>;
  const int head_dim = a.head_dim, ld = head_dim + 1;
  extern __shared__ float smem[];
  float* q_tile = smem;
  float* k_tile = q_tile + kRows * ld;
  float* v_tile = k_tile + kPrefillKeys * ld;
  float* weights = v_tile + kPrefillKeys * head_dim;
  constexpr int kWeightsLd = kPrefillKeys + 1;
  __shared__ int row_slot[kRows], row_first_key[kRows], row_end_key[kRows];

  const int head = blockIdx.y;
  const int64_t first_token = int64_t(blockIdx.x) * kRows;
  const int kv_local = (a.q_offset + head) / a.group - a.kv_offset;
  const int64_t q_stride = int64_t(a.heads) * head_dim;
  const int tid = int(threadIdx.x);
  const int tx = tid % kPrefillColThreads, ty = tid / kPrefillColThreads;

  for (int i = tid; i < kRows * head_dim; i += kPrefillThreads) {
    const int r = i / head_dim, d = i - r * head_dim;
    const int64_t token = first_token + r;
    q_tile[r * ld + d] =
        token < a.tokens
            ? load_activation(a.q, token * q_stride + int64_t(head) * head_dim + d, a.bf16) *
                  a.scale
            : 0.0f;
  }
  for (int r = tid; r < kRows; r += kPrefillThreads) {
    const int64_t token = first_token + r;
    const bool live = token < a.tokens;
    const int pos = live ? a.token_pos[token] : 0;
    row_slot[r] = live ? a.token_slot[token] : -1;  // -1: past the batch, no keys
    row_first_key[r] = first_key(pos, a.window);
    row_end_key[r] = pos + 1;
  }
  __syncthreads();

  float row_max[kRowsPerThread], row_sum[kRowsPerThread], acc[kRowsPerThread][kDimsPerThread];
#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) acc[i][j] = 0.0f;
  }

  // Every thread walks the same runs and tiles (read from shared memory), so
  // the barriers inside are met by all.
  for (int run_begin = 0; run_begin < kRows;) {
    const int slot = row_slot[run_begin];
    int run_end = run_begin + 1;
    while (run_end < kRows && row_slot[run_end] == slot) ++run_end;
    if (slot >= 0) {
      int keys_begin = row_first_key[run_begin], keys_end = row_end_key[run_begin];
      for (int r = run_begin + 1; r < run_end; ++r) {
        keys_begin = min(keys_begin, row_first_key[r]);
        keys_end = max(keys_end, row_end_key[r]);
      }
      const int64_t base = cache_head_base(a, slot, kv_local);
      const Storage* k_rows = static_cast<const Storage*>(a.k_cache) + base;
      const Storage* v_rows = static_cast<const Storage*>(a.v_cache) + base;
      for (int tile = keys_begin; tile < keys_end; tile += kPrefillKeys) {
        const int tile_keys = min(kPrefillKeys, keys_end - tile);
        __syncthreads();  // the previous tile is no longer read
        // The tile's rows are consecutive in the cache: one run of
        // tile_keys * head_dim elements; keys past it are zeros.
        if (a.vector_loads) {
          const int vectors_per_row = head_dim / kVec;
          for (int i = tid; i < kPrefillKeys * vectors_per_row; i += kPrefillThreads) {
            const int key = i / vectors_per_row, d = (i - key * vectors_per_row) * kVec;
            float kv[kVec], vv[kVec];
            if (key < tile_keys) {
              load_vec<Cache, kVec>(k_rows + int64_t(tile + key) * head_dim + d, kv);
              load_vec<Cache, kVec>(v_rows + int64_t(tile + key) * head_dim + d, vv);
            } else {
#pragma unroll
              for (int e = 0; e < kVec; ++e) kv[e] = vv[e] = 0.0f;
            }
#pragma unroll
            for (int e = 0; e < kVec; ++e) {
              k_tile[key * ld + d + e] = kv[e];
              v_tile[key * head_dim + d + e] = vv[e];
            }
          }
        } else {
          for (int i = tid; i < kPrefillKeys * head_dim; i += kPrefillThreads) {
            const int key = i / head_dim, d = i - key * head_dim;
            const bool live = key < tile_keys;
            const int64_t at = int64_t(tile + key) * head_dim + d;
            k_tile[key * ld + d] = live ? Cache::to_float(k_rows[at]) : 0.0f;
            v_tile[key * head_dim + d] = live ? Cache::to_float(v_rows[at]) : 0.0f;
          }
        }
        __syncthreads();

        // Scores of the thread's rows and columns.
        float score[kRowsPerThread][kPrefillKeysPerThread] = {};
        for (int d = 0; d < head_dim; ++d) {
          float qv[kRowsPerThread], kv[kPrefillKeysPerThread];
#pragma unroll
          for (int i = 0; i < kRowsPerThread; ++i)
            qv[i] = q_tile[(ty * kRowsPerThread + i) * ld + d];
#pragma unroll
          for (int j = 0; j < kPrefillKeysPerThread; ++j)
            kv[j] = k_tile[(tx + kPrefillColThreads * j) * ld + d];
#pragma unroll
          for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
            for (int j = 0; j < kPrefillKeysPerThread; ++j)
              score[i][j] = fmaf(qv[i], kv[j], score[i][j]);
        }

        // Online softmax per row; a row's 8 threads are lanes tx = 0..7 of
        // one warp, so xor shuffles 1, 2, 4 reduce over the row.
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
          const int r = ty * kRowsPerThread + i;
          const bool in_run = r >= run_begin && r < run_end;
          float tile_max = -INFINITY;
#pragma unroll
          for (int j = 0; j < kPrefillKeysPerThread; ++j) {
            const int key = tile + tx + kPrefillColThreads * j;
            if (!in_run || key < row_first_key[r] || key >= row_end_key[r]) score[i][j] = -INFINITY;
            tile_max = fmaxf(tile_max, score[i][j]);
          }
#pragma unroll
          for (int offset = 1; offset < kPrefillColThreads; offset *= 2)
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
          // A row that sees no key of the tile (another run's row, or past
          // its causal limit) keeps its state exactly: shrink 1, weights 0.
          const float new_max = fmaxf(row_max[i], tile_max);
          const float shrink = new_max == -INFINITY ? 1.0f : expf(row_max[i] - new_max);
          float tile_sum = 0.0f;
#pragma unroll
          for (int j = 0; j < kPrefillKeysPerThread; ++j) {
            const float p = score[i][j] == -INFINITY ? 0.0f : expf(score[i][j] - new_max);
            tile_sum += p;
            weights[r * kWeightsLd + tx + kPrefillColThreads * j] = p;
          }
#pragma unroll
          for (int offset = 1; offset < kPrefillColThreads; offset *= 2)
            tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
          row_max[i] = new_max;
          row_sum[i] = row_sum[i] * shrink + tile_sum;
#pragma unroll
          for (int j = 0; j < kDimsPerThread; ++j) acc[i][j] *= shrink;
        }
        __syncwarp();  // a row's weights were written by the lanes that read them

        // acc += weights · V over the tile.
        for (int key = 0; key < kPrefillKeys; ++key) {
          float p[kRowsPerThread];
#pragma unroll
          for (int i = 0; i < kRowsPerThread; ++i)
            p[i] = weights[(ty * kRowsPerThread + i) * kWeightsLd + key];
#pragma unroll
          for (int j = 0; j < kDimsPerThread; ++j) {
            const int d = tx + kPrefillColThreads * j;
            if (d < head_dim) {
              const float v = v_tile[key * head_dim + d];
#pragma unroll
              for (int i = 0; i < kRowsPerThread; ++i) acc[i][j] = fmaf(p[i], v, acc[i][j]);
            }
          }
        }
      }
    }
    run_begin = run_end;
  }

#pragma unroll
  for (int i = 0; i < kRowsPerThread; ++i) {
    const int64_t token = first_token + ty * kRowsPerThread + i;
    if (token >= a.tokens) continue;
    const float inv = row_sum[i] > 0.0f ? 1.0f / row_sum[i] : 0.0f;
#pragma unroll
    for (int j = 0; j < kDimsPerThread; ++j) {
      const int d = tx + kPrefillColThreads * j;
      if (d < head_dim)
        store_activation(a.out, token * q_stride + int64_t(head) * head_dim + d, acc[i][j] * inv,
                         a.bf16);
    }
  }
}

template <class Cache, int kRowsPerThread, int kDimsPerThread>
void launch_prefill_shape(const AttentionArgs& a, cudaStream_t stream) {
  constexpr int kRows = kPrefillRows<kRowsPerThread>;
  const auto kernel = prefill_attention_kernel<Cache, kRowsPerThread, kDimsPerThread>;
  const size_t smem = prefill_smem_bytes(kRows, a.head_dim);
  if (smem > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               int(smem)) != cudaSuccess)
    throw std::runtime_error("cuda attention: the prefill kernel cannot have " +
                             std::to_string(smem) +
                             " bytes of shared memory: " + cudaGetErrorString(cudaGetLastError()));
  const dim3 grid(unsigned((a.tokens + kRows - 1) / kRows), unsigned(a.heads));
  kernel<<<grid, kPrefillThreads, smem, stream>>>(a);
  check_launch("prefill attention");
}

template <class Cache>
void launch_prefill(const AttentionArgs& a, cudaStream_t stream) {
  // Output dims per thread: ceil(head_dim / 8), rounded up to a power of two.
  if (a.head_dim <= 16)
    launch_prefill_shape<Cache, 4, 2>(a, stream);
  else if (a.head_dim <= 32)
    launch_prefill_shape<Cache, 4, 4>(a, stream);
  else if (a.head_dim <= 64)
    launch_prefill_shape<Cache, 4, 8>(a, stream);
  else if (a.head_dim <= 128)
    launch_prefill_shape<Cache, 4, 16>(a, stream);
  else
    launch_prefill_shape<Cache, 2, 32>(a, stream);
}

// --- host side ---------------------------------------------------------------

constexpr int kMaxHeadDim = 256;

void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError("cuda attention: " + message);
}

AttentionArgs attention_args(const Tensor& q, const KVCacheLayer& cache, const DeviceBatch& batch,
                             const AttentionHeads& heads) {
  require(q.device() == Device::CUDA && q.dtype() == DType::F32 && q.rank() == 2,
          "the query must be an F32 matrix on the GPU");
  const DType dtype = cache.k.dtype();
  require(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
          "the KV cache must be F32, BF16 or F16");
  require(cache.k.device() == Device::CUDA && cache.v.device() == Device::CUDA &&
              cache.v.dtype() == dtype && cache.k.rank() == 4 && cache.k.shape() == cache.v.shape(),
          "K and V caches must be alike [slots, kv_heads, capacity, head_dim] on the GPU");
  require(heads.group >= 1, "group must be at least 1");
  require(heads.head_dim > 0 && heads.head_dim <= kMaxHeadDim,
          "head_dim " + std::to_string(heads.head_dim) + " is not in 1.." +
              std::to_string(kMaxHeadDim));
  require(cache.k.dim(3) == heads.head_dim, "the cache's head_dim differs from the heads'");
  require(q.dim(1) % heads.head_dim == 0, "query width is not a multiple of head_dim");
  require(q.dim(0) == batch.tokens, "query rows differ from the batch's tokens");
  require(batch.max_context <= cache.k.dim(2), "attention beyond the KV cache");
  AttentionArgs a;
  require(q.device() == Device::CUDA && (q.dtype() == DType::F32 || q.dtype() == DType::BF16),
          "the query must be F32 or BF16 on the GPU");
  a.q = q.raw();
  a.bf16 = q.dtype() == DType::BF16;
  a.k_cache = cache.k.raw();
  a.v_cache = cache.v.raw();
  a.token_slot = batch.token_slot;
  a.token_pos = batch.token_pos;
  a.tokens = batch.tokens;
  a.capacity = cache.k.dim(2);
  a.kv_heads = int(cache.k.dim(1));
  a.head_dim = heads.head_dim;
  a.heads = int(q.dim(1) / heads.head_dim);
  a.q_offset = heads.q_offset;
  a.kv_offset = heads.kv_offset;
  a.group = heads.group;
  a.window = heads.window;
  a.scale = 1.0f / std::sqrt(float(heads.head_dim));
  require(a.heads == 0 || (a.q_offset / a.group - a.kv_offset >= 0 &&
                           (a.q_offset + a.heads - 1) / a.group - a.kv_offset < a.kv_heads),
          "the query heads read KV heads outside the cache");
  const size_t elem = dtype_size(dtype);
  a.vector_loads = (size_t(a.head_dim) * elem) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(a.k_cache) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(a.v_cache) % 16 == 0;
  return a;
}

// The decode kernel wants whole 16-byte vectors per row; other batches (and
// odd head_dims) take the general kernel, which handles one token per
// sequence too.
bool use_decode_kernel(const AttentionArgs& a, const DeviceBatch& batch) {
  return batch.decode && a.vector_loads;
}

template <class Fn>
void with_cache_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F32: fn(CacheF32{}); break;
    case DType::BF16: fn(CacheBF16{}); break;
    default: fn(CacheF16{});
  }
}

}  // namespace

void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache, const DeviceBatch& batch,
              cudaStream_t stream) {
  const DType dtype = cache.k.dtype();
  if (!(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16))
    throw UsageError("cuda kv_write: the KV cache must be F32, BF16 or F16");
  if (cache.k.rank() != 4 || cache.k.shape() != cache.v.shape() || cache.v.dtype() != dtype ||
      cache.k.device() != Device::CUDA || cache.v.device() != Device::CUDA)
    throw UsageError("cuda kv_write: K and V caches must be alike on the GPU");
  const int64_t kv_heads = cache.k.dim(1), capacity = cache.k.dim(2), head_dim = cache.k.dim(3);
  const Shape want{batch.tokens, kv_heads * head_dim};
  if ((k.dtype() != DType::F32 && k.dtype() != DType::BF16) || v.dtype() != k.dtype() ||
      k.shape() != want || v.shape() != want || k.device() != Device::CUDA ||
      v.device() != Device::CUDA)
    throw UsageError("cuda kv_write: k and v must be F32 or BF16 " + shape_str(want) +
                     " on the GPU");
  if (batch.max_context > capacity) throw UsageError("cuda kv_write: KV cache capacity exceeded");
  const int64_t n = batch.tokens * kv_heads * head_dim;
  if (n == 0) return;
  const int threads = 256;
  const unsigned blocks = unsigned(std::min<int64_t>((n + threads - 1) / threads, 1 << 20));
  with_cache_type(dtype, [&](auto cache_type) {
    using Cache = decltype(cache_type);
    using Storage = typename Cache::Storage;
    kv_write_kernel<Cache><<<blocks, threads, 0, stream>>>(
        k.raw(), v.raw(), k.dtype() == DType::BF16, static_cast<Storage*>(cache.k.raw()),
        static_cast<Storage*>(cache.v.raw()), batch.token_slot, batch.token_pos, batch.tokens,
        int(kv_heads), capacity, int(head_dim));
  });
  check_launch("kv_write");
}

size_t attention_scratch_bytes(const Tensor& q, const KVCacheLayer& cache, const DeviceBatch& batch,
                               const AttentionHeads& heads) {
  const AttentionArgs a = attention_args(q, cache, batch, heads);
  if (a.tokens == 0 || a.heads == 0 || !use_decode_kernel(a, batch)) return 0;
  const DecodePlan plan = plan_decode(a, batch);
  if (plan.splits == 1) return 0;
  const size_t units = size_t(a.tokens) * size_t(a.heads) * size_t(plan.splits);
  return units * (size_t(a.head_dim) + 2) * sizeof(float);
}

void attention(const Tensor& q, const KVCacheLayer& cache, const DeviceBatch& batch,
               const AttentionHeads& heads, const Tensor& out, void* scratch, cudaStream_t stream) {
  AttentionArgs a = attention_args(q, cache, batch, heads);
  require(out.device() == Device::CUDA && out.dtype() == q.dtype() && out.shape() == q.shape(),
          "the output must be on the GPU, of the query's dtype and shape");
  a.out = out.raw();
  if (a.tokens == 0 || a.heads == 0) return;
  with_cache_type(cache.k.dtype(), [&](auto cache_type) {
    using Cache = decltype(cache_type);
    if (use_decode_kernel(a, batch)) {
      const DecodePlan plan = plan_decode(a, batch);
      DecodePartials part;
      if (plan.splits > 1) {
        require(scratch != nullptr, "decode attention needs attention_scratch_bytes of scratch");
        const size_t units = size_t(a.tokens) * size_t(a.heads) * size_t(plan.splits);
        part.acc = static_cast<float*>(scratch);
        part.max = part.acc + units * size_t(a.head_dim);
        part.sum = part.max + units;
      }
      launch_decode<Cache>(a, plan, part, stream);
    } else {
      launch_prefill<Cache>(a, stream);
    }
  });
}

}  // namespace shardlm::cuda
