#pragma once
// A model's weights resident on a backend: each rank holds the block of every
// weight that the layout's stored specs give it, copied out of the mapped
// checkpoint.
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "models/safetensors.hpp"
#include "partitioning/layouts.hpp"
#include "runtime/backend.hpp"

namespace shardlm {

class ParallelContext;

// A weight block and the mesh axes its rows and cols are split over
// (Hugging Face orientation: rows are outputs, cols inputs).
struct WeightShard {
  Tensor local;
  std::string row_axes, col_axes;
};

struct LayerWeights {
  Tensor input_norm;           // [E], replicated
  Tensor post_attention_norm;  // empty for the parallel block
  WeightShard q, k, v, o;
  WeightShard gate, up, down;
  // Biases, [out features] F32, empty when the model has none. They are
  // O(E) per layer, so every rank keeps them whole and adds the chunk of its
  // own split of the output (models/decoder_block.cpp).
  Tensor q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;
};

struct ModelWeights {
  WeightShard embed_tokens;          // [vocab, E chunk]; first pipeline stage only
  std::vector<LayerWeights> layers;  // the stage's layers
  Tensor final_norm;                 // last stage only
  WeightShard lm_head;               // [vocab chunk, E]; last stage only
};

// The part of the model one pipeline stage holds: its layers, the embedding
// on the first stage, the final norm and LM head on the last (a tied model's
// embedding table is then read by both).
struct WeightsPart {
  int64_t first_layer = 0, end_layer = 0;
  bool embedding = true, head = true;
};

// Refuses (UsageError) model dimensions the layouts cannot split on `mesh`,
// naming what divides and what does not, before anything is loaded.
void check_shardable(const ModelConfig& config, const Mesh& mesh, const Layout& prefill,
                     const Layout& decode);

// Checks every tensor's presence, shape and dtype, and that the checkpoint
// holds nothing the model would not use, then uploads this rank's blocks as
// `layout` stores them.
ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                Backend& backend, const Layout& layout, const ParallelContext& ctx,
                                const WeightsPart& part);

}  // namespace shardlm
