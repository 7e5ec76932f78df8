#pragma once
// Built-in model shapes for `shardlm make-model --preset NAME`.
#include <optional>
#include <string>
#include <vector>

#include "models/model_config.hpp"

namespace shardlm {

struct ModelPreset {
  std::string name;
  std::string description;
  ModelConfig config;
};

const std::vector<ModelPreset>& model_presets();
std::optional<ModelConfig> find_preset(const std::string& name);

}  // namespace shardlm
