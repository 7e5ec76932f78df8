#pragma once
// The model description every part of shardlm shares: the dimensions and the
// math-changing options of a decoder-only Llama-family transformer, read from
// a Hugging Face config.json. Which keys each architecture uses, ignores or
// refuses is listed once, in model_config.cpp.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace shardlm {

// Rotary-embedding frequency scaling, as Hugging Face's rope_scaling defines it
// (transformers/modeling_rope_utils.py). models/rope.hpp computes the angles.
enum class RopeType { kDefault, kLinear, kDynamic, kLlama3, kYarn };

struct RopeScaling {
  RopeType type = RopeType::kDefault;
  double factor = 1.0;
  // llama3 and yarn: the context the unscaled model was trained for.
  int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  double attention_factor = 1.0;  // yarn: cos and sin are scaled by it (resolved at load)
  bool truncate = true;           // yarn: round the correction range to whole dims
};

struct ModelConfig {
  // "LlamaForCausalLM", "MistralForCausalLM" or "Qwen2ForCausalLM".
  std::string architecture = "LlamaForCausalLM";
  int64_t hidden_size = 0;        // E
  int64_t intermediate_size = 0;  // F
  int64_t num_layers = 0;
  int64_t num_heads = 0;     // H, query heads
  int64_t num_kv_heads = 0;  // K/V heads: H (MHA), 1 (MQA) or between (GQA)
  int64_t head_dim = 0;      // defaults to hidden_size / num_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // Which linear layers carry a bias: q/k/v (Qwen2, Llama attention_bias),
  // o (Llama attention_bias), gate/up/down (Llama mlp_bias).
  bool qkv_bias = false, o_bias = false, mlp_bias = false;
  // Sliding-window attention: a token sees the sliding_window most recent
  // positions, itself included, in the layers window_layers[i] marks.
  int64_t sliding_window = 0;  // 0: none
  std::vector<bool> window_layers;
  // PaLM's parallel block, y = x + Attn(norm(x)) + FFN(norm(x)), with the one
  // norm stored as input_layernorm. config.json key: "parallel_block": true.
  bool parallel_block = false;
  std::string torch_dtype = "float32";

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t params_per_layer() const;
  int64_t num_params() const;  // all weights and biases, embeddings included
  // The window of layer `layer`, 0 when it attends to the whole context.
  int64_t attention_window(int64_t layer) const;
  // The longest sequence (prompt + generated) the model accepts: the
  // position table, or for dynamic NTK scaling that many times its factor.
  int64_t context_length() const;

  // Throws DataError naming `source`, the key and its value when a key is
  // missing, mistyped, inconsistent, or would change the math in a way shardlm
  // does not implement; warns (runtime/errors.hpp) about keys it does not know.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // The same from the text of a config.json.
  static ModelConfig parse(const std::string& text, const std::string& source);
  // Reads DIR/config.json.
  static ModelConfig load(const std::filesystem::path& model_dir);
};

}  // namespace shardlm
