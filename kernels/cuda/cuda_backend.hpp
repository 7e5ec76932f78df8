#pragma once
// The CUDA backend (docs/cuda_backend.md): one GPU per rank, weights BF16 /
// F16 / I8 weight-only (per-channel scales) or F32 on the device, matmuls
// through cuBLASLt with BF16/F16 operands and F32 accumulation, fused
// kernels for the rest, everything on one stream per backend.
//
// At the Backend interface activations stay F32 (the residual stream, and
// what the collectives move); the matmul rounds its input to the weight's
// 16-bit type on the way into the tensor cores, the rounding every bf16
// runtime applies to activations, and returns F32 sums.
//
// Plain C++ header: the launch code includes it without the CUDA toolkit's
// headers; it is built only where SHARDLM_HAVE_CUDA is set.
#include <memory>
#include <optional>

#include "runtime/backend.hpp"

namespace shardlm {

struct CudaBackendOptions {
  // The CUDA device (index among the visible ones); -1: the rank's local
  // rank modulo the visible devices.
  int device = -1;
  int local_rank = 0;
  // As CpuBackendOptions::weight_dtype; nullopt keeps each checkpoint
  // tensor's dtype, except F32 2-D weights, which are stored BF16 (tensor
  // cores have no F32 path worth the bytes).
  std::optional<DType> weight_dtype;
  DType kv_dtype = DType::BF16;
  // Activations: BF16 (tensor-core inputs as they are, half the bytes in
  // memory and over NCCL), or F32 (each matmul rounds its input to the
  // weight's 16-bit type).
  DType activation_dtype = DType::BF16;
  // Bytes of device memory the backend may take; 0: what the device has free.
  int64_t memory_limit = 0;
};

// Visible CUDA devices (0 on any CUDA error: no driver, no device).
int cuda_device_count();

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options);

// The stream a CUDA backend runs its kernels on (a cudaStream_t), for the
// NCCL communicators that join its ranks: collectives queue behind the
// kernels that produce their inputs.
void* cuda_backend_stream(Backend& backend);

}  // namespace shardlm
