#include "runtime/pipeline.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <limits>
#include <numeric>

#include "runtime/errors.hpp"

namespace shardlm {

int64_t StageSplit::first_layer(int stage) const {
  return std::accumulate(layers.begin(), layers.begin() + stage, int64_t{0});
}

std::string StageSplit::str() const {
  return fmt::format("{}", fmt::join(layers, ","));
}

StageSplit parse_stage_split(const std::string& text, int stages, int64_t num_layers) {
  StageSplit split;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t end = std::min(text.find(',', begin), text.size());
    const std::string item = text.substr(begin, end - begin);
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw UsageError(fmt::format("--pp-layers {}: \"{}\" is not a layer count", text, item));
    if (value <= 0)
      throw UsageError(
          fmt::format("--pp-layers {}: every stage needs at least one layer, got {}", text, value));
    split.layers.push_back(value);
    begin = end + 1;
  }
  if (split.stages() != stages)
    throw UsageError(
        fmt::format("--pp-layers {} lists {} stages but --pp is {}", text, split.stages(), stages));
  const int64_t total = std::accumulate(split.layers.begin(), split.layers.end(), int64_t{0});
  if (total != num_layers)
    throw UsageError(fmt::format("--pp-layers {} sums to {} layers but the model has {}", text,
                                 total, num_layers));
  return split;
}

StageSplit balanced_stage_split(int64_t num_layers, int stages, const StageCosts& time,
                                const StageCosts& memory) {
  if (stages == 1) return {{num_layers}};
  struct Candidate {
    std::vector<int64_t> layers;
    double time = 0, memory = 0;
  };
  auto slowest = [&](const std::vector<int64_t>& layers, const StageCosts& c) {
    double worst = 0;
    for (int s = 0; s < stages; ++s)
      worst = std::max(worst, double(layers[size_t(s)]) * c.layer + (s == 0 ? c.embedding : 0) +
                                  (s == stages - 1 ? c.head : 0));
    return worst;
  };
  std::vector<Candidate> candidates;
  const int64_t middle_stages = stages - 2;
  for (int64_t first = 1; first <= num_layers; ++first)
    for (int64_t last = 1; first + last + middle_stages <= num_layers; ++last) {
      const int64_t middle = num_layers - first - last;
      if (middle_stages == 0 && middle != 0) continue;
      std::vector<int64_t> layers{first};
      for (int64_t i = 0; i < middle_stages; ++i)  // later stages take the remainder
        layers.push_back(middle / middle_stages + (i >= middle_stages - middle % middle_stages));
      layers.push_back(last);
      candidates.push_back({layers, slowest(layers, time), slowest(layers, memory)});
    }
  double fastest = std::numeric_limits<double>::infinity();
  for (const Candidate& c : candidates) fastest = std::min(fastest, c.time);
  const Candidate* best = nullptr;
  for (const Candidate& c : candidates) {
    if (c.time > fastest * 1.10) continue;
    if (!best || c.memory < best->memory * (1 - 1e-12) ||
        (c.memory <= best->memory * (1 + 1e-12) && c.time < best->time))
      best = &c;
  }
  return {best->layers};
}

std::vector<std::vector<Segment>> prefill_micro_batches(const std::vector<int64_t>& prompt_lengths,
                                                        int m) {
  const int batch = int(prompt_lengths.size());
  std::vector<std::vector<Segment>> out;
  if (batch >= m) {
    out.resize(size_t(m));
    for (int s = 0; s < batch; ++s)
      out[size_t(s % m)].push_back({s, 0, int(prompt_lengths[size_t(s)])});
    return out;
  }
  for (int k = 0; k < m; ++k) {
    std::vector<Segment> chunk;
    for (int s = 0; s < batch; ++s) {
      const int64_t length = prompt_lengths[size_t(s)];
      const int64_t begin = length * k / m, end = length * (k + 1) / m;
      if (end > begin) chunk.push_back({s, int(begin), int(end - begin)});
    }
    if (!chunk.empty()) out.push_back(std::move(chunk));
  }
  return out;
}

std::vector<std::vector<int>> decode_groups(int batch, int m) {
  const int groups = std::max(1, std::min(m, batch));
  std::vector<std::vector<int>> out(static_cast<size_t>(groups));
  for (int s = 0; s < batch; ++s) out[size_t(s % groups)].push_back(s);
  return out;
}

}  // namespace shardlm
