#pragma once
// One transformer decoder block of the Llama family, serial or PaLM-parallel.
// Written once; every backend and (later) every partition layout runs it.
#include "models/model_config.hpp"
#include "models/model_weights.hpp"
#include "runtime/backend.hpp"

namespace shardlm {

// Scratch activations for a forward pass over up to `tokens` tokens.
struct BlockScratch {
  Tensor normed;     // [T, E]
  Tensor q, k, v;    // [T, H*D], [T, KV*D], [T, KV*D]
  Tensor attention;  // [T, H*D]
  Tensor gate, up;   // [T, F]
  BlockScratch(Backend& backend, const ModelConfig& config, int64_t tokens);
  BlockScratch rows(int64_t tokens) const;  // views of the first `tokens` rows
  BlockScratch() = default;
};

struct RopeTables {
  Tensor cos, sin;  // [positions, head_dim/2]
  RopeTables(Backend& backend, const ModelConfig& config);
};

// residual [T, E] += the block's attention and feed-forward outputs.
void run_decoder_block(Backend& backend, const ModelConfig& config, const LayerWeights& weights,
                       const KVCacheLayer& cache, const RopeTables& rope,
                       const BatchLayout& batch, const BlockScratch& scratch,
                       const Tensor& residual);

}  // namespace shardlm
