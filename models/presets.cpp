#include "models/presets.hpp"

namespace shardlm {
namespace {

ModelConfig llama(int64_t hidden, int64_t ffn, int64_t layers, int64_t heads, int64_t kv_heads) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = ffn;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab_size = 32000;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

ModelConfig parallel_block(ModelConfig c) {
  c.parallel_block = true;
  return c;
}

}  // namespace

const std::vector<ModelPreset>& model_presets() {
  static const std::vector<ModelPreset> presets = {
      {"tiny", "~19M params, grouped-query attention (8 heads, 4 KV heads)",
       llama(256, 688, 4, 8, 4)},
      {"tiny-mha", "tiny with multi-head attention (KV heads = heads)", llama(256, 688, 4, 8, 8)},
      {"tiny-mqa", "tiny with multi-query attention (1 KV head)", llama(256, 688, 4, 8, 1)},
      {"tiny-parallel", "tiny with PaLM's parallel block, 2 KV heads",
       parallel_block(llama(256, 688, 4, 8, 2))},
      {"small", "~125M params, GQA (12 heads, 4 KV heads)", llama(768, 2048, 12, 12, 4)},
      {"1b", "~1.1B params, TinyLlama dimensions (32 heads, 4 KV heads)",
       llama(2048, 5632, 22, 32, 4)},
  };
  return presets;
}

std::optional<ModelConfig> find_preset(const std::string& name) {
  for (const ModelPreset& p : model_presets())
    if (p.name == name) return p.config;
  return std::nullopt;
}

}  // namespace shardlm
