#pragma once
// The tensors of a Hugging Face Llama-family checkpoint: names, shapes and
// roles, listed once for the loader, the random-model writer and the planner.
#include <map>
#include <string>
#include <vector>

#include "models/model_config.hpp"
#include "models/safetensors.hpp"
#include "runtime/tensor.hpp"

namespace shardlm {

enum class WeightKind { Embedding, Norm, Linear, Bias, LmHead };

struct WeightSpec {
  std::string name;
  Shape shape;
  WeightKind kind;
};

struct LayerWeightNames {
  std::string input_norm, post_attention_norm, q, k, v, o, gate, up, down;
  std::string q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias, down_bias;
};

LayerWeightNames layer_weight_names(int layer);
inline const char* kEmbedTokens = "model.embed_tokens.weight";
inline const char* kFinalNorm = "model.norm.weight";
inline const char* kLmHead = "lm_head.weight";

// Every tensor the checkpoint must hold, in file order: the config decides
// which biases there are and whether lm_head.weight is its own tensor.
std::vector<WeightSpec> checkpoint_weights(const ModelConfig& config);

// What the config says about the bias tensor `name`, for messages:
// "attention_bias is false", "Qwen2ForCausalLM has biases on q, k and v only", ...
std::string bias_rule(const std::string& name, const ModelConfig& config);

// Checks that the checkpoint holds no tensor the model would not use: a bias
// the config says is absent is a DataError naming it and the config key. A
// tied model's own lm_head.weight is ignored (the embedding is the head, as
// the config says), with a warning when it differs from the embedding;
// Hugging Face's saved rotary_emb.inv_freq buffers are recomputed, so ignored.
void check_unused_tensors(const std::map<std::string, const TensorRecord*>& records,
                          const ModelConfig& config, const std::string& where, bool warn_if_tied);

}  // namespace shardlm
