#pragma once
// Error checks of CUDA runtime and cuBLASLt calls: a failure throws
// std::runtime_error naming the call and CUDA's own description of the error,
// e.g. check(cudaMemcpyAsync(...), "cudaMemcpyAsync of the logits").
// Plain C++ (no device code), so host-only .cpp files include it too.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace shardlm::cuda {

inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(status) + " (" +
                             cudaGetErrorName(status) + ")");
}

inline void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: " + cublasLtGetStatusString(status));
}

// After a kernel launch: a bad configuration (grid, shared memory) shows up
// here; a fault inside the kernel shows up at the next synchronising call.
inline void check_launch(const char* kernel) {
  check(cudaGetLastError(), kernel);
}

}  // namespace shardlm::cuda
