#include "runtime/engine.hpp"

#include <algorithm>
#include <chrono>
#include <random>

#include <fmt/format.h>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Engine::Engine(Backend& backend, ModelConfig config, ModelWeights weights)
    : backend_(backend), config_(std::move(config)), weights_(std::move(weights)),
      rope_(backend, config_) {}

std::vector<float> Engine::forward(const std::vector<int32_t>& tokens, const BatchLayout& batch,
                                   const std::vector<int32_t>& logit_rows) {
  const int64_t n = int64_t(tokens.size());
  Tensor residual = backend_.alloc({n, config_.hidden_size}, DType::F32);
  backend_.embedding(weights_.embed_tokens, tokens.data(), residual);
  const BlockScratch scratch(backend_, config_, n);
  for (size_t layer = 0; layer < weights_.layers.size(); ++layer)
    run_decoder_block(backend_, config_, weights_.layers[layer], cache_[layer], rope_, batch,
                      scratch, residual);

  const int64_t rows = int64_t(logit_rows.size());
  Tensor selected = backend_.alloc({rows, config_.hidden_size}, DType::F32);
  backend_.embedding(residual, logit_rows.data(), selected);  // a row gather
  backend_.rmsnorm(selected, weights_.final_norm, float(config_.rms_norm_eps), selected);
  Tensor logits = backend_.alloc({rows, config_.vocab_size}, DType::F32);
  backend_.matmul(selected, weights_.lm_head, logits, false);
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  backend_.copy_to_host(logits, host.data());
  return host;
}

GenerationResult Engine::generate(const GenerationRequest& request) {
  const auto& prompts = request.prompts;
  if (prompts.empty()) throw UsageError("no prompt given");
  if (request.max_new_tokens < 0)
    throw UsageError(fmt::format("--max-new-tokens must be >= 0, got {}", request.max_new_tokens));
  size_t longest = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    if (prompts[s].empty()) throw UsageError(fmt::format("prompt {} is empty", s));
    longest = std::max(longest, prompts[s].size());
    for (size_t i = 0; i < prompts[s].size(); ++i)
      if (prompts[s][i] < 0 || prompts[s][i] >= config_.vocab_size)
        throw DataError(fmt::format("token id {} (prompt {}, position {}) is outside the vocabulary "
                                    "[0, {})",
                                    prompts[s][i], s, i, config_.vocab_size));
  }
  const int64_t context = int64_t(longest) + request.max_new_tokens;
  if (context > config_.max_position_embeddings)
    throw UsageError(fmt::format(
        "prompt length {} + --max-new-tokens {} = {} exceeds the model's context length "
        "(max_position_embeddings = {})",
        longest, request.max_new_tokens, context, config_.max_position_embeddings));

  const int batch_size = int(prompts.size());
  cache_.clear();
  const Shape cache_shape = {batch_size, config_.num_kv_heads, std::max<int64_t>(context, 1),
                             config_.head_dim};
  for (int64_t layer = 0; layer < config_.num_layers; ++layer)
    cache_.push_back({backend_.alloc(cache_shape, DType::F32), backend_.alloc(cache_shape, DType::F32)});

  GenerationResult result;
  result.vocab_size = config_.vocab_size;
  result.generated.resize(size_t(batch_size));
  std::vector<std::mt19937_64> rngs;
  for (int s = 0; s < batch_size; ++s) rngs.emplace_back(request.sampling.seed + uint64_t(s));
  const int64_t vocab = config_.vocab_size;

  // Samples each listed sequence's next token from its row of `logits`.
  std::vector<int> live;
  auto sample_all = [&](const std::vector<int>& sequences, const std::vector<float>& logits,
                        int64_t first_row) {
    std::vector<int> still_live;
    for (size_t i = 0; i < sequences.size(); ++i) {
      const int s = sequences[i];
      const float* row = logits.data() + (first_row + int64_t(i)) * vocab;
      if (s == 0 && request.keep_step_logits)
        result.step_logits.insert(result.step_logits.end(), row, row + vocab);
      const int32_t token = sample_token(row, vocab, request.sampling, rngs[size_t(s)]);
      result.generated[size_t(s)].push_back(token);
      const bool stopped = std::find(request.stop_ids.begin(), request.stop_ids.end(), token) !=
                           request.stop_ids.end();
      if (!stopped && int(result.generated[size_t(s)].size()) < request.max_new_tokens)
        still_live.push_back(s);
    }
    live = std::move(still_live);
  };

  // Prefill: every prompt in one ragged batch.
  const auto start = std::chrono::steady_clock::now();
  std::vector<int32_t> tokens;
  std::vector<Segment> segments;
  std::vector<int32_t> logit_rows;
  if (request.keep_prompt_logits)
    for (size_t i = 0; i < prompts[0].size(); ++i) logit_rows.push_back(int32_t(i));
  const int64_t first_sample_row = int64_t(logit_rows.size());
  for (int s = 0; s < batch_size; ++s) {
    segments.push_back({s, 0, int(prompts[size_t(s)].size())});
    tokens.insert(tokens.end(), prompts[size_t(s)].begin(), prompts[size_t(s)].end());
    logit_rows.push_back(int32_t(tokens.size() - 1));
  }
  result.prompt_tokens = int64_t(tokens.size());
  std::vector<float> logits = forward(tokens, BatchLayout(segments), logit_rows);
  result.prefill_s = seconds_since(start);
  if (request.keep_prompt_logits)
    result.prompt_logits.assign(logits.begin(), logits.begin() + first_sample_row * vocab);
  if (request.max_new_tokens > 0) {
    std::vector<int> all(static_cast<size_t>(batch_size));
    for (int s = 0; s < batch_size; ++s) all[size_t(s)] = s;
    sample_all(all, logits, first_sample_row);
  }
  result.ttft_s = seconds_since(start);

  // Decode: one token per live sequence per step.
  const auto decode_start = std::chrono::steady_clock::now();
  while (!live.empty()) {
    const auto step_start = std::chrono::steady_clock::now();
    tokens.clear();
    segments.clear();
    logit_rows.clear();
    for (int s : live) {
      const auto& produced = result.generated[size_t(s)];
      segments.push_back({s, int(prompts[size_t(s)].size() + produced.size() - 1), 1});
      tokens.push_back(produced.back());
      logit_rows.push_back(int32_t(tokens.size() - 1));
    }
    logits = forward(tokens, BatchLayout(segments), logit_rows);
    result.decode_tokens += int64_t(live.size());
    sample_all(std::vector<int>(live), logits, 0);
    result.step_s.push_back(seconds_since(step_start));
  }
  result.decode_s = seconds_since(decode_start);
  return result;
}

}  // namespace shardlm
