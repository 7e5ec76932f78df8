#include "models/llama_weights.hpp"

#include <fmt/format.h>

namespace shardlm {

LayerWeightNames layer_weight_names(int layer) {
  const std::string p = fmt::format("model.layers.{}.", layer);
  return {p + "input_layernorm.weight",  p + "post_attention_layernorm.weight",
          p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
          p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
          p + "mlp.gate_proj.weight",    p + "mlp.up_proj.weight",
          p + "mlp.down_proj.weight"};
}

std::vector<WeightSpec> checkpoint_weights(const ModelConfig& c) {
  const int64_t e = c.hidden_size, f = c.intermediate_size;
  std::vector<WeightSpec> specs;
  specs.push_back({kEmbedTokens, {c.vocab_size, e}, WeightKind::Embedding});
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const LayerWeightNames n = layer_weight_names(layer);
    specs.push_back({n.input_norm, {e}, WeightKind::Norm});
    specs.push_back({n.q, {c.q_dim(), e}, WeightKind::Linear});
    specs.push_back({n.k, {c.kv_dim(), e}, WeightKind::Linear});
    specs.push_back({n.v, {c.kv_dim(), e}, WeightKind::Linear});
    specs.push_back({n.o, {e, c.q_dim()}, WeightKind::Linear});
    if (!c.parallel_block) specs.push_back({n.post_attention_norm, {e}, WeightKind::Norm});
    specs.push_back({n.gate, {f, e}, WeightKind::Linear});
    specs.push_back({n.up, {f, e}, WeightKind::Linear});
    specs.push_back({n.down, {e, f}, WeightKind::Linear});
  }
  specs.push_back({kFinalNorm, {e}, WeightKind::Norm});
  if (!c.tie_word_embeddings) specs.push_back({kLmHead, {c.vocab_size, e}, WeightKind::LmHead});
  return specs;
}

}  // namespace shardlm
