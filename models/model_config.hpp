#pragma once
// The model description every part of shardlm shares: the dimensions of a
// decoder-only Llama-family transformer, read from a Hugging Face config.json.
#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace shardlm {

struct ModelConfig {
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
  bool tie_word_embeddings = false;
  // PaLM's parallel block, y = x + Attn(norm(x)) + FFN(norm(x)), with the one
  // norm stored as input_layernorm. config.json key: "parallel_block": true.
  bool parallel_block = false;
  std::string torch_dtype = "float32";

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t params_per_layer() const;
  int64_t num_params() const;  // all weights, embeddings included

  // Throws DataError naming `source` and the field when a key is missing,
  // mistyped or inconsistent.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  // Reads DIR/config.json.
  static ModelConfig load(const std::filesystem::path& model_dir);
};

}  // namespace shardlm
