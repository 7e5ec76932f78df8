#include "models/model_config.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

using nlohmann::json;

// Reads one key, naming the file and key when it is missing or mistyped.
class FieldReader {
 public:
  FieldReader(const json& j, const std::string& source) : j_(j), source_(source) {}

  int64_t positive_int(const char* key, std::optional<int64_t> fallback = std::nullopt) const {
    const json* value = find(key, fallback.has_value());
    if (!value) return *fallback;
    if (!value->is_number_integer())
      fail(key, fmt::format("a positive integer, got {}", value->dump()));
    const int64_t v = value->get<int64_t>();
    if (v <= 0) fail(key, fmt::format("a positive integer, got {}", v));
    return v;
  }

  double positive_number(const char* key, double fallback) const {
    const json* value = find(key, true);
    if (!value) return fallback;
    if (!value->is_number()) fail(key, fmt::format("a number, got {}", value->dump()));
    const double v = value->get<double>();
    if (!(v > 0)) fail(key, fmt::format("a positive number, got {}", v));
    return v;
  }

  bool boolean(const char* key, bool fallback) const {
    const json* value = find(key, true);
    if (!value) return fallback;
    if (!value->is_boolean()) fail(key, fmt::format("true or false, got {}", value->dump()));
    return value->get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    const json* value = find(key, true);
    if (!value) return fallback;
    if (!value->is_string()) fail(key, fmt::format("a string, got {}", value->dump()));
    return value->get<std::string>();
  }

  [[noreturn]] void fail(const char* key, const std::string& expected) const {
    throw DataError(fmt::format("{}: field \"{}\": expected {}", source_, key, expected));
  }

 private:
  const json* find(const char* key, bool optional) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (optional) return nullptr;
      throw DataError(fmt::format("{}: missing required field \"{}\"", source_, key));
    }
    return &*it;
  }

  const json& j_;
  const std::string& source_;
};

}  // namespace

int64_t ModelConfig::params_per_layer() const {
  const int64_t attention = hidden_size * (q_dim() + 2 * kv_dim()) + q_dim() * hidden_size;
  const int64_t feedforward = 3 * hidden_size * intermediate_size;
  const int64_t norms = (parallel_block ? 1 : 2) * hidden_size;
  return attention + feedforward + norms;
}

int64_t ModelConfig::num_params() const {
  const int64_t embeddings = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_layers * params_per_layer() + embeddings + hidden_size;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw DataError(fmt::format("{}: expected a JSON object", source));
  FieldReader field(j, source);
  ModelConfig c;
  c.hidden_size = field.positive_int("hidden_size");
  c.intermediate_size = field.positive_int("intermediate_size");
  c.num_layers = field.positive_int("num_hidden_layers");
  c.num_heads = field.positive_int("num_attention_heads");
  c.num_kv_heads = field.positive_int("num_key_value_heads", c.num_heads);
  c.vocab_size = field.positive_int("vocab_size");
  c.max_position_embeddings = field.positive_int("max_position_embeddings", 2048);
  c.rms_norm_eps = field.positive_number("rms_norm_eps", 1e-6);
  c.rope_theta = field.positive_number("rope_theta", 10000.0);
  c.tie_word_embeddings = field.boolean("tie_word_embeddings", false);
  c.parallel_block = field.boolean("parallel_block", false);
  c.torch_dtype = field.string("torch_dtype", "float32");
  if (c.num_heads % c.num_kv_heads != 0)
    field.fail("num_key_value_heads", fmt::format("a divisor of num_attention_heads = {}, got {}",
                                                  c.num_heads, c.num_kv_heads));
  if (!j.contains("head_dim") && c.hidden_size % c.num_heads != 0)
    field.fail("head_dim", fmt::format("to be given, since hidden_size = {} is not a multiple of "
                                       "num_attention_heads = {}",
                                       c.hidden_size, c.num_heads));
  c.head_dim = field.positive_int("head_dim", c.hidden_size / c.num_heads);
  if (c.head_dim % 2 != 0)
    field.fail("head_dim", fmt::format("an even number (RoPE rotates pairs), got {}", c.head_dim));
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    field.fail("rope_scaling", "null: scaled RoPE is not supported yet");
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_layers},
      {"num_attention_heads", num_heads},
      {"num_key_value_heads", num_kv_heads},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"tie_word_embeddings", tie_word_embeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", torch_dtype},
  };
  if (head_dim * num_heads != hidden_size) j["head_dim"] = head_dim;
  if (parallel_block) j["parallel_block"] = true;
  return j;
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec))
    throw DataError(fmt::format("{}: model directory does not exist or is not a directory",
                                model_dir.string()));
  const std::filesystem::path path = model_dir / "config.json";
  std::ifstream in(path);
  if (!in)
    throw DataError(fmt::format("{}: cannot open ({}; expected a Hugging Face config.json)",
                                path.string(), std::strerror(errno)));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
  return from_json(j, path.string());
}

}  // namespace shardlm
