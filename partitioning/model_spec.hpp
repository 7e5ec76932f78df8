#pragma once
// ModelSpec: what the planner needs to know about a model — the shared
// ModelConfig plus the few facts a config.json does not state (feedforward
// kind, padded heads). Read from configs/models/*.yaml or from a Hugging Face
// model directory (config.json, via ModelConfig::load).
#include <string>

#include "models/model_config.hpp"
#include "partitioning/yaml_fields.hpp"

namespace shardlm {

struct ModelSpec {
  std::string name, source;
  ModelConfig config;
  bool gated_ffn = true;  // SwiGLU (gate, up, down) vs. GELU (in, out)
  // Heads before padding for partitioning (PaLM 540B: 48 padded to 64, §4);
  // equals config.num_heads when not padded.
  int64_t unpadded_heads = 0;

  int64_t params_per_layer(int64_t heads) const;
  // Every weight, embeddings included, with the heads as stored (padded).
  int64_t num_params() const;
  // N as the paper counts it for MFU: the model before head padding.
  int64_t mfu_params() const;
  std::string attention_kind() const;  // "MHA", "GQA" or "MQA"

  static ModelSpec load_yaml(const std::string& file);  // throws DataError
  static ModelSpec from_yaml(const YamlFields& f);      // the same, from a parsed file
  static ModelSpec from_config(const ModelConfig& c, const std::string& name);
  // NAME (configs/models/NAME.yaml), a YAML file, or a directory with config.json.
  static ModelSpec resolve(const std::string& name_or_path);
};

}  // namespace shardlm
