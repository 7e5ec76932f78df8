#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/int8_matmul.cuh"
#include "kernels/math.hpp"

namespace shardlm::cuda {
namespace {

// Columns one thread takes at a time: one 16-byte load of int8 weights.
constexpr int kGroupCols = 16;
// Weight rows (output channels) per block of int8_gemv: every warp of the
// block covers a share of the columns for all of them, and each value of x
// read (from L1/L2) serves that many weights. Four for up to 2 rows of x;
// two above, where the accumulators (rows x M) would crowd the registers.
template <int M>
constexpr int gemv_rows_per_block() {
  return M <= 2 ? 4 : 2;
}
constexpr int kGemvMaxWarps = 8;

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Byte b of a 32-bit word as the int8 it holds.
__device__ float int8_lane(uint32_t word, int b) {
  return float(static_cast<int8_t>(static_cast<uint8_t>(word >> (8 * b))));
}

// The 16 weights of `row` from column c as floats; Vec: one 16-byte load
// (c + 16 <= k and the row 16-byte aligned), else one byte at a time, zero
// past k. Weights are read once: the load hint keeps them from evicting x.
template <bool Vec>
__device__ void load_weights(const int8_t* row, int64_t c, int64_t k, float (&v)[kGroupCols]) {
  if constexpr (Vec) {
    const int4 raw = __ldcs(reinterpret_cast<const int4*>(row + c));
    const uint32_t words[4] = {uint32_t(raw.x), uint32_t(raw.y), uint32_t(raw.z), uint32_t(raw.w)};
#pragma unroll
    for (int j = 0; j < kGroupCols; ++j) v[j] = int8_lane(words[j / 4], j % 4);
  } else {
#pragma unroll
    for (int j = 0; j < kGroupCols; ++j) v[j] = c + j < k ? float(row[c + j]) : 0.0f;
  }
}

// 16 values of a row of x from column c; Vec: four 16-byte loads.
template <bool Vec>
__device__ void load_x(const float* row, int64_t c, int64_t k, float (&v)[kGroupCols]) {
  if constexpr (Vec) {
#pragma unroll
    for (int q = 0; q < kGroupCols / 4; ++q) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(row + c) + q);
      v[4 * q] = f.x;
      v[4 * q + 1] = f.y;
      v[4 * q + 2] = f.z;
      v[4 * q + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kGroupCols; ++j) v[j] = c + j < k ? row[c + j] : 0.0f;
  }
}

// Block b computes output channels [R·b, R·b + R) for all M rows of x. Its
// threads take the columns in groups of 16, each group's weights widened once
// and multiplied with the M rows of x (which stay in L1/L2: M * k * 4 bytes);
// the per-thread sums are reduced over the warp, then over the warps.
template <int M, bool Vec>
__global__ void __launch_bounds__(kGemvMaxWarps * 32)
    int8_gemv_kernel(const float* __restrict__ x, int64_t ldx, const int8_t* __restrict__ w,
                     const float* __restrict__ scales, int64_t n, int64_t k, float* out,
                     int64_t ldo, bool accumulate) {
  constexpr int R = gemv_rows_per_block<M>();
  const int64_t row0 = int64_t(blockIdx.x) * R;
  const int8_t* rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = w + std::min<int64_t>(row0 + r, n - 1) * k;  // in bounds
  float acc[R][M];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;

  for (int64_t c = int64_t(threadIdx.x) * kGroupCols; c < k;
       c += int64_t(blockDim.x) * kGroupCols) {
    float wv[R][kGroupCols];
#pragma unroll
    for (int r = 0; r < R; ++r) load_weights<Vec>(rows[r], c, k, wv[r]);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float xv[kGroupCols];
      load_x<Vec>(x + i * ldx, c, k, xv);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < kGroupCols; ++j) acc[r][i] += wv[r][j] * xv[j];
    }
  }

  __shared__ float warp_sums[kGemvMaxWarps][R][M];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float v = acc[r][i];
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) warp_sums[warp][r][i] = v;
    }
  __syncthreads();
  const int warps = int(blockDim.x) / 32;
  for (int t = int(threadIdx.x); t < R * M; t += int(blockDim.x)) {
    const int r = t / M, i = t % M;
    if (row0 + r >= n) continue;
    float sum = 0.0f;
    for (int v = 0; v < warps; ++v) sum += warp_sums[v][r][i];
    // sum(q * x) * scale, as the CPU backend's streaming kernels scale.
    const float value = sum * scales[row0 + r];
    float* o = out + i * ldo + row0 + r;
    *o = accumulate ? *o + value : value;
  }
}

template <int M>
void launch_gemv(const float* x, int64_t ldx, const int8_t* w, const float* scales, int64_t n,
                 int64_t k, float* out, int64_t ldo, bool accumulate, cudaStream_t stream) {
  // Enough warps for one pass over the columns, at most kGemvMaxWarps.
  const int64_t groups = (k + kGroupCols - 1) / kGroupCols;
  const int warps = int(std::clamp<int64_t>((groups + 31) / 32, 1, kGemvMaxWarps));
  constexpr int rows_per_block = gemv_rows_per_block<M>();
  const unsigned blocks = unsigned((n + rows_per_block - 1) / rows_per_block);
  const bool vec = k % kGroupCols == 0 && aligned16(w) && aligned16(x) && ldx % 4 == 0;
  if (vec)
    int8_gemv_kernel<M, true>
        <<<blocks, warps * 32, 0, stream>>>(x, ldx, w, scales, n, k, out, ldo, accumulate);
  else
    int8_gemv_kernel<M, false>
        <<<blocks, warps * 32, 0, stream>>>(x, ldx, w, scales, n, k, out, ldo, accumulate);
  check_launch("int8_gemv_kernel");
}

// One 16-column group per thread: bf16(q * scale), two 16-byte stores when Vec.
template <bool Vec>
__global__ void dequantize_kernel(const int8_t* __restrict__ w, const float* __restrict__ scales,
                                  int64_t rows, int64_t k, uint16_t* __restrict__ dst) {
  const int64_t groups_per_row = (k + kGroupCols - 1) / kGroupCols;
  const int64_t groups = rows * groups_per_row;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < groups;
       g += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = g / groups_per_row, c = g % groups_per_row * kGroupCols;
    const float scale = scales[r];
    const int8_t* src = w + r * k;
    uint16_t* out = dst + r * k;
    if constexpr (Vec) {
      float v[kGroupCols];
      load_weights<true>(src, c, k, v);
      uint32_t packed[kGroupCols / 2];
#pragma unroll
      for (int j = 0; j < kGroupCols / 2; ++j)
        packed[j] = uint32_t(math::float_to_bf16(v[2 * j] * scale)) |
                    uint32_t(math::float_to_bf16(v[2 * j + 1] * scale)) << 16;
      auto* out4 = reinterpret_cast<uint4*>(out + c);
      out4[0] = make_uint4(packed[0], packed[1], packed[2], packed[3]);
      out4[1] = make_uint4(packed[4], packed[5], packed[6], packed[7]);
    } else {
      for (int64_t j = c; j < std::min<int64_t>(c + kGroupCols, k); ++j)
        out[j] = math::float_to_bf16(float(src[j]) * scale);
    }
  }
}

}  // namespace

void int8_gemv(const float* x, int64_t m, int64_t ldx, const int8_t* w, const float* scales,
               int64_t n, int64_t k, float* out, int64_t ldo, bool accumulate,
               cudaStream_t stream) {
  if (n <= 0 || m <= 0) return;
  switch (m) {
    case 1: return launch_gemv<1>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 2: return launch_gemv<2>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 3: return launch_gemv<3>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 4: return launch_gemv<4>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 5: return launch_gemv<5>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 6: return launch_gemv<6>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 7: return launch_gemv<7>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 8: return launch_gemv<8>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 9: return launch_gemv<9>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 10: return launch_gemv<10>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 11: return launch_gemv<11>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 12: return launch_gemv<12>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 13: return launch_gemv<13>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 14: return launch_gemv<14>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 15: return launch_gemv<15>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    case 16: return launch_gemv<16>(x, ldx, w, scales, n, k, out, ldo, accumulate, stream);
    default: throw std::logic_error("cuda::int8_gemv: 1 to 16 rows of x");
  }
}

void dequantize_int8_to_bf16(const int8_t* w, const float* scales, int64_t rows, int64_t k,
                             uint16_t* dst, cudaStream_t stream) {
  const int64_t groups = rows * ((k + kGroupCols - 1) / kGroupCols);
  if (groups <= 0) return;
  constexpr int threads = 256;
  const unsigned blocks =
      unsigned(std::clamp<int64_t>((groups + threads - 1) / threads, 1, int64_t(1) << 16));
  if (k % kGroupCols == 0 && aligned16(w) && aligned16(dst))
    dequantize_kernel<true><<<blocks, threads, 0, stream>>>(w, scales, rows, k, dst);
  else
    dequantize_kernel<false><<<blocks, threads, 0, stream>>>(w, scales, rows, k, dst);
  check_launch("dequantize_kernel");
}

}  // namespace shardlm::cuda
