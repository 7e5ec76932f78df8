#pragma once
// Deterministic random-weight checkpoints in Hugging Face Llama layout, so
// tests and benchmarks need no download.
#include <cstdint>
#include <filesystem>
#include <string>

#include "models/model_config.hpp"
#include "runtime/dtype.hpp"

namespace shardlm {

struct RandomCheckpointOptions {
  DType dtype = DType::BF16;
  uint64_t seed = 0;
  int shards = 1;  // 1: model.safetensors; K > 1: model-0000k-of-0000K.safetensors + index
};

// Writes config.json and the safetensors file(s) into `dir` (created if
// needed). Values depend only on the seed and each tensor's name: linear
// weights uniform with std 1/sqrt(fan_in) so activations keep unit scale,
// embeddings std 1, norm weights 1 ± 0.1.
void write_random_checkpoint(const ModelConfig& config, const std::filesystem::path& dir,
                             const RandomCheckpointOptions& options);

// Whether `name` is a file make-model writes (config, weights, index,
// tokenizer): a directory holding only these may be replaced by a new model.
bool is_checkpoint_file(const std::string& name);

}  // namespace shardlm
