#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

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

// Element types in device memory: F32, and the 16-bit floats as their bits.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

__device__ float widen(float v) {
  return v;
}
__device__ float widen(Bf16 v) {
  return math::bf16_to_float(v.bits);
}
__device__ float widen(F16 v) {
  return math::f16_to_float(v.bits);
}

template <typename T>
__device__ T narrow(float f) {
  if constexpr (std::is_same_v<T, Bf16>)
    return Bf16{math::float_to_bf16(f)};
  else if constexpr (std::is_same_v<T, F16>)
    return F16{math::float_to_f16(f)};
  else
    return f;
}

// Four consecutive elements as F32, with one 16-byte (F32) or 8-byte
// (16-bit) load or store; p aligned to four elements (aligned4).
template <typename T>
__device__ float4 load4(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return *reinterpret_cast<const float4*>(p);
  } else {
    const uint2 packed = *reinterpret_cast<const uint2*>(p);
    return make_float4(widen(T{uint16_t(packed.x)}), widen(T{uint16_t(packed.x >> 16)}),
                       widen(T{uint16_t(packed.y)}), widen(T{uint16_t(packed.y >> 16)}));
  }
}

template <typename T>
__device__ void store4(T* p, float4 v) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = v;
  } else {
    const uint2 packed{uint32_t(narrow<T>(v.x).bits) | uint32_t(narrow<T>(v.y).bits) << 16,
                       uint32_t(narrow<T>(v.z).bits) | uint32_t(narrow<T>(v.w).bits) << 16};
    *reinterpret_cast<uint2*>(p) = packed;
  }
}

template <typename T>
bool aligned4(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
}

// Calls f(T{}) with T the element type of `dtype`: F32 and BF16 (the
// activations), and F16 when `f16` (conversions only).
template <typename F>
void with_element(DType dtype, const char* what, F f, bool f16 = false) {
  switch (dtype) {
    case DType::F32: return f(float{});
    case DType::BF16: return f(Bf16{});
    case DType::F16:
      if (f16) return f(F16{});
      break;
    default: break;
  }
  throw std::logic_error(std::string("cuda::") + what +
                         ": activations must be F32 or BF16 (conversions: or F16)");
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
template <DType D, typename T>
__global__ void embedding_kernel(const void* table, const float* scales, int64_t width,
                                 const int32_t* ids, T* out) {
  const int64_t token = blockIdx.x, row = ids[token];
  // value = q * scale for I8, as the CPU backend widens it.
  const float scale = D == DType::I8 ? scales[row] : 1.0f;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x)
    out[token * width + c] = narrow<T>(load_widened<D>(table, row * width + c) * scale);
}

// One block per row; `vec`: the rows start aligned to four elements and
// width % 4 == 0. kAdd: the row is first replaced by row + addend (one F32
// addition per element, rounded as `add` rounds it) and the sum is of the
// new values as stored: the residual add and the RMSNorm's sums in one pass,
// summed term for term as without kAdd.
template <bool kAdd, typename T>
__global__ void row_sum_squares_kernel(T* x, const T* addend, int64_t width, float* sums,
                                       bool vec) {
  const int64_t offset = int64_t(blockIdx.x) * width;
  T* row = x + offset;
  float sum = 0.0f;
  if (vec) {
    for (int64_t i = threadIdx.x * 4; i < width; i += blockDim.x * 4) {
      float4 v = load4(row + i);
      if constexpr (kAdd) {
        const float4 a = load4(addend + offset + i);
        v = make_float4(v.x + a.x, v.y + a.y, v.z + a.z, v.w + a.w);
        store4(row + i, v);
        v = load4(row + i);  // the values as stored (rounded)
      }
      sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
      float v = widen(row[i]);
      if constexpr (kAdd) {
        row[i] = narrow<T>(v + widen(addend[offset + i]));
        v = widen(row[i]);
      }
      sum += v * v;
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) sums[blockIdx.x] = sum;
}

template <typename T>
__global__ void rmsnorm_scale_kernel(const T* x, const float* sums, int64_t width, float full_width,
                                     const float* weight, float eps, T* out, bool vec) {
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
      out[offset + i] = narrow<T>(widen(x[offset + i]) * scale * weight[i]);
  }
}

// One thread per rotated pair: element i and i + half of a head.
template <typename T>
__global__ void rope_kernel(T* x, int64_t pairs, int64_t heads, int head_dim,
                            const int32_t* positions, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int64_t p = global_thread(); p < pairs; p += grid_threads()) {
    const int64_t i = p % half, head = p / half, token = head / heads;
    const int64_t angle = int64_t(positions[token]) * half + i;
    T* v = x + head * head_dim;
    float a = widen(v[i]), b = widen(v[i + half]);
    math::rope_rotate_pair(a, b, cos[angle], sin[angle]);
    v[i] = narrow<T>(a);
    v[i + half] = narrow<T>(b);
  }
}

template <typename T>
struct SiluMul {
  const T* gate;
  const T* up;
  T* out;
  __device__ void quad(int64_t i) const {
    const float4 g = load4(gate + i), u = load4(up + i);
    store4(out + i, make_float4(math::silu(g.x) * u.x, math::silu(g.y) * u.y, math::silu(g.z) * u.z,
                                math::silu(g.w) * u.w));
  }
  __device__ void one(int64_t i) const {
    out[i] = narrow<T>(math::silu(widen(gate[i])) * widen(up[i]));
  }
};

template <typename T>
struct Add {
  const T* x;
  T* inout;
  __device__ void quad(int64_t i) const {
    const float4 a = load4(x + i), b = load4(inout + i);
    store4(inout + i, make_float4(b.x + a.x, b.y + a.y, b.z + a.z, b.w + a.w));
  }
  __device__ void one(int64_t i) const { inout[i] = narrow<T>(widen(inout[i]) + widen(x[i])); }
};

// Quads need cols % 4 == 0, so that a quad's columns are consecutive in bias.
template <typename T>
struct AddBias {
  const float* bias;
  T* inout;
  int64_t cols;
  __device__ void quad(int64_t i) const {
    const float4 b = load4(bias + i % cols), v = load4(inout + i);
    store4(inout + i, make_float4(v.x + b.x, v.y + b.y, v.z + b.z, v.w + b.w));
  }
  __device__ void one(int64_t i) const { inout[i] = narrow<T>(widen(inout[i]) + bias[i % cols]); }
};

// Any of F32, BF16, F16 to any: widened exactly, rounded to nearest even.
template <typename From, typename To>
struct Convert {
  const From* src;
  To* dst;
  __device__ void quad(int64_t i) const { store4(dst + i, load4(src + i)); }
  __device__ void one(int64_t i) const { dst[i] = narrow<To>(widen(src[i])); }
};

}  // namespace

void embedding(const void* table, DType dtype, const float* scales, int64_t width,
               const int32_t* ids, int64_t tokens, void* out, DType act, cudaStream_t stream) {
  if (tokens <= 0 || width <= 0) return;
  if (dtype == DType::I8 && !scales)
    throw std::logic_error("cuda::embedding: an I8 table needs its scales");
  const unsigned threads = unsigned(std::min<int64_t>(kThreads, (width + 31) / 32 * 32));
  const unsigned grid = unsigned(tokens);
  with_element(act, "embedding", [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    switch (dtype) {
      case DType::F32:
        embedding_kernel<DType::F32><<<grid, threads, 0, stream>>>(table, scales, width, ids, o);
        break;
      case DType::BF16:
        embedding_kernel<DType::BF16><<<grid, threads, 0, stream>>>(table, scales, width, ids, o);
        break;
      case DType::F16:
        embedding_kernel<DType::F16><<<grid, threads, 0, stream>>>(table, scales, width, ids, o);
        break;
      case DType::I8:
        embedding_kernel<DType::I8><<<grid, threads, 0, stream>>>(table, scales, width, ids, o);
        break;
      default: throw std::logic_error("cuda::embedding: the table must be F32, BF16, F16 or I8");
    }
  });
  check_launch("embedding_kernel");
}

void row_sum_squares(const void* x, DType act, int64_t rows, int64_t width, float* sums,
                     cudaStream_t stream) {
  if (rows <= 0) return;
  with_element(act, "row_sum_squares", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = aligned4<T>(x) && width % 4 == 0;
    // Without kAdd the kernel only reads the row.
    row_sum_squares_kernel<false, T><<<unsigned(rows), kThreads, 0, stream>>>(
        static_cast<T*>(const_cast<void*>(x)), nullptr, width, sums, vec);
  });
  check_launch("row_sum_squares_kernel");
}

void add_and_sum_squares(const void* x, void* inout, DType act, int64_t rows, int64_t width,
                         float* sums, cudaStream_t stream) {
  if (rows <= 0) return;
  with_element(act, "add_and_sum_squares", [&](auto tag) {
    using T = decltype(tag);
    const bool vec = aligned4<T>(x) && aligned4<T>(inout) && width % 4 == 0;
    row_sum_squares_kernel<true, T><<<unsigned(rows), kThreads, 0, stream>>>(
        static_cast<T*>(inout), static_cast<const T*>(x), width, sums, vec);
  });
  check_launch("row_sum_squares_kernel (add)");
}

void rmsnorm_scale(const void* x, DType act, const float* sums, int64_t rows, int64_t width,
                   int64_t full_width, const float* weight, float eps, void* out,
                   cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  with_element(act, "rmsnorm_scale", [&](auto tag) {
    using T = decltype(tag);
    const bool vec =
        aligned4<T>(x) && aligned4<float>(weight) && aligned4<T>(out) && width % 4 == 0;
    rmsnorm_scale_kernel<T><<<unsigned(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), sums, width, float(full_width), weight, eps, static_cast<T*>(out),
        vec);
  });
  check_launch("rmsnorm_scale_kernel");
}

void rope(void* x, DType act, int64_t tokens, int64_t heads, int head_dim, const int32_t* positions,
          const float* cos, const float* sin, cudaStream_t stream) {
  const int half = head_dim / 2;
  const int64_t pairs = tokens * heads * half;
  if (pairs <= 0) return;
  with_element(act, "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks_for(pairs), kThreads, 0, stream>>>(static_cast<T*>(x), pairs, heads,
                                                               head_dim, positions, cos, sin);
  });
  check_launch("rope_kernel");
}

void silu_mul(const void* gate, const void* up, void* out, DType act, int64_t n,
              cudaStream_t stream) {
  with_element(act, "silu_mul", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(
        n, aligned4<T>(gate) && aligned4<T>(up) && aligned4<T>(out),
        SiluMul<T>{static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(out)},
        stream, "silu_mul");
  });
}

void add(const void* x, void* inout, DType act, int64_t n, cudaStream_t stream) {
  with_element(act, "add", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(n, aligned4<T>(x) && aligned4<T>(inout),
                       Add<T>{static_cast<const T*>(x), static_cast<T*>(inout)}, stream, "add");
  });
}

void add_bias(const float* bias, void* inout, DType act, int64_t rows, int64_t cols,
              cudaStream_t stream) {
  if (cols <= 0) return;
  with_element(act, "add_bias", [&](auto tag) {
    using T = decltype(tag);
    launch_elementwise(rows * cols, aligned4<float>(bias) && aligned4<T>(inout) && cols % 4 == 0,
                       AddBias<T>{bias, static_cast<T*>(inout), cols}, stream, "add_bias");
  });
}

void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n,
             cudaStream_t stream) {
  with_element(
      src_dtype, "convert",
      [&](auto from_tag) {
        using From = decltype(from_tag);
        with_element(
            dst_dtype, "convert",
            [&](auto to_tag) {
              using To = decltype(to_tag);
              launch_elementwise(
                  n, aligned4<From>(src) && aligned4<To>(dst),
                  Convert<From, To>{static_cast<const From*>(src), static_cast<To*>(dst)}, stream,
                  "convert");
            },
            true);
      },
      true);
}

}  // namespace shardlm::cuda
