#pragma once
// A model's weights resident on a backend, loaded from a checkpoint.
#include <vector>

#include "models/model_config.hpp"
#include "models/safetensors.hpp"
#include "runtime/backend.hpp"

namespace shardlm {

struct LayerWeights {
  Tensor input_norm;
  Tensor post_attention_norm;  // empty for the parallel block
  Tensor q, k, v, o;           // [out, in]
  Tensor gate, up, down;
};

struct ModelWeights {
  Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;
  Tensor lm_head;  // the embedding itself when tied
};

// Checks every tensor's presence, shape and dtype, then uploads it.
ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                Backend& backend);

}  // namespace shardlm
