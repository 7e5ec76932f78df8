#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/math.hpp"

namespace shardlm::cuda {
namespace {

constexpr int kThreads = 256;

// Blocks of kThreads for `units` work items; the kernels stride over the
// grid, so a cap keeps huge inputs to a grid the device schedules in a few waves.
unsigned blocks_for(int64_t units) {
  return unsigned(std::clamp<int64_t>((units + kThreads - 1) / kThreads, 1, int64_t(1) << 16));
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

__device__ int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ int64_t grid_threads() {
  return int64_t(gridDim.x) * blockDim.x;
}

// Element-wise work over n elements: op.quad(i) does elements [i, i + 4)
// with 16-byte loads and stores (every pointer aligned, so `vec`), op.one(i)
// one element: the quads first, then the tail (or everything when !vec).
template <typename Op>
__global__ void elementwise_kernel(int64_t n, bool vec, Op op) {
  const int64_t quads = vec ? n / 4 : 0;
  for (int64_t q = global_thread(); q < quads; q += grid_threads()) op.quad(q * 4);
  for (int64_t i = quads * 4 + global_thread(); i < n; i += grid_threads()) op.one(i);
}

template <typename Op>
void launch_elementwise(int64_t n, bool vec, const Op& op, cudaStream_t stream, const char* name) {
  if (n <= 0) return;
  elementwise_kernel<<<blocks_for(vec ? n / 4 : n), kThreads, 0, stream>>>(n, vec, op);
  check_launch(name);
}

__device__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}

__device__ void store4(float* p, float4 v) {
  *reinterpret_cast<float4*>(p) = v;
}

// The sum of v over the block (every thread gets it); blockDim.x a multiple of 32.
__device__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int warps = int(blockDim.x) / 32;
  v = lane < warps ? warp_sums[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <DType D>
__device__ float load_widened(const void* table, int64_t index) {
  if constexpr (D == DType::F32) return static_cast<const float*>(table)[index];
  if constexpr (D == DType::BF16)
    return math::bf16_to_float(static_cast<const uint16_t*>(table)[index]);
  if constexpr (D == DType::F16)
    return math::f16_to_float(static_cast<const uint16_t*>(table)[index]);
  if constexpr (D == DType::I8) return float(static_cast<const int8_t*>(table)[index]);
  return 0.0f;
}

// One block per token: the row's columns in consecutive threads.
template <DType D>
__global__ void embedding_kernel(const void* table, const float* scales, int64_t width,
                                 const int32_t* ids, float* out) {
  const int64_t token = blockIdx.x, row = ids[token];
  // value = q * scale for I8, as the CPU backend widens it.
  const float scale = D == DType::I8 ? scales[row] : 1.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
    out[token * width + c] = load_widened<D>(table, row * width + c) * scale;
}

// One block per row; `vec`: the rows start 16-byte aligned and width % 4 == 0.
// kAdd: the row is first replaced by row + addend (one F32 addition per
// element, as `add`) and the sum is of the new values: the residual add and
// the RMSNorm's sums in one pass, summed term for term as without kAdd.
template <bool kAdd>
__global__ void row_sum_squares_kernel(float* x, const float* addend, int64_t width, float* sums,
                                       bool vec) {
  const int64_t offset = int64_t(blockIdx.x) * width;
  float* row = x + offset;
  float sum = 0.0f;
  if (vec) {
    for (int64_t i = threadIdx.x * 4; i < width; i += blockDim.x * 4) {
      float4 v = load4(row + i);
      if constexpr (kAdd) {
        const float4 a = load4(addend + offset + i);
        v = make_float4(v.x + a.x, v.y + a.y, v.z + a.z, v.w + a.w);
        store4(row + i, v);
      }
      sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      float v = row[i];
      if constexpr (kAdd) {
        v += addend[offset + i];
        row[i] = v;
      }
      sum += v * v;
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = sum;
}

__global__ void rmsnorm_scale_kernel(const float* x, const float* sums, int64_t width,
                                     float full_width, const float* weight, float eps, float* out,
                                     bool vec) {
  const int64_t offset = int64_t(blockIdx.x) * width;
  // As the CPU backend computes it (IEEE division and square root on both).
  const float scale = 1.0f / sqrtf(sums[blockIdx.x] / full_width + eps);
  if (vec) {
    for (int64_t i = threadIdx.x * 4; i < width; i += blockDim.x * 4) {
      const float4 v = load4(x + offset + i), w = load4(weight + i);
      store4(out + offset + i, make_float4(v.x * scale * w.x, v.y * scale * w.y, v.z * scale * w.z,
                                           v.w * scale * w.w));
    }
  } else {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
      out[offset + i] = x[offset + i] * scale * weight[i];
  }
}

// One thread per rotated pair: element i and i + half of a head.
__global__ void rope_kernel(float* x, int64_t pairs, int64_t heads, int head_dim,
                            const int32_t* positions, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int64_t p = global_thread(); p < pairs; p += grid_threads()) {
    const int64_t i = p % half, head = p / half, token = head / heads;
    const int64_t angle = int64_t(positions[token]) * half + i;
    float* v = x + head * head_dim;
    math::rope_rotate_pair(v[i], v[i + half], cos[angle], sin[angle]);
  }
}

struct SiluMul {
  const float* gate;
  const float* up;
  float* out;
  __device__ void quad(int64_t i) const {
    const float4 g = load4(gate + i), u = load4(up + i);
    store4(out + i, make_float4(math::silu(g.x) * u.x, math::silu(g.y) * u.y, math::silu(g.z) * u.z,
                                math::silu(g.w) * u.w));
  }
  __device__ void one(int64_t i) const { out[i] = math::silu(gate[i]) * up[i]; }
};

struct Add {
  const float* x;
  float* inout;
  __device__ void quad(int64_t i) const {
    const float4 a = load4(x + i), b = load4(inout + i);
    store4(inout + i, make_float4(b.x + a.x, b.y + a.y, b.z + a.z, b.w + a.w));
  }
  __device__ void one(int64_t i) const { inout[i] += x[i]; }
};

// Quads need cols % 4 == 0, so that a quad's columns are consecutive in bias.
struct AddBias {
  const float* bias;
  float* inout;
  int64_t cols;
  __device__ void quad(int64_t i) const {
    const float4 b = load4(bias + i % cols), v = load4(inout + i);
    store4(inout + i, make_float4(v.x + b.x, v.y + b.y, v.z + b.z, v.w + b.w));
  }
  __device__ void one(int64_t i) const { inout[i] += bias[i % cols]; }
};

// F32 -> 16-bit: four values in, one 8-byte store out.
template <DType D>
struct ConvertFromF32 {
  const float* src;
  uint16_t* dst;
  __device__ static uint16_t round(float f) {
    if constexpr (D == DType::BF16)
      return math::float_to_bf16(f);
    else
      return math::float_to_f16(f);
  }
  __device__ void quad(int64_t i) const {
    const float4 v = load4(src + i);
    const uint2 packed{uint32_t(round(v.x)) | uint32_t(round(v.y)) << 16,
                       uint32_t(round(v.z)) | uint32_t(round(v.w)) << 16};
    *reinterpret_cast<uint2*>(dst + i) = packed;
  }
  __device__ void one(int64_t i) const { dst[i] = round(src[i]); }
};

}  // namespace

void embedding(const void* table, DType dtype, const float* scales, int64_t width,
               const int32_t* ids, int64_t tokens, float* out, cudaStream_t stream) {
  if (tokens <= 0 || width <= 0) return;
  const unsigned threads = unsigned(std::min<int64_t>(kThreads, (width + 31) / 32 * 32));
  const unsigned grid = unsigned(tokens);
  switch (dtype) {
    case DType::F32:
      embedding_kernel<DType::F32><<<grid, threads, 0, stream>>>(table, scales, width, ids, out);
      break;
    case DType::BF16:
      embedding_kernel<DType::BF16><<<grid, threads, 0, stream>>>(table, scales, width, ids, out);
      break;
    case DType::F16:
      embedding_kernel<DType::F16><<<grid, threads, 0, stream>>>(table, scales, width, ids, out);
      break;
    case DType::I8:
      if (!scales) throw std::logic_error("cuda::embedding: an I8 table needs its scales");
      embedding_kernel<DType::I8><<<grid, threads, 0, stream>>>(table, scales, width, ids, out);
      break;
    default: throw std::logic_error("cuda::embedding: the table must be F32, BF16, F16 or I8");
  }
  check_launch("embedding_kernel");
}

void row_sum_squares(const float* x, int64_t rows, int64_t width, float* sums,
                     cudaStream_t stream) {
  if (rows <= 0) return;
  const bool vec = aligned16(x) && width % 4 == 0;
  // Without kAdd the kernel only reads the row.
  row_sum_squares_kernel<false>
      <<<unsigned(rows), kThreads, 0, stream>>>(const_cast<float*>(x), nullptr, width, sums, vec);
  check_launch("row_sum_squares_kernel");
}

void add_and_sum_squares(const float* x, float* inout, int64_t rows, int64_t width, float* sums,
                         cudaStream_t stream) {
  if (rows <= 0) return;
  const bool vec = aligned16(x) && aligned16(inout) && width % 4 == 0;
  row_sum_squares_kernel<true><<<unsigned(rows), kThreads, 0, stream>>>(inout, x, width, sums, vec);
  check_launch("row_sum_squares_kernel (add)");
}

void rmsnorm_scale(const float* x, const float* sums, int64_t rows, int64_t width,
                   int64_t full_width, const float* weight, float eps, float* out,
                   cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  const bool vec = aligned16(x) && aligned16(weight) && aligned16(out) && width % 4 == 0;
  rmsnorm_scale_kernel<<<unsigned(rows), kThreads, 0, stream>>>(x, sums, width, float(full_width),
                                                                weight, eps, out, vec);
  check_launch("rmsnorm_scale_kernel");
}

void rope(float* x, int64_t tokens, int64_t heads, int head_dim, const int32_t* positions,
          const float* cos, const float* sin, cudaStream_t stream) {
  const int half = head_dim / 2;
  const int64_t pairs = tokens * heads * half;
  if (pairs <= 0) return;
  rope_kernel<<<blocks_for(pairs), kThreads, 0, stream>>>(x, pairs, heads, head_dim, positions, cos,
                                                          sin);
  check_launch("rope_kernel");
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
  launch_elementwise(n, aligned16(gate) && aligned16(up) && aligned16(out), SiluMul{gate, up, out},
                     stream, "silu_mul");
}

void add(const float* x, float* inout, int64_t n, cudaStream_t stream) {
  launch_elementwise(n, aligned16(x) && aligned16(inout), Add{x, inout}, stream, "add");
}

void add_bias(const float* bias, float* inout, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (cols <= 0) return;
  launch_elementwise(rows * cols, aligned16(bias) && aligned16(inout) && cols % 4 == 0,
                     AddBias{bias, inout, cols}, stream, "add_bias");
}

void convert_from_f32(const float* src, void* dst, DType dst_dtype, int64_t n,
                      cudaStream_t stream) {
  auto* out = static_cast<uint16_t*>(dst);
  const bool vec = aligned16(src) && reinterpret_cast<uintptr_t>(dst) % 8 == 0;
  switch (dst_dtype) {
    case DType::BF16:
      return launch_elementwise(n, vec, ConvertFromF32<DType::BF16>{src, out}, stream,
                                "convert_from_f32 (bf16)");
    case DType::F16:
      return launch_elementwise(n, vec, ConvertFromF32<DType::F16>{src, out}, stream,
                                "convert_from_f32 (f16)");
    default: throw std::logic_error("cuda::convert_from_f32: the destination must be BF16 or F16");
  }
}

}  // namespace shardlm::cuda
