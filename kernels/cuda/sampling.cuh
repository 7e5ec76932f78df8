#pragma once
// Token sampling on the GPU: the rule of runtime/sampler.hpp (greedy, or
// temperature, top-k, top-p, then one draw), applied per row of F32 logits
// so that only token ids come back to the host.
#include <cuda_runtime.h>

#include <cstdint>

#include "runtime/sampler.hpp"

namespace shardlm::cuda {

// ids[r] (device) <- the token row r of logits [rows, vocab] (device, F32)
// samples with `params` and the uniform draw uniforms[r] in [0, 1) (device;
// unused when greedy). `scratch` holds sampling_scratch_bytes(rows, vocab).
size_t sampling_scratch_bytes(int64_t rows, int64_t vocab);
void sample_rows(const float* logits, int64_t rows, int64_t vocab, const SamplingParams& params,
                 const double* uniforms, int32_t* ids, void* scratch, cudaStream_t stream);

}  // namespace shardlm::cuda
