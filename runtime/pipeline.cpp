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

std::string StageSplit::str() const { return fmt::format("{}", fmt::join(layers, ",")); }

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
    throw UsageError(fmt::format("--pp-layers {} lists {} stages but --pp is {}", text,
                                 split.stages(), stages));
  const int64_t total = std::accumulate(split.layers.begin(), split.layers.end(), int64_t{0});
  if (total != num_layers)
    throw UsageError(fmt::format("--pp-layers {} sums to {} layers but the model has {}", text,
                                 total, num_layers));
  return split;
}

StageSplit balanced_stage_split(int64_t num_layers, int stages, double layer_cost,
                                double head_cost, double embedding_cost) {
  if (stages == 1) return {{num_layers}};
  // The last stage's count decides the rest: the layers left are spread as
  // evenly as possible over the stages before it, the first taking the
  // fewest of those when the embedding costs something.
  StageSplit best;
  double best_time = std::numeric_limits<double>::infinity();
  for (int64_t last = 1; last <= num_layers - (stages - 1); ++last) {
    const int64_t rest = num_layers - last, before = stages - 1;
    std::vector<int64_t> layers(size_t(before), rest / before);
    for (int64_t i = 0; i < rest % before; ++i) layers[size_t(before - 1 - i)] += 1;
    layers.push_back(last);
    double slowest = 0;
    for (int s = 0; s < stages; ++s)
      slowest = std::max(slowest, double(layers[size_t(s)]) * layer_cost +
                                      (s == 0 ? embedding_cost : 0) +
                                      (s == stages - 1 ? head_cost : 0));
    if (slowest < best_time * (1 - 1e-12)) {
      best_time = slowest;
      best.layers = layers;
    }
  }
  return best;
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
