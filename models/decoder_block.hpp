#pragma once
// One transformer decoder block of the Llama family, serial or PaLM-parallel,
// written once for every layout: the phase's axes say which collectives join
// the local matmuls (Pope et al. §3.2-3.4), and on one rank they all vanish.
#include <vector>

#include "models/model_config.hpp"
#include "models/model_weights.hpp"
#include "models/rope.hpp"
#include "runtime/backend.hpp"
#include "runtime/parallel.hpp"

namespace shardlm {

// Where this rank's rows sit for one forward pass.
struct BlockRows {
  BatchLayout at_rest;    // rows of the residual stream (split over the batch axes)
  BatchLayout attention;  // rows attention runs on, slots numbered within the KV cache
  // Batch-sharded attention only: rows of this rank's block going to each
  // member of the heads group, and of the KV-heads group, and where this
  // rank's attention rows start within its rows after the KV all-to-all.
  std::vector<int64_t> heads_split, kv_split;
  int64_t kv_slice_begin = 0;
  RopeRows rope;  // the rotation of each at_rest row
};

struct BlockContext {
  Backend& backend;
  ShardOps& ops;
  const ParallelContext& ctx;
  const ModelConfig& config;
  const PhaseAxes& axes;
  const BlockRows& rows;
};

// RMSNorm of a residual whose E is split over axes.residual_e. `sums`: this
// rank's sums of squares of x's rows when already made (by
// Backend::add_and_sum_squares), else empty; the function all-reduces them in place.
Tensor sharded_rmsnorm(const BlockContext& b, const Tensor& x, const Tensor& full_weight,
                       Tensor sums = {});

// residual [rows, E chunk] += layer `layer`'s attention and feed-forward
// outputs. `input_sums`: the residual's sums of squares when the caller has
// them (the previous layer's result), else empty. Returns the new residual's
// sums when the block's last add made them along (a reduce-scattered
// projection without a bias after it), else an empty tensor: the next norm
// (the next layer's, or the final one) takes them.
Tensor run_decoder_block(const BlockContext& b, int64_t layer, const LayerWeights& weights,
                         const KVCacheLayer& cache, const Tensor& residual,
                         const Tensor& input_sums = {});

}  // namespace shardlm
