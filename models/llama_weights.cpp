#include "models/llama_weights.hpp"

#include <fmt/format.h>

#include <cstring>
#include <set>

#include "runtime/errors.hpp"

namespace shardlm {

LayerWeightNames layer_weight_names(int layer) {
  const std::string p = fmt::format("model.layers.{}.", layer);
  return {p + "input_layernorm.weight",  p + "post_attention_layernorm.weight",
          p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
          p + "self_attn.v_proj.weight", p + "self_attn.o_proj.weight",
          p + "mlp.gate_proj.weight",    p + "mlp.up_proj.weight",
          p + "mlp.down_proj.weight",    p + "self_attn.q_proj.bias",
          p + "self_attn.k_proj.bias",   p + "self_attn.v_proj.bias",
          p + "self_attn.o_proj.bias",   p + "mlp.gate_proj.bias",
          p + "mlp.up_proj.bias",        p + "mlp.down_proj.bias"};
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
    if (c.qkv_bias) {
      specs.push_back({n.q_bias, {c.q_dim()}, WeightKind::Bias});
      specs.push_back({n.k_bias, {c.kv_dim()}, WeightKind::Bias});
      specs.push_back({n.v_bias, {c.kv_dim()}, WeightKind::Bias});
    }
    specs.push_back({n.o, {e, c.q_dim()}, WeightKind::Linear});
    if (c.o_bias) specs.push_back({n.o_bias, {e}, WeightKind::Bias});
    if (!c.parallel_block) specs.push_back({n.post_attention_norm, {e}, WeightKind::Norm});
    specs.push_back({n.gate, {f, e}, WeightKind::Linear});
    specs.push_back({n.up, {f, e}, WeightKind::Linear});
    specs.push_back({n.down, {e, f}, WeightKind::Linear});
    if (c.mlp_bias) {
      specs.push_back({n.gate_bias, {f}, WeightKind::Bias});
      specs.push_back({n.up_bias, {f}, WeightKind::Bias});
      specs.push_back({n.down_bias, {e}, WeightKind::Bias});
    }
  }
  specs.push_back({kFinalNorm, {e}, WeightKind::Norm});
  if (!c.tie_word_embeddings) specs.push_back({kLmHead, {c.vocab_size, e}, WeightKind::LmHead});
  return specs;
}

std::string bias_rule(const std::string& name, const ModelConfig& c) {
  const bool attention = name.find(".self_attn.") != std::string::npos;
  if (c.architecture == "LlamaForCausalLM")
    return attention ? fmt::format("attention_bias is {}", c.qkv_bias)
                     : fmt::format("mlp_bias is {}", c.mlp_bias);
  if (c.architecture == "Qwen2ForCausalLM") return "Qwen2ForCausalLM has biases on q, k and v only";
  return fmt::format("{} has no {} biases", c.architecture, attention ? "attention" : "MLP");
}

void check_unused_tensors(const std::map<std::string, const TensorRecord*>& records,
                          const ModelConfig& c, const std::string& where, bool warn_if_tied) {
  std::set<std::string> used;
  for (const WeightSpec& s : checkpoint_weights(c)) used.insert(s.name);
  for (const auto& [name, record] : records) {
    if (used.count(name) || name.ends_with(".rotary_emb.inv_freq")) continue;
    if (name == kLmHead && c.tie_word_embeddings) {
      if (!warn_if_tied) continue;
      const TensorRecord& embed = *records.at(kEmbedTokens);
      if (record->shape != embed.shape || record->dtype_name != embed.dtype_name ||
          std::memcmp(record->data, embed.data, embed.nbytes) != 0)
        warn(
            fmt::format("{}: tie_word_embeddings is true but the checkpoint's lm_head.weight "
                        "differs from model.embed_tokens.weight; the embedding is used as the "
                        "LM head, as the config says",
                        where));
      continue;
    }
    if (name.ends_with(".bias"))
      throw DataError(
          fmt::format("{}: tensor \"{}\" is in the checkpoint but the config has no "
                      "such bias ({})",
                      record->file, name, bias_rule(name, c)));
    throw DataError(fmt::format("{}: tensor \"{}\" is in the checkpoint but {} does not use it",
                                record->file, name, c.architecture));
  }
}

}  // namespace shardlm
