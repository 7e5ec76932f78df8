// Placeholder until the kernels land.
#include <stdexcept>

#include "kernels/cuda/attention.cuh"

namespace shardlm::cuda {
void kv_write(const Tensor&, const Tensor&, const KVCacheLayer&, const DeviceBatch&, cudaStream_t) {
  throw std::logic_error("cuda::kv_write: not written");
}
size_t attention_scratch_bytes(const Tensor&, const KVCacheLayer&, const DeviceBatch&,
                               const AttentionHeads&) {
  return 0;
}
void attention(const Tensor&, const KVCacheLayer&, const DeviceBatch&, const AttentionHeads&,
               const Tensor&, void*, cudaStream_t) {
  throw std::logic_error("cuda::attention: not written");
}
}  // namespace shardlm::cuda
