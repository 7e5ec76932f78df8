#pragma once
// KV-cache write and attention kernels of the CUDA backend. The backend
// uploads each call's batch as per-token arrays (DeviceBatch); the kernels
// follow the semantics of Backend::kv_write / Backend::attention exactly
// (runtime/backend.hpp), as the CPU kernels do.
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/backend.hpp"

namespace shardlm::cuda {

// One forward pass's tokens, on the device.
struct DeviceBatch {
  const int32_t* token_slot = nullptr;  // [tokens] KV-cache slot of each token
  const int32_t* token_pos = nullptr;   // [tokens] position of each token
  int64_t tokens = 0;
  int64_t max_context = 0;  // largest token_pos + 1 (host-known: checked against the cache)
  bool decode = false;      // every segment has one token (decode step)
};

// cache.k/v [slots, kv_heads, capacity, head_dim] of cache.k.dtype() (F32,
// BF16 or F16) <- k, v F32 or BF16 [tokens, kv_heads * head_dim].
void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache, const DeviceBatch& batch,
              cudaStream_t stream);

// out [tokens, heads * head_dim] (q's dtype: F32 or BF16; F32 arithmetic,
// the output rounded once) = causal softmax(q kᵀ / sqrt(d)) v per
// token over its slot's cache up to its position (window as in
// AttentionHeads). `scratch` is device memory of scratch_bytes(...) bytes
// for the flash-decoding partials.
size_t attention_scratch_bytes(const Tensor& q, const KVCacheLayer& cache, const DeviceBatch& batch,
                               const AttentionHeads& heads);
void attention(const Tensor& q, const KVCacheLayer& cache, const DeviceBatch& batch,
               const AttentionHeads& heads, const Tensor& out, void* scratch, cudaStream_t stream);

}  // namespace shardlm::cuda
