#include "models/random_checkpoint.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "models/llama_weights.hpp"
#include "models/safetensors.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {
namespace fs = std::filesystem;
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Fills `values` with offset + scale * U(-1, 1). Each fixed-size chunk has its
// own generator, so the result does not depend on the thread count.
void fill_uniform(std::vector<float>& values, uint64_t seed, float offset, float scale) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t n = int64_t(values.size());
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < (n + kChunk - 1) / kChunk; ++chunk) {
    uint64_t state = splitmix64(seed ^ uint64_t(chunk) * 0xd1342543de82ef95ull);
    const int64_t end = std::min(n, (chunk + 1) * kChunk);
    for (int64_t i = chunk * kChunk; i < end; ++i) {
      state = splitmix64(state);
      const float unit = float(state >> 40) * (1.0f / float(1ull << 24));  // [0, 1)
      values[size_t(i)] = offset + scale * (2.0f * unit - 1.0f);
    }
  }
}

// Uniform(-1, 1) has std 1/sqrt(3).
constexpr float kUniformToUnitStd = 1.7320508f;

void fill_weight(const WeightSpec& spec, uint64_t seed, std::vector<float>& values) {
  values.resize(size_t(numel_of(spec.shape)));
  const uint64_t tensor_seed = splitmix64(seed ^ fnv1a(spec.name));
  switch (spec.kind) {
    case WeightKind::Embedding: return fill_uniform(values, tensor_seed, 0.f, kUniformToUnitStd);
    case WeightKind::Norm: return fill_uniform(values, tensor_seed, 1.f, 0.1f);
    // Biases of std 0.5: large enough that dropping one changes every logit.
    case WeightKind::Bias: return fill_uniform(values, tensor_seed, 0.f, 0.5f * kUniformToUnitStd);
    case WeightKind::Linear:
    case WeightKind::LmHead:
      return fill_uniform(values, tensor_seed, 0.f,
                          kUniformToUnitStd / std::sqrt(float(spec.shape[1])));
  }
}

}  // namespace

bool is_checkpoint_file(const std::string& name) {
  if (name == "config.json" || name == "model.safetensors" ||
      name == "model.safetensors.index.json" || name == "tokenizer.json" ||
      name == "tokenizer_config.json")
    return true;
  int part = 0, parts = 0, length = 0;
  return std::sscanf(name.c_str(), "model-%5d-of-%5d.safetensors%n", &part, &parts, &length) == 2 &&
         size_t(length) == name.size();
}

void write_random_checkpoint(const ModelConfig& config_in, const fs::path& dir,
                             const RandomCheckpointOptions& options) {
  ModelConfig config = config_in;
  config.torch_dtype = std::string(torch_dtype_name(options.dtype));
  const std::vector<WeightSpec> specs = checkpoint_weights(config);
  const int64_t shards = options.shards;
  if (shards < 1 || shards > int64_t(specs.size()))
    throw UsageError(fmt::format(
        "--shards must be between 1 and {} (the number of tensors), got {}", specs.size(), shards));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw DataError(fmt::format("{}: cannot create directory: {}", dir.string(), ec.message()));
  const size_t elem = dtype_size(options.dtype);
  int64_t total_bytes = 0;
  for (const WeightSpec& s : specs) total_bytes += numel_of(s.shape) * int64_t(elem);

  // Consecutive tensors share a file; a tensor goes to the file its middle byte
  // falls in, and no file is left empty.
  std::vector<std::vector<const WeightSpec*>> shard_specs(static_cast<size_t>(shards));
  {
    int64_t written = 0, shard = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      const int64_t bytes = numel_of(specs[i].shape) * int64_t(elem);
      const int64_t tensors_left = int64_t(specs.size() - i);
      shard =
          std::max({shard, (written + bytes / 2) * shards / total_bytes, shards - tensors_left});
      shard = std::min({shard, shards - 1});
      if (shard > 0 && shard_specs[size_t(shard - 1)].empty()) --shard;
      shard_specs[size_t(shard)].push_back(&specs[i]);
      written += bytes;
    }
  }

  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<float> values;
  for (int shard = 0; shard < shards; ++shard) {
    const std::string file_name =
        shards == 1 ? "model.safetensors"
                    : fmt::format("model-{:05d}-of-{:05d}.safetensors", shard + 1, shards);
    std::vector<std::vector<char>> buffers;
    std::vector<TensorToWrite> tensors;
    for (const WeightSpec* s : shard_specs[size_t(shard)]) {
      fill_weight(*s, options.seed, values);
      buffers.emplace_back(values.size() * elem);
      convert_from_f32(values.data(), buffers.back().data(), options.dtype, values.size());
      tensors.push_back({s->name, options.dtype, s->shape, buffers.back().data()});
      weight_map[s->name] = file_name;
    }
    write_safetensors(dir / file_name, tensors, {{"format", "pt"}});
  }
  if (shards == 1) {
    fs::remove(dir / "model.safetensors.index.json", ec);  // a stale index would win over the file
  } else {
    const nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}},
                                  {"weight_map", weight_map}};
    write_file_atomically(dir / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  write_file_atomically(dir / "config.json", config.to_json().dump(2) + "\n");
}

}  // namespace shardlm
