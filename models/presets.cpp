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
  c.window_layers.assign(size_t(layers), false);
  return c;
}

ModelConfig parallel_block(ModelConfig c) {
  c.parallel_block = true;
  return c;
}

// Llama 3.1's RoPE scaling (factor 8, low/high frequency factors 1 and 4)
// over a short original context, so test prompts reach past it.
ModelConfig llama3(ModelConfig c, int64_t original_context) {
  c.rope_theta = 500000.0;
  c.rope_scaling.type = RopeType::kLlama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = original_context;
  c.max_position_embeddings = 8 * original_context;
  return c;
}

// Llama 3.2 1B/3B: the embedding is the LM head, and head_dim is given
// (here 64, not hidden / heads = 32).
ModelConfig tied(ModelConfig c) {
  c.tie_word_embeddings = true;
  c.head_dim = 64;
  return c;
}

ModelConfig biased(ModelConfig c) {
  c.qkv_bias = c.o_bias = c.mlp_bias = true;
  return c;
}

ModelConfig qwen2(ModelConfig c) {
  c.architecture = "Qwen2ForCausalLM";
  c.qkv_bias = true;
  c.rope_theta = 1000000.0;
  c.rms_norm_eps = 1e-6;
  return c;
}

ModelConfig mistral(ModelConfig c, int64_t window) {
  c.architecture = "MistralForCausalLM";
  c.sliding_window = window;
  c.window_layers.assign(size_t(c.num_layers), true);
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
      {"tiny-llama3", "tiny as Llama 3.1: llama3 RoPE scaling over a 32-token original context",
       llama3(llama(256, 688, 4, 8, 4), 32)},
      {"tiny-tied", "tiny as Llama 3.2 1B/3B: tied embeddings, head_dim 64, llama3 RoPE scaling",
       tied(llama3(llama(256, 688, 4, 8, 2), 32))},
      {"tiny-llama-bias", "tiny with Llama's attention_bias and mlp_bias",
       biased(llama(256, 688, 4, 8, 4))},
      {"tiny-qwen2", "tiny as Qwen2/2.5: q/k/v biases, sliding window off",
       qwen2(llama(256, 688, 4, 8, 2))},
      {"tiny-mistral", "tiny as Mistral: a 16-token sliding window in every layer",
       mistral(llama(256, 688, 4, 8, 4), 16)},
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
