#pragma once
// Int8 weight-only matmul of the CUDA backend: w [n, k] int8 with one F32
// scale per row (value = q * scales[row], kernels/math.hpp's rules).
//
// Few rows of x (decode): int8_gemv reads each weight once, widens it in
// registers and multiplies it with every row of x, accumulating in F32, so
// the step runs at the pace of reading n * k bytes. Many rows (prefill): the
// backend dequantises the weight to BF16 panels (dequantize_int8_to_bf16)
// and multiplies them on the tensor cores through cuBLASLt.
//
// Plain C++ declarations: the backend (host code) includes this header.
#include <cuda_runtime.h>

#include <cstdint>

namespace shardlm::cuda {

// Rows of x up to which int8_gemv runs.
constexpr int64_t kInt8GemvMaxRows = 16;

// out[i, j] (row stride ldo) = scales[j] * sum over c of x[i, c] (row stride
// ldx) * w[j, c], plus the old out when accumulate; 1 <= m <= kInt8GemvMaxRows.
void int8_gemv(const float* x, int64_t m, int64_t ldx, const int8_t* w, const float* scales,
               int64_t n, int64_t k, float* out, int64_t ldo, bool accumulate, cudaStream_t stream);

// dst [rows, k] (BF16 bits) = bf16(w[r, c] * scales[r]), rounded to nearest even.
void dequantize_int8_to_bf16(const int8_t* w, const float* scales, int64_t rows, int64_t k,
                             uint16_t* dst, cudaStream_t stream);

}  // namespace shardlm::cuda
