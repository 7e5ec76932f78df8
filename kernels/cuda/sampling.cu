// Token sampling on the GPU, bit-identical to sample_token_from_draw
// (runtime/sampler.cpp): both run the sampling functions of kernels/math.hpp
// on the same candidates in the same order, so the same logits and uniform
// give the same id.
//
// Greedy (temperature <= 0, or top_k = 1, which the rule makes equal): one
// block per row finds the best candidate by math::sampling_better.
//
// Temperature: each row's candidates are sorted by a 64-bit key that orders
// them exactly as the CPU does (larger logit first, ties to the lower id):
// math::sampling_sort_key, the logit's order-preserving key (which treats
// -0 and +0 as equal, as float comparison does) above the bit-inverted id.
// Keys are unique, so the sort's stability does not matter. Whole rows are
// sorted (cub::DeviceSegmentedRadixSort) however small top_k is; then one
// block per row computes the kept candidates' weights a chunk at a time in
// parallel (math::sampling_weight: the same exp, built from basic
// operations, on both sides) into shared memory, and one thread runs the
// three sequential double sums of the rule over each chunk in order (total,
// nucleus, walk), so each sum takes the same roundings as the CPU's loop.
//
// Where the GPU could still differ from the CPU, and why it does not:
// - exp: libdevice's exp and glibc's differ by an ulp; math::sampling_exp
//   uses only fma, rint and IEEE multiplies on both.
// - fma contraction: nvcc fuses a*b+c by default; the shared functions use
//   explicit fma and math::mul_unfused (__dmul_rn here) where a product
//   meets an add.
// - summation order: the sums are sequential, never tree reductions.
// - the division (logit - top) / T and w / total: IEEE double division is
//   correctly rounded on the device (-prec-div only affects float).
// - denormals: double arithmetic on the device keeps subnormals (FTZ
//   applies to float only, and only with -ftz=true).
// - NaN logits are outside the rule on both sides (std::sort's order is
//   undefined with them).
#include <algorithm>
#include <bit>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <stdexcept>
#include <string>

#include "kernels/cuda/sampling.cuh"
#include "kernels/math.hpp"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 256;
// Weights computed per round of the walk kernel (16 KiB of shared memory).
constexpr int kChunk = 2048;
// Candidates sorted per pass: bounds the scratch (16 bytes per candidate:
// two key buffers) at 128 MiB; rows beyond it are sampled in further passes.
constexpr int64_t kItemsPerPass = int64_t(1) << 23;

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("cuda::sample_rows: ") + what +
                             " failed: " + cudaGetErrorString(status));
}

int64_t rows_per_pass(int64_t rows, int64_t vocab) {
  return std::max<int64_t>(1, std::min(rows, kItemsPerPass / vocab));
}

// Bits the (inverted) id takes at the bottom of a sort key.
int id_bits(int64_t vocab) {
  return std::max(1, int(std::bit_width(uint64_t(vocab - 1))));
}

size_t align_up(size_t bytes) {
  return (bytes + 255) / 256 * 256;
}

// The pieces of the scratch for passes of `pass_rows` rows.
struct Scratch {
  uint64_t* keys_a;
  uint64_t* keys_b;
  int* offsets;  // pass_rows + 1 segment boundaries
  void* sort_temp;
  size_t sort_temp_bytes;
  size_t total_bytes;
};

size_t sort_temp_bytes(int64_t pass_rows, int64_t vocab, int bits) {
  size_t bytes = 0;
  cub::DoubleBuffer<uint64_t> keys(nullptr, nullptr);
  check(cub::DeviceSegmentedRadixSort::SortKeysDescending(
            nullptr, bytes, keys, int(pass_rows * vocab), int(pass_rows), (const int*)nullptr,
            (const int*)nullptr, 0, 32 + bits),
        "the radix sort's scratch size query");
  return bytes;
}

Scratch layout(void* base, int64_t pass_rows, int64_t vocab) {
  const size_t keys_bytes = align_up(size_t(pass_rows * vocab) * sizeof(uint64_t));
  const size_t offsets_bytes = align_up(size_t(pass_rows + 1) * sizeof(int));
  Scratch s{};
  s.sort_temp_bytes = sort_temp_bytes(pass_rows, vocab, id_bits(vocab));
  s.total_bytes = 2 * keys_bytes + offsets_bytes + align_up(s.sort_temp_bytes);
  char* p = static_cast<char*>(base);
  if (p) {
    s.keys_a = reinterpret_cast<uint64_t*>(p);
    s.keys_b = reinterpret_cast<uint64_t*>(p + keys_bytes);
    s.offsets = reinterpret_cast<int*>(p + 2 * keys_bytes);
    s.sort_temp = p + 2 * keys_bytes + offsets_bytes;
  }
  return s;
}

// One block per row: the best candidate by the rule's order.
__global__ void greedy_kernel(const float* logits, int64_t vocab, int32_t* ids) {
  const float* row = logits + int64_t(blockIdx.x) * vocab;
  int32_t best = -1;
  float best_logit = 0.f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = row[i];
    if (best < 0 || math::sampling_better(l, int32_t(i), best_logit, best)) {
      best = int32_t(i);
      best_logit = l;
    }
  }
  __shared__ float logits_of[kThreads];
  __shared__ int32_t ids_of[kThreads];
  logits_of[threadIdx.x] = best_logit;
  ids_of[threadIdx.x] = best;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (int(threadIdx.x) < stride) {
      const int32_t other = ids_of[threadIdx.x + stride];
      if (other >= 0 && (ids_of[threadIdx.x] < 0 ||
                         math::sampling_better(logits_of[threadIdx.x + stride], other,
                                               logits_of[threadIdx.x], ids_of[threadIdx.x]))) {
        ids_of[threadIdx.x] = other;
        logits_of[threadIdx.x] = logits_of[threadIdx.x + stride];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = ids_of[0];
}

// keys[r * vocab + i]: candidate i of row r, sorting descending into the
// rule's order.
__global__ void key_kernel(const float* logits, int64_t items, int64_t vocab, int bits,
                           uint64_t* keys) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += int64_t(gridDim.x) * blockDim.x)
    keys[i] = math::sampling_sort_key(logits[i], int32_t(i % vocab), bits);
}

__global__ void offsets_kernel(int rows, int vocab, int* offsets) {
  for (int r = int(blockIdx.x * blockDim.x + threadIdx.x); r <= rows; r += gridDim.x * blockDim.x)
    offsets[r] = r * vocab;
}

// One block per row over its sorted keys: weights, total, nucleus, walk.
__global__ void walk_kernel(const float* logits, const uint64_t* sorted, int64_t vocab, int bits,
                            int64_t keep, float temperature, float top_p, const double* uniforms,
                            int32_t* ids) {
  const float* row_logits = logits + int64_t(blockIdx.x) * vocab;
  const uint64_t* row_keys = sorted + int64_t(blockIdx.x) * vocab;
  auto id_at = [&](int64_t i) { return math::sampling_sort_key_id(row_keys[i], bits); };

  __shared__ double weights[kChunk];
  __shared__ int64_t found;  // index in sorted order, or -1
  const float top = row_logits[id_at(0)];
  // weights[j] <- the weight of sorted candidate begin + j, for j < n.
  auto fill = [&](int64_t begin, int n) {
    for (int j = threadIdx.x; j < n; j += blockDim.x)
      weights[j] = math::sampling_weight(row_logits[id_at(begin + j)], top, temperature);
    __syncthreads();
  };
  auto chunk = [&](int64_t begin) { return int(std::min<int64_t>(kChunk, keep - begin)); };

  // Only thread 0's total, cumulative, prefix and draw are used.
  double total = 0;
  for (int64_t begin = 0; begin < keep; begin += kChunk) {
    fill(begin, chunk(begin));
    if (threadIdx.x == 0) math::sampling_accumulate(weights, chunk(begin), total);
    __syncthreads();  // the next fill overwrites the weights
  }

  if (top_p < 1.f) {
    double cumulative = 0, prefix = 0;
    if (threadIdx.x == 0) found = -1;
    for (int64_t begin = 0; begin < keep; begin += kChunk) {
      fill(begin, chunk(begin));
      if (threadIdx.x == 0) {
        const int64_t last =
            math::sampling_nucleus_scan(weights, chunk(begin), total, top_p, cumulative, prefix);
        if (last >= 0) found = begin + last;
      }
      __syncthreads();
      if (found >= 0) break;
    }
    if (found >= 0) keep = found + 1;
    total = prefix;
  }

  double draw = math::sampling_walk_start(total, threadIdx.x == 0 ? uniforms[blockIdx.x] : 0.0);
  __syncthreads();  // every thread has read `found` above before it is reset
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  for (int64_t begin = 0; begin < keep; begin += kChunk) {
    fill(begin, chunk(begin));
    if (threadIdx.x == 0) {
      const int64_t chosen = math::sampling_walk_scan(weights, chunk(begin), draw);
      if (chosen >= 0) found = begin + chosen;
    }
    __syncthreads();
    if (found >= 0) break;
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = id_at(found >= 0 ? found : keep - 1);
}

}  // namespace

size_t sampling_scratch_bytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  return layout(nullptr, rows_per_pass(rows, vocab), vocab).total_bytes;
}

void sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingParams& params,
                 const double* uniforms, int32_t* ids, void* scratch, cudaStream_t stream) {
  if (rows <= 0) return;
  if (vocab <= 0 || vocab > (int64_t(1) << 30))
    throw std::invalid_argument("cuda::sample_rows: vocab " + std::to_string(vocab) +
                                " is outside [1, 2^30]");
  if (params.temperature <= 0.f || params.top_k == 1) {
    // top_k = 1 keeps the best candidate alone, which every draw picks.
    for (int64_t first = 0; first < rows; first += 65535) {
      const int64_t count = std::min<int64_t>(65535, rows - first);
      greedy_kernel<<<unsigned(count), kThreads, 0, stream>>>(logits + first * vocab, vocab,
                                                              ids + first);
    }
    check(cudaGetLastError(), "the greedy kernel's launch");
    return;
  }
  const int64_t pass_rows = rows_per_pass(rows, vocab);
  const Scratch s = layout(scratch, pass_rows, vocab);
  if (!scratch) throw std::invalid_argument("cuda::sample_rows: no scratch for the sort");
  const int bits = id_bits(vocab);
  const int64_t keep = params.top_k > 0 && params.top_k < vocab ? params.top_k : vocab;
  offsets_kernel<<<1, kThreads, 0, stream>>>(int(pass_rows), int(vocab), s.offsets);
  check(cudaGetLastError(), "the segment offsets kernel's launch");
  for (int64_t first = 0; first < rows; first += pass_rows) {
    const int64_t count = std::min(pass_rows, rows - first);
    const int64_t items = count * vocab;
    const float* pass_logits = logits + first * vocab;
    const unsigned key_blocks =
        unsigned(std::min<int64_t>((items + kThreads - 1) / kThreads, 4096));
    key_kernel<<<key_blocks, kThreads, 0, stream>>>(pass_logits, items, vocab, bits, s.keys_a);
    check(cudaGetLastError(), "the sort key kernel's launch");
    cub::DoubleBuffer<uint64_t> keys(s.keys_a, s.keys_b);
    const int* offsets = s.offsets;
    size_t temp_bytes = 0;
    check(cub::DeviceSegmentedRadixSort::SortKeysDescending(nullptr, temp_bytes, keys, int(items),
                                                            int(count), offsets, offsets + 1, 0,
                                                            32 + bits, stream),
          "the radix sort's scratch size query");
    if (temp_bytes > s.sort_temp_bytes)
      throw std::logic_error("cuda::sample_rows: the radix sort wants more scratch than sized");
    check(cub::DeviceSegmentedRadixSort::SortKeysDescending(s.sort_temp, temp_bytes, keys,
                                                            int(items), int(count), offsets,
                                                            offsets + 1, 0, 32 + bits, stream),
          "the segmented radix sort");
    walk_kernel<<<unsigned(count), kThreads, 0, stream>>>(pass_logits, keys.Current(), vocab, bits,
                                                          keep, params.temperature, params.top_p,
                                                          uniforms + first, ids + first);
    check(cudaGetLastError(), "the sampling walk kernel's launch");
  }
}

}  // namespace shardlm::cuda
