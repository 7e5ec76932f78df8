#pragma once
// out = x · wᵀ (+ out) through cuBLASLt, on the tensor cores for 16-bit
// operands, always with F32 accumulation (CUBLAS_COMPUTE_32F, which never
// rounds F32 operands to TF32); F32 output, or BF16 for BF16 operands (the
// F32 sum, plus the old out when accumulating, rounded once).
//
// Layouts. The backend's matrices are row-major: x [m, k], w [n, k] (a linear
// layer as Hugging Face stores it), out [m, n]. cuBLASLt is column-major,
// and a row-major matrix is the column-major matrix of its transpose, so the
// memory holds xᵀ [k, m], wᵀ [k, n] and outᵀ [n, m] (leading dimensions ldx,
// ldw, ldo). The product is computed as its transpose:
//     outᵀ [n, m] = w [n, k] · xᵀ [k, m]
// with A = the memory of w, a column-major [k, n] matrix taken with op T, and
// B = the memory of x, a column-major [k, m] matrix taken with op N: cuBLASLt's
// (m, n, k) are our (n, m, k). This "TN" form is the one every tensor-core
// kernel of cuBLASLt supports.
//
// Plans. The matmul descriptor, layouts and heuristic algorithm are chosen
// once per shape, dtype, accumulate flag and operand alignment, then cached:
// the call itself is one cublasLtMatmul. One workspace (kWorkspaceBytes,
// counted as workspace) serves every call: they are all on one stream.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "kernels/cuda/device_memory.hpp"
#include "runtime/dtype.hpp"

namespace shardlm::cuda {

class CublasLtMatmul {
 public:
  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // what Hopper's kernels ask for

  explicit CublasLtMatmul(DeviceMemory& memory);
  ~CublasLtMatmul();
  CublasLtMatmul(const CublasLtMatmul&) = delete;
  CublasLtMatmul& operator=(const CublasLtMatmul&) = delete;

  // out[m, n] (of out_dtype, row stride ldo) = x[m, k] (row stride ldx) ·
  // w[n, k]ᵀ (row stride ldw), x and w both of `dtype` (F32, BF16 or F16),
  // plus the old out when accumulate. out_dtype is F32, or BF16 when dtype
  // is. m, n, k >= 1.
  void run(const void* x, int64_t ldx, const void* w, int64_t ldw, DType dtype, int64_t m,
           int64_t n, int64_t k, void* out, DType out_dtype, int64_t ldo, bool accumulate);

  // "13.1": the cuBLASLt library loaded.
  static std::string version();

 private:
  struct Key {
    int64_t m, n, k, ldx, ldw, ldo;
    DType dtype, out_dtype;
    bool accumulate;
    uint32_t align_x, align_w, align_out;  // bytes, powers of two up to 256
    auto operator<=>(const Key&) const = default;
  };
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  const Plan& plan(const Key& key);
  static void destroy(Plan& plan);

  cudaStream_t stream_;
  cublasLtHandle_t handle_ = nullptr;
  std::shared_ptr<void> workspace_;
  std::map<Key, Plan> plans_;
};

}  // namespace shardlm::cuda
