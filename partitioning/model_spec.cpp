#include "partitioning/model_spec.hpp"

#include <fmt/core.h>

#include <filesystem>

#include "partitioning/hardware.hpp"
#include "partitioning/yaml_fields.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

int64_t ModelSpec::params_per_layer(int64_t heads) const {
  const ModelConfig& c = config;
  const int64_t e = c.hidden_size, d = c.head_dim;
  const int64_t attention = 2 * e * heads * d + 2 * e * c.num_kv_heads * d;
  const int64_t feedforward = (gated_ffn ? 3 : 2) * e * c.intermediate_size;
  const int64_t norms = (c.parallel_block ? 1 : 2) * e;
  const int64_t biases = (c.qkv_bias ? (heads + 2 * c.num_kv_heads) * d : 0) + (c.o_bias ? e : 0) +
                         (c.mlp_bias ? (gated_ffn ? 2 : 1) * c.intermediate_size + e : 0);
  return attention + feedforward + norms + biases;
}

static int64_t embedding_params(const ModelConfig& c) {
  return c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2) + c.hidden_size;
}

int64_t ModelSpec::num_params() const {
  return config.num_layers * params_per_layer(config.num_heads) + embedding_params(config);
}

int64_t ModelSpec::mfu_params() const {
  return config.num_layers * params_per_layer(unpadded_heads) + embedding_params(config);
}

std::string ModelSpec::attention_kind() const {
  if (config.num_kv_heads == 1) return "MQA";
  return config.num_kv_heads == config.num_heads ? "MHA" : "GQA";
}

ModelSpec ModelSpec::from_config(const ModelConfig& c, const std::string& name) {
  ModelSpec m;
  m.name = name;
  m.config = c;
  m.unpadded_heads = c.num_heads;
  return m;
}

ModelSpec ModelSpec::load_yaml(const std::string& file) {
  return from_yaml(YamlFields::load_file(file));
}

ModelSpec ModelSpec::from_yaml(const YamlFields& f) {
  ModelSpec m;
  m.name = f.text("name");
  m.source = f.text("source", "");
  ModelConfig& c = m.config;
  c.hidden_size = f.positive_int("hidden_size");
  c.intermediate_size = f.positive_int("intermediate_size");
  c.num_layers = f.positive_int("num_layers");
  c.num_heads = f.positive_int("num_heads");
  c.num_kv_heads = f.positive_int("num_kv_heads", c.num_heads);
  c.head_dim = f.positive_int("head_dim", c.hidden_size / c.num_heads);
  c.vocab_size = f.positive_int("vocab_size");
  c.max_position_embeddings = f.positive_int("max_position_embeddings");
  c.rms_norm_eps = f.number("rms_norm_eps", c.rms_norm_eps);
  c.rope_theta = f.number("rope_theta", c.rope_theta);
  c.tie_word_embeddings = f.flag("tie_word_embeddings", false);
  const std::string block = f.text("block", "serial");
  if (block != "serial" && block != "parallel")
    throw DataError(
        fmt::format("{}: expected 'serial' or 'parallel', got '{}'", f.where("block"), block));
  c.parallel_block = block == "parallel";
  const std::string ffn = f.text("ffn", "swiglu");
  if (ffn != "swiglu" && ffn != "gelu")
    throw DataError(fmt::format("{}: expected 'swiglu' or 'gelu', got '{}'", f.where("ffn"), ffn));
  m.gated_ffn = ffn == "swiglu";
  m.unpadded_heads = f.positive_int("num_heads_unpadded", c.num_heads);
  if (m.unpadded_heads > c.num_heads)
    throw DataError(fmt::format("{}: {} exceeds num_heads {}", f.where("num_heads_unpadded"),
                                m.unpadded_heads, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0)
    throw DataError(fmt::format("{}: num_heads {} is not a multiple of num_kv_heads {}",
                                f.where("num_kv_heads"), c.num_heads, c.num_kv_heads));
  if (f.has("attention")) {
    const std::string kind = f.text("attention");
    if (kind != m.attention_kind())
      throw DataError(fmt::format("{}: says {} but num_heads {} / num_kv_heads {} make it {}",
                                  f.where("attention"), kind, c.num_heads, c.num_kv_heads,
                                  m.attention_kind()));
  }
  f.reject_unknown();
  return m;
}

ModelSpec ModelSpec::resolve(const std::string& name_or_path) {
  namespace fs = std::filesystem;
  if (std::error_code ec; fs::is_directory(name_or_path, ec)) {
    ModelSpec m = from_config(ModelConfig::load(name_or_path), fs::path(name_or_path).filename());
    m.source = (fs::path(name_or_path) / "config.json").string();
    return m;
  }
  return load_yaml(resolve_config(name_or_path, "models"));
}

}  // namespace shardlm
