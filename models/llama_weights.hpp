#pragma once
// The tensors of a Hugging Face Llama-family checkpoint: names, shapes and
// roles, listed once for the loader, the random-model writer and the planner.
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "runtime/tensor.hpp"

namespace shardlm {

enum class WeightKind { Embedding, Norm, Linear, LmHead };

struct WeightSpec {
  std::string name;
  Shape shape;
  WeightKind kind;
};

struct LayerWeightNames {
  std::string input_norm, post_attention_norm, q, k, v, o, gate, up, down;
};

LayerWeightNames layer_weight_names(int layer);
inline const char* kEmbedTokens = "model.embed_tokens.weight";
inline const char* kFinalNorm = "model.norm.weight";
inline const char* kLmHead = "lm_head.weight";

// Every tensor the checkpoint must hold, in file order.
std::vector<WeightSpec> checkpoint_weights(const ModelConfig& config);

}  // namespace shardlm
