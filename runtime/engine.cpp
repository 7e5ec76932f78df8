#include "runtime/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Engine::Engine(Backend& backend, ParallelContext& ctx, ModelConfig config, const Layout& prefill,
               const Layout& decode, ModelWeights weights)
    : backend_(backend),
      ctx_(ctx),
      ops_(backend, ctx),
      config_(std::move(config)),
      prefill_axes_(PhaseAxes::from_layout(prefill)),
      decode_axes_(PhaseAxes::from_layout(decode)),
      weights_(std::move(weights)),
      rope_(backend, config_) {}

std::vector<KVCacheLayer> Engine::allocate_cache(const PhaseAxes& axes, int64_t capacity) {
  const auto [first, end] = ctx_.block(num_slots_, axes.attention_rows());
  const Shape shape = {end - first, config_.num_kv_heads / ctx_.size(axes.attention_kv_heads()),
                       std::max<int64_t>(capacity, 1), config_.head_dim};
  std::vector<KVCacheLayer> cache;
  for (int64_t layer = 0; layer < config_.num_layers; ++layer)
    cache.push_back({backend_.alloc(shape, DType::F32), backend_.alloc(shape, DType::F32)});
  return cache;
}

void Engine::reshard_cache(const KVCacheLayer& from, const KVCacheLayer& to) {
  const PhaseAxes& p = prefill_axes_;
  const int64_t kv = config_.num_kv_heads, from_capacity = from.k.dim(2), to_capacity = to.k.dim(2);
  const int64_t row = from_capacity * config_.head_dim;  // one (slot, kv head)
  std::vector<int64_t> slot_counts;
  for (int m = 0; m < ctx_.size(p.attention_rows()); ++m) {
    const auto [first, end] = ctx_.block(num_slots_, p.attention_rows(), m);
    slot_counts.push_back(end - first);
  }
  const auto [first, end] = ctx_.block(num_slots_, decode_axes_.attention_rows());
  const int64_t to_heads = to.k.dim(1);
  const int64_t head_begin = ctx_.index(decode_axes_.attention_kv_heads()) * to_heads;
  for (auto [src, dst] : {std::pair{from.k, to.k}, std::pair{from.v, to.v}}) {
    // Every rank assembles the whole prefill cache, then keeps its part.
    const Tensor local = src.reshaped({src.dim(0), src.dim(1) * row});
    const Tensor all = ops_.gather_rows(ops_.gather_cols(local, p.attention_kv_heads()),
                                        p.attention_rows(), slot_counts)
                           .reshaped({num_slots_ * kv, row});
    const Tensor target = dst.reshaped({dst.dim(0) * to_heads, to_capacity * config_.head_dim});
    for (int64_t slot = first; slot < end; ++slot)
      backend_.copy_2d(all, slot * kv + head_begin, 0, target, (slot - first) * to_heads, 0,
                       to_heads, row);
  }
}

std::vector<float> Engine::forward(Phase phase, const std::vector<int32_t>& tokens,
                                   const BatchLayout& batch,
                                   const std::vector<int32_t>& logit_rows) {
  const PhaseAxes& a = phase == Phase::kPrefill ? prefill_axes_ : decode_axes_;
  const std::vector<KVCacheLayer>& cache =
      phase == Phase::kPrefill && !prefill_cache_.empty() ? prefill_cache_ : cache_;
  const int64_t total_tokens = int64_t(tokens.size());

  // Where this rank's rows are: at rest, and for attention.
  const RowSplit rest = split_rows(ctx_, batch, num_slots_, a.batch);
  const int rest_member = ctx_.index(a.batch);
  const int64_t row_begin = rest.token_begin[size_t(rest_member)];
  const int64_t row_count = rest.token_count[size_t(rest_member)];
  const RowSplit attention = split_rows(ctx_, batch, num_slots_, a.attention_rows());
  const int attention_member = ctx_.index(a.attention_rows());
  BlockRows rows{local_batch(batch, rest, rest_member),
                 local_batch(batch, attention, attention_member),
                 {},
                 {},
                 0};
  if (a.batch_attention()) {
    auto sub_counts = [&](const std::string& inner, const RowSplit& split) {
      std::vector<int64_t> counts;
      const int n = ctx_.size(inner);
      for (int j = 0; j < n; ++j) counts.push_back(split.token_count[size_t(rest_member * n + j)]);
      return counts;
    };
    rows.heads_split = sub_counts(a.heads, attention);
    const RowSplit kv_rows = split_rows(ctx_, batch, num_slots_, a.batch + a.kv_heads);
    rows.kv_split = sub_counts(a.kv_heads, kv_rows);
    rows.kv_slice_begin = attention.token_begin[size_t(attention_member)] -
                          kv_rows.token_begin[size_t(ctx_.index(a.batch + a.kv_heads))];
  }
  const BlockContext block{backend_, ops_, ctx_, config_, a, rope_, rows};

  // Prologue: each rank looks up its E slice of every token; layouts that
  // split the batch assemble whole rows and keep their own.
  Tensor embedded = backend_.alloc({total_tokens, weights_.embed_tokens.local.dim(1)}, DType::F32);
  backend_.embedding(weights_.embed_tokens.local, tokens.data(), embedded);
  Tensor residual;
  if (a.batch.empty() && a.residual_e == a.embedding_e) {
    residual = embedded;
  } else {
    const Tensor full = ops_.gather_cols(embedded, a.embedding_e).rows(row_begin, row_count);
    residual =
        backend_.alloc({row_count, config_.hidden_size / ctx_.size(a.residual_e)}, DType::F32);
    backend_.copy_2d(ops_.slice_cols(full, a.residual_e), 0, 0, residual, 0, 0, row_count,
                     residual.dim(1));
  }

  for (size_t layer = 0; layer < weights_.layers.size(); ++layer)
    run_decoder_block(block, weights_.layers[layer], cache[layer], residual);

  // Epilogue: whole rows of the final norm on every rank, this rank's
  // vocabulary slice of the logits, then all of them everywhere.
  const Tensor normed = sharded_rmsnorm(block, residual, weights_.final_norm);
  const Tensor all_rows =
      ops_.gather_rows(ops_.gather_cols(normed, a.residual_e), a.batch, rest.token_count);
  const int64_t selected_rows = int64_t(logit_rows.size());
  Tensor selected = backend_.alloc({selected_rows, config_.hidden_size}, DType::F32);
  backend_.embedding(all_rows, logit_rows.data(), selected);  // a row gather
  Tensor local_logits = backend_.alloc({selected_rows, weights_.lm_head.local.dim(0)}, DType::F32);
  backend_.matmul(selected, weights_.lm_head.local, local_logits, false);
  const Tensor logits = ops_.gather_cols(local_logits, a.vocab);
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
        throw DataError(
            fmt::format("token id {} (prompt {}, position {}) is outside the vocabulary "
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
  num_slots_ = batch_size;
  cache_ = allocate_cache(decode_axes_, context);
  // Prefill writes the decode cache directly when both shard attention alike.
  const bool shared_cache = prefill_axes_.attention_rows() == decode_axes_.attention_rows() &&
                            prefill_axes_.attention_kv_heads() == decode_axes_.attention_kv_heads();
  prefill_cache_.clear();
  if (!shared_cache) prefill_cache_ = allocate_cache(prefill_axes_, int64_t(longest));

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
      if (request.on_token) request.on_token(s, token);
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
  std::vector<float> logits = forward(Phase::kPrefill, tokens, BatchLayout(segments), logit_rows);
  for (size_t layer = 0; layer < prefill_cache_.size(); ++layer)
    reshard_cache(prefill_cache_[layer], cache_[layer]);
  prefill_cache_.clear();
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
    logits = forward(Phase::kDecode, tokens, BatchLayout(segments), logit_rows);
    result.decode_tokens += int64_t(live.size());
    sample_all(std::vector<int>(live), logits, 0);
    result.step_s.push_back(seconds_since(step_start));
  }
  result.decode_s = seconds_since(decode_start);
  return result;
}

}  // namespace shardlm
