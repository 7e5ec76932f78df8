// Placeholder until the kernels land.
#include <stdexcept>

#include "kernels/cuda/sampling.cuh"

namespace shardlm::cuda {
size_t sampling_scratch_bytes(int64_t, int64_t) { return 0; }
void sample_rows(const float*, int64_t, int64_t, const SamplingParams&, const double*, int32_t*,
                 void*, cudaStream_t) {
  throw std::logic_error("cuda::sample_rows: not written");
}
}  // namespace shardlm::cuda
