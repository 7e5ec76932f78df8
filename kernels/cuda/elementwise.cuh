#pragma once
// The CUDA backend's element-wise and row-wise kernels: each follows the
// Backend operation of the same name (runtime/backend.hpp) on raw device
// pointers of contiguous row-major data, queued on `stream`. Arithmetic that
// the CPU backend shares (bf16/f16 rounding, silu, rotate-half RoPE) comes
// from kernels/math.hpp, so both backends compute it alike.
//
// Plain C++ declarations: the backend (host code) includes this header.
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/dtype.hpp"

namespace shardlm::cuda {

// Activations (x, inout, out, gate, up) are of `act`: F32, or BF16 held as
// its bits. Each kernel widens what it reads to F32, computes in F32 as the
// CPU backend does, and rounds what it writes to `act` (to nearest even).

// out[t, :] ([tokens, width] of `act`) = row ids[t] of table [rows, width]
// of `dtype` (F32, BF16, F16, or I8 times scales[row]); ids on the device.
void embedding(const void* table, DType dtype, const float* scales, int64_t width,
               const int32_t* ids, int64_t tokens, void* out, DType act, cudaStream_t stream);

// sums[r] = sum of x[r, :]^2 over rows of `width`.
void row_sum_squares(const void* x, DType act, int64_t rows, int64_t width, float* sums,
                     cudaStream_t stream);

// inout[r, :] += x[r, :], then sums[r] = sum of the new inout[r, :]^2 (as
// stored): add and row_sum_squares in one pass over rows of `width`, with
// their results.
void add_and_sum_squares(const void* x, void* inout, DType act, int64_t rows, int64_t width,
                         float* sums, cudaStream_t stream);

// out = x * (1 / sqrt(sums[r] / full_width + eps)) * weight, per row.
void rmsnorm_scale(const void* x, DType act, const float* sums, int64_t rows, int64_t width,
                   int64_t full_width, const float* weight, float eps, void* out,
                   cudaStream_t stream);

// x [tokens, heads * head_dim] rotated in place, token t by the angles of
// row positions[t] (device) of the cos/sin tables [positions, head_dim / 2].
void rope(void* x, DType act, int64_t tokens, int64_t heads, int head_dim, const int32_t* positions,
          const float* cos, const float* sin, cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i] (out may alias gate or up).
void silu_mul(const void* gate, const void* up, void* out, DType act, int64_t n,
              cudaStream_t stream);

// inout[i] += x[i].
void add(const void* x, void* inout, DType act, int64_t n, cudaStream_t stream);

// inout[r, c] += bias[c] (F32) over rows x cols.
void add_bias(const float* bias, void* inout, DType act, int64_t rows, int64_t cols,
              cudaStream_t stream);

// dst[i] = src[i] converted from src_dtype to dst_dtype (each F32, BF16 or
// F16): widened exactly, rounded to nearest even, bit for bit as the host's
// convert_to_f32 / convert_from_f32.
void convert(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n,
             cudaStream_t stream);

}  // namespace shardlm::cuda
