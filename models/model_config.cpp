#include "models/model_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

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

// ---------------------------------------------------------------------------
// The keys of each architecture. A key is used (read below), harmless to
// ignore (it changes nothing shardlm computes), or unknown (a warning).
// Values that would change the math in a way shardlm does not implement are
// refused where they are read.

const std::vector<std::string_view> kCommonUsedKeys = {
    "architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
    "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "tie_word_embeddings", "hidden_act", "torch_dtype", "dtype",
    // Refused unless they hold their neutral value:
    "partial_rotary_factor", "quantization_config"};

// Training, generation and bookkeeping settings. pretraining_tp only splits
// Hugging Face's matmuls into slices whose sum is the same product.
const std::vector<std::string_view> kCommonIgnoredKeys = {"transformers_version",
                                                          "use_cache",
                                                          "attention_dropout",
                                                          "initializer_range",
                                                          "bos_token_id",
                                                          "eos_token_id",
                                                          "pad_token_id",
                                                          "_name_or_path",
                                                          "pretraining_tp",
                                                          "output_attentions",
                                                          "output_hidden_states",
                                                          "return_dict",
                                                          "tokenizer_class",
                                                          "chunk_size_feed_forward",
                                                          "is_encoder_decoder",
                                                          "problem_type",
                                                          "id2label",
                                                          "label2id",
                                                          "embedding_dropout",
                                                          "residual_dropout"};

struct ArchitectureKeys {
  std::string_view architecture, model_type;
  std::vector<std::string_view> used;     // besides kCommonUsedKeys
  std::vector<std::string_view> ignored;  // besides kCommonIgnoredKeys
};

const std::vector<ArchitectureKeys>& architecture_table() {
  static const std::vector<ArchitectureKeys> table = {
      {"LlamaForCausalLM", "llama", {"attention_bias", "mlp_bias", "parallel_block"}, {}},
      {"MistralForCausalLM", "mistral", {"sliding_window"}, {}},
      {"Qwen2ForCausalLM",
       "qwen2",
       {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "use_mrope"},
       {}},
  };
  return table;
}

const ArchitectureKeys& find_architecture(const json& j, const std::string& source) {
  std::string architecture = "LlamaForCausalLM";  // configs without the key are Llama's
  if (auto it = j.find("architectures"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->size() != 1 || !(*it)[0].is_string())
      throw DataError(fmt::format(
          "{}: field \"architectures\": expected a list of one name, got {}", source, it->dump()));
    architecture = (*it)[0].get<std::string>();
  }
  std::string supported;
  for (const ArchitectureKeys& a : architecture_table()) {
    if (a.architecture == architecture) {
      if (auto it = j.find("model_type");
          it != j.end() && !(it->is_string() && it->get<std::string>() == a.model_type))
        throw DataError(fmt::format("{}: field \"model_type\": expected \"{}\" for {}, got {}",
                                    source, a.model_type, architecture, it->dump()));
      return a;
    }
    supported += fmt::format("{}{}", supported.empty() ? "" : ", ", a.architecture);
  }
  throw DataError(fmt::format("{}: field \"architectures\": {} is not supported (supported: {})",
                              source, architecture, supported));
}

void warn_unknown_keys(const json& j, const ArchitectureKeys& a, const std::string& source) {
  auto listed = [](const std::vector<std::string_view>& keys, const std::string& key) {
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  };
  for (const auto& [key, value] : j.items())
    if (!listed(kCommonUsedKeys, key) && !listed(kCommonIgnoredKeys, key) && !listed(a.used, key) &&
        !listed(a.ignored, key))
      warn(fmt::format("{}: key \"{}\" is not known for {}; ignored (value {})", source, key,
                       a.architecture, value.dump()));
}

// rope_scaling (or the newer rope_parameters) as Hugging Face reads it.
RopeScaling parse_rope_scaling(const json& r, const char* key, int64_t max_positions,
                               const std::string& source) {
  RopeScaling s;
  if (r.is_null()) return s;
  const std::string where = fmt::format("{}: field \"{}\"", source, key);
  auto where_sub = [&](const char* name) {
    return fmt::format("{}: field \"{}.{}\"", source, key, name);
  };
  if (!r.is_object())
    throw DataError(fmt::format("{}: expected an object, got {}", where, r.dump()));
  std::string type;
  for (const char* name : {"rope_type", "type"})
    if (auto it = r.find(name); it != r.end() && it->is_string()) type = it->get<std::string>();
  if (type.empty())
    throw DataError(
        fmt::format("{}: missing \"rope_type\" (linear, dynamic, llama3 or yarn)", where));
  std::vector<std::string> allowed = {"rope_type", "type", "rope_theta"};
  auto number = [&](const char* name, std::optional<double> fallback) {
    allowed.push_back(name);
    auto it = r.find(name);
    if (it == r.end() || it->is_null()) {
      if (!fallback)
        throw DataError(fmt::format("{}: rope_type \"{}\" needs \"{}\"", where, type, name));
      return *fallback;
    }
    if (!it->is_number())
      throw DataError(fmt::format("{}: expected a number, got {}", where_sub(name), it->dump()));
    return it->get<double>();
  };
  auto factor = [&] {
    const double f = number("factor", std::nullopt);
    if (!(f >= 1.0))
      throw DataError(fmt::format("{}: expected a number >= 1, got {}", where_sub("factor"), f));
    return f;
  };
  auto original_context = [&](std::optional<double> fallback) {
    const double v = number("original_max_position_embeddings", fallback);
    if (!(v >= 1) || v != std::floor(v))
      throw DataError(fmt::format("{}: expected a positive integer, got {}",
                                  where_sub("original_max_position_embeddings"), v));
    return int64_t(v);
  };
  if (type == "default") {
  } else if (type == "linear") {
    s.type = RopeType::kLinear;
    s.factor = factor();
  } else if (type == "dynamic") {
    s.type = RopeType::kDynamic;
    s.factor = factor();
  } else if (type == "llama3") {
    s.type = RopeType::kLlama3;
    s.factor = factor();
    s.low_freq_factor = number("low_freq_factor", std::nullopt);
    s.high_freq_factor = number("high_freq_factor", std::nullopt);
    s.original_max_position_embeddings = original_context(std::nullopt);
    if (!(s.high_freq_factor > s.low_freq_factor && s.low_freq_factor > 0))
      throw DataError(
          fmt::format("{}: expected 0 < low_freq_factor < high_freq_factor, got {} and {}", where,
                      s.low_freq_factor, s.high_freq_factor));
  } else if (type == "yarn") {
    s.type = RopeType::kYarn;
    s.factor = factor();
    s.original_max_position_embeddings = original_context(double(max_positions));
    s.beta_fast = number("beta_fast", 32.0);
    s.beta_slow = number("beta_slow", 1.0);
    // Hugging Face: attention_factor, else the ratio of the two mscales when
    // both are given, else 0.1 ln(factor) + 1.
    auto mscale = [](double scale, double m) {
      return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
    };
    const double ms = number("mscale", 0.0), ms_all = number("mscale_all_dim", 0.0);
    s.attention_factor = number(
        "attention_factor", ms != 0 && ms_all != 0 ? mscale(s.factor, ms) / mscale(s.factor, ms_all)
                                                   : mscale(s.factor, 1.0));
    allowed.push_back("truncate");
    if (auto it = r.find("truncate"); it != r.end() && !it->is_null()) {
      if (!it->is_boolean())
        throw DataError(
            fmt::format("{}: expected true or false, got {}", where_sub("truncate"), it->dump()));
      s.truncate = it->get<bool>();
    }
  } else {
    throw DataError(fmt::format(
        "{}: rope_type \"{}\" is not supported (supported: default, linear, dynamic, llama3, yarn)",
        where, type));
  }
  for (const auto& [name, value] : r.items())
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end())
      throw DataError(fmt::format("{}: key \"{}\" (= {}) is not used by rope_type \"{}\"", where,
                                  name, value.dump(), type));
  return s;
}

}  // namespace

int64_t ModelConfig::params_per_layer() const {
  const int64_t attention = hidden_size * (q_dim() + 2 * kv_dim()) + q_dim() * hidden_size;
  const int64_t feedforward = 3 * hidden_size * intermediate_size;
  const int64_t norms = (parallel_block ? 1 : 2) * hidden_size;
  const int64_t biases = (qkv_bias ? q_dim() + 2 * kv_dim() : 0) + (o_bias ? hidden_size : 0) +
                         (mlp_bias ? 2 * intermediate_size + hidden_size : 0);
  return attention + feedforward + norms + biases;
}

int64_t ModelConfig::num_params() const {
  const int64_t embeddings = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_layers * params_per_layer() + embeddings + hidden_size;
}

int64_t ModelConfig::attention_window(int64_t layer) const {
  return sliding_window > 0 && window_layers.at(size_t(layer)) ? sliding_window : 0;
}

int64_t ModelConfig::context_length() const {
  if (rope_scaling.type == RopeType::kDynamic)
    return int64_t(std::floor(double(max_position_embeddings) * rope_scaling.factor));
  return max_position_embeddings;
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw DataError(fmt::format("{}: expected a JSON object", source));
  const ArchitectureKeys& arch = find_architecture(j, source);
  warn_unknown_keys(j, arch, source);
  FieldReader field(j, source);
  ModelConfig c;
  c.architecture = std::string(arch.architecture);
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
  c.torch_dtype = field.string("torch_dtype", field.string("dtype", "float32"));
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

  // Values shardlm does not compute with are refused, never ignored.
  if (const std::string act = field.string("hidden_act", "silu"); act != "silu")
    field.fail("hidden_act", fmt::format("\"silu\" (SwiGLU), got \"{}\"", act));
  if (field.positive_number("partial_rotary_factor", 1.0) != 1.0)
    field.fail("partial_rotary_factor", "1 (RoPE over the whole head)");
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    field.fail("quantization_config",
               "no quantization_config: quantized checkpoints are not supported (shardlm "
               "quantizes float checkpoints itself with --weights int8)");

  // rope_parameters (transformers 5) holds rope_theta and the scaling in one object.
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    if (auto theta = it->find("rope_theta"); it->is_object() && theta != it->end()) {
      if (!theta->is_number() || !(theta->get<double>() > 0))
        field.fail("rope_parameters", fmt::format("a positive rope_theta, got {}", theta->dump()));
      c.rope_theta = theta->get<double>();
    }
    c.rope_scaling = parse_rope_scaling(*it, "rope_parameters", c.max_position_embeddings, source);
  } else if (auto it = j.find("rope_scaling"); it != j.end()) {
    c.rope_scaling = parse_rope_scaling(*it, "rope_scaling", c.max_position_embeddings, source);
  }

  c.window_layers.assign(size_t(c.num_layers), false);
  if (arch.model_type == "llama") {
    c.qkv_bias = c.o_bias = field.boolean("attention_bias", false);
    c.mlp_bias = field.boolean("mlp_bias", false);
    c.parallel_block = field.boolean("parallel_block", false);
  } else if (arch.model_type == "mistral") {
    // Mistral applies its window in every layer; null means full attention.
    c.sliding_window = field.positive_int("sliding_window", 0);
    c.window_layers.assign(size_t(c.num_layers), true);
  } else if (arch.model_type == "qwen2") {
    c.qkv_bias = true;
    if (field.boolean("use_mrope", false))
      field.fail("use_mrope", "false (multimodal RoPE is not supported)");
    // Hugging Face: the window exists only with use_sliding_window, and then
    // in the layers layer_types marks, by default those from max_window_layers on.
    if (field.boolean("use_sliding_window", false)) {
      c.sliding_window = field.positive_int("sliding_window", 0);
      const int64_t from = field.positive_int("max_window_layers", c.num_layers);
      for (int64_t layer = from; layer < c.num_layers; ++layer)
        c.window_layers[size_t(layer)] = true;
    }
    if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
      if (!it->is_array() || int64_t(it->size()) != c.num_layers)
        field.fail("layer_types", fmt::format("a list of {} layer types", c.num_layers));
      for (size_t layer = 0; layer < it->size(); ++layer) {
        const json& t = (*it)[layer];
        if (t != "full_attention" && t != "sliding_attention")
          field.fail("layer_types", fmt::format("\"full_attention\" or \"sliding_attention\", got "
                                                "{} at layer {}",
                                                t.dump(), layer));
        c.window_layers[layer] = t == "sliding_attention";
      }
    }
  }
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  const auto arch =
      std::find_if(architecture_table().begin(), architecture_table().end(),
                   [&](const ArchitectureKeys& k) { return k.architecture == architecture; });
  if (arch == architecture_table().end())
    throw std::logic_error("ModelConfig::to_json: unknown architecture " + architecture);
  const std::string model_type(arch->model_type);
  json j = {
      {"architectures", {architecture}},
      {"model_type", model_type},
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
  const RopeScaling& r = rope_scaling;
  switch (r.type) {
    case RopeType::kDefault: j["rope_scaling"] = nullptr; break;
    case RopeType::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", r.factor}};
      break;
    case RopeType::kDynamic:
      j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", r.factor}};
      break;
    case RopeType::kLlama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", r.factor},
          {"low_freq_factor", r.low_freq_factor},
          {"high_freq_factor", r.high_freq_factor},
          {"original_max_position_embeddings", r.original_max_position_embeddings}};
      break;
    case RopeType::kYarn:
      j["rope_scaling"] = {{"rope_type", "yarn"},
                           {"factor", r.factor},
                           {"original_max_position_embeddings", r.original_max_position_embeddings},
                           {"beta_fast", r.beta_fast},
                           {"beta_slow", r.beta_slow},
                           {"attention_factor", r.attention_factor},
                           {"truncate", r.truncate}};
      break;
  }
  if (model_type == "llama") {
    if (qkv_bias != o_bias)
      throw std::logic_error("Llama's attention_bias covers q, k, v and o together");
    j["attention_bias"] = qkv_bias;
    j["mlp_bias"] = mlp_bias;
    if (parallel_block) j["parallel_block"] = true;
  } else if (model_type == "mistral") {
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  } else {
    j["use_sliding_window"] = sliding_window > 0;
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
    // Without a window no layer has one; with it, layer_types says which
    // layers do even when they are not all those from max_window_layers on.
    const auto first = std::find(window_layers.begin(), window_layers.end(), true);
    j["max_window_layers"] = sliding_window > 0 ? first - window_layers.begin() : num_layers;
    if (sliding_window > 0) {
      json types = json::array();
      for (bool windowed : window_layers)
        types.push_back(windowed ? "sliding_attention" : "full_attention");
      j["layer_types"] = types;
    }
  }
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
  return parse(std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()},
               path.string());
}

ModelConfig ModelConfig::parse(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  return from_json(j, source);
}

}  // namespace shardlm
