#include "runtime/engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <numeric>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Sends waiting beyond this many are completed before a new one starts, so
// a stage running ahead of the next does not pile up buffers without bound.
constexpr size_t kMaxPendingSends = 64;

}  // namespace

StageInfo StageInfo::of(const ParallelContext& ctx, const StageSplit& split) {
  StageInfo s;
  s.stage = ctx.stage();
  s.stages = split.stages();
  s.first_layer = split.first_layer(s.stage);
  if (s.stage > 0) s.prev_rank = ctx.rank_in_stage(s.stage - 1);
  if (s.stage + 1 < s.stages) s.next_rank = ctx.rank_in_stage(s.stage + 1);
  s.first_rank = ctx.rank_in_stage(0);
  s.last_rank = ctx.rank_in_stage(s.stages - 1);
  return s;
}

// Where this rank's rows sit for one micro-batch, at rest and in attention.
struct Engine::Pass {
  Phase phase = Phase::kPrefill;
  const PhaseAxes* axes = nullptr;
  const std::vector<KVCacheLayer>* cache = nullptr;
  RowSplit rest;
  int64_t row_begin = 0, row_count = 0;
  BlockRows rows;
};

Engine::Engine(Backend& backend, ParallelContext& ctx, ModelConfig config, const Layout& prefill,
               const Layout& decode, ModelWeights weights, StageInfo stage)
    : backend_(backend),
      ctx_(ctx),
      ops_(backend, ctx),
      config_(std::move(config)),
      prefill_axes_(PhaseAxes::from_layout(prefill)),
      decode_axes_(PhaseAxes::from_layout(decode)),
      weights_(std::move(weights)),
      rope_(config_),
      stage_(stage) {
  if (stage_.stages == 1) stage_.first_rank = stage_.last_rank = ctx.rank();
}

std::vector<KVCacheLayer> Engine::allocate_cache(const PhaseAxes& axes, int64_t capacity) {
  const auto [first, end] = ctx_.block(num_slots_, axes.attention_rows());
  const Shape shape = {end - first, config_.num_kv_heads / ctx_.size(axes.attention_kv_heads()),
                       std::max<int64_t>(capacity, 1), config_.head_dim};
  std::vector<KVCacheLayer> cache;
  for (size_t layer = 0; layer < weights_.layers.size(); ++layer)
    cache.push_back({backend_.alloc_kv_cache(shape), backend_.alloc_kv_cache(shape)});
  return cache;
}

void Engine::reshard_cache(const KVCacheLayer& from, const KVCacheLayer& to) {
  const PhaseAxes& p = prefill_axes_;
  const int64_t kv = config_.num_kv_heads, from_capacity = from.k.dim(2), to_capacity = to.k.dim(2);
  // One (slot, kv head) is a row of the cache's own dtype: the collectives
  // move F32, BF16 and F16 alike.
  const int64_t row = from_capacity * config_.head_dim, to_row = to_capacity * config_.head_dim;
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
    const Tensor target = dst.reshaped({dst.dim(0) * to_heads, to_row});
    for (int64_t slot = first; slot < end; ++slot)
      backend_.copy_2d(all, slot * kv + head_begin, 0, target, (slot - first) * to_heads, 0,
                       to_heads, row);
  }
}

Engine::Pass Engine::plan_pass(Phase phase, const BatchLayout& batch) {
  Pass p;
  p.phase = phase;
  p.axes = phase == Phase::kPrefill ? &prefill_axes_ : &decode_axes_;
  p.cache = phase == Phase::kPrefill && !prefill_cache_.empty() ? &prefill_cache_ : &cache_;
  const PhaseAxes& a = *p.axes;
  p.rest = split_rows(ctx_, batch, num_slots_, a.batch);
  const int rest_member = ctx_.index(a.batch);
  p.row_begin = p.rest.token_begin[size_t(rest_member)];
  p.row_count = p.rest.token_count[size_t(rest_member)];
  const RowSplit attention = split_rows(ctx_, batch, num_slots_, a.attention_rows());
  const int attention_member = ctx_.index(a.attention_rows());
  p.rows.at_rest = local_batch(batch, p.rest, rest_member);
  p.rows.attention = local_batch(batch, attention, attention_member);
  if (a.batch_attention()) {
    auto sub_counts = [&](const std::string& inner, const RowSplit& split) {
      std::vector<int64_t> counts;
      const int n = ctx_.size(inner);
      for (int j = 0; j < n; ++j) counts.push_back(split.token_count[size_t(rest_member * n + j)]);
      return counts;
    };
    p.rows.heads_split = sub_counts(a.heads, attention);
    const RowSplit kv_rows = split_rows(ctx_, batch, num_slots_, a.batch + a.kv_heads);
    p.rows.kv_split = sub_counts(a.kv_heads, kv_rows);
    p.rows.kv_slice_begin = attention.token_begin[size_t(attention_member)] -
                            kv_rows.token_begin[size_t(ctx_.index(a.batch + a.kv_heads))];
  }
  p.rows.rope = rope_.rows_for(backend_, p.rows.at_rest);
  return p;
}

// Prologue: each rank looks up its E slice of every token; layouts that
// split the batch assemble whole rows and keep their own.
Tensor Engine::embed(const Pass& p, const std::vector<int32_t>& tokens) {
  const PhaseAxes& a = *p.axes;
  Tensor embedded = backend_.alloc({int64_t(tokens.size()), weights_.embed_tokens.local.dim(1)},
                                   backend_.activation_dtype());
  backend_.embedding(weights_.embed_tokens.local, tokens.data(), embedded);
  if (a.batch.empty() && a.residual_e == a.embedding_e) return embedded;
  const Tensor full = ops_.gather_cols(embedded, a.embedding_e).rows(p.row_begin, p.row_count);
  Tensor residual =
      backend_.alloc({p.row_count, config_.hidden_size / ctx_.size(a.residual_e)}, full.dtype());
  backend_.copy_2d(ops_.slice_cols(full, a.residual_e), 0, 0, residual, 0, 0, p.row_count,
                   residual.dim(1));
  return residual;
}

Tensor Engine::run_layers(const Pass& p, const Tensor& residual) {
  const BlockContext block{backend_, ops_, ctx_, config_, *p.axes, p.rows};
  Tensor sums;  // each layer's output sums of squares, when it made them, for the next norm
  for (size_t i = 0; i < weights_.layers.size(); ++i)
    sums = run_decoder_block(block, stage_.first_layer + int64_t(i), weights_.layers[i],
                             (*p.cache)[i], residual, sums);
  return sums;
}

// Epilogue: whole rows of the final norm on every rank, this rank's
// vocabulary slice of the logits, then all of them everywhere.
Tensor Engine::head(const Pass& p, const Tensor& residual, const Tensor& residual_sums,
                    const std::vector<int32_t>& logit_rows) {
  const PhaseAxes& a = *p.axes;
  const BlockContext block{backend_, ops_, ctx_, config_, a, p.rows};
  const Tensor normed = sharded_rmsnorm(block, residual, weights_.final_norm, residual_sums);
  const Tensor all_rows =
      ops_.gather_rows(ops_.gather_cols(normed, a.residual_e), a.batch, p.rest.token_count);
  const int64_t selected_rows = int64_t(logit_rows.size());
  Tensor selected = backend_.alloc({selected_rows, config_.hidden_size}, all_rows.dtype());
  backend_.embedding(all_rows, logit_rows.data(), selected);  // a row gather
  // Logits are F32 whatever the activations: sampling compares them.
  Tensor local_logits = backend_.alloc({selected_rows, weights_.lm_head.local.dim(0)}, DType::F32);
  backend_.matmul(selected, weights_.lm_head.local, local_logits, false);
  return ops_.gather_cols(local_logits, a.vocab);
}

void Engine::send_header(int to, const StageHeader& header, const void* payload, size_t bytes) {
  Communicator& comm = ctx_.world_comm();
  while (pending_.size() >= kMaxPendingSends) {
    pending_.front().wait();
    pending_.pop_front();
  }
  std::vector<char> buffer(sizeof header + bytes);
  std::memcpy(buffer.data(), &header, sizeof header);
  if (bytes) std::memcpy(buffer.data() + sizeof header, payload, bytes);
  // The header goes alone so the receiver learns the payload's size. Both
  // parts come from one buffer, owned by the last of the two sends: sends
  // are waited for in order, so it outlives the first.
  std::function<void()> header_sent = comm.isend(buffer.data(), sizeof header, to);
  if (!bytes) {
    pending_.push_back({std::move(header_sent), std::move(buffer), {}});
    return;
  }
  std::function<void()> payload_sent = comm.isend(buffer.data() + sizeof header, bytes, to);
  pending_.push_back({std::move(header_sent), {}, {}});
  pending_.push_back({std::move(payload_sent), std::move(buffer), {}});
}

StageHeader Engine::recv_header(int from, std::vector<char>& payload) {
  Communicator& comm = ctx_.world_comm();
  StageHeader header;
  comm.recv(&header, sizeof header, from);
  // A batch carries its segments and the residual (unless it comes over the
  // device link), tokens their triples.
  size_t bytes = 0;
  if (header.kind == StageMessageKind::kBatch || header.kind == StageMessageKind::kTokens)
    bytes = size_t(header.count) * 3 * sizeof(int32_t) +
            (residual_on_device() ? 0 : size_t(header.floats) * sizeof(float));
  payload.resize(bytes);
  if (bytes) comm.recv(payload.data(), bytes, from);
  return header;
}

// (sequence-like) int32 triples at the front of a payload.
static std::vector<std::array<int32_t, 3>> triples(const std::vector<char>& payload,
                                                   int32_t count) {
  std::vector<std::array<int32_t, 3>> out(static_cast<size_t>(count));
  std::memcpy(out.data(), payload.data(), out.size() * sizeof(out[0]));
  return out;
}

void Engine::drain_sends() {
  for (PendingSend& send : pending_) send.wait();
  pending_.clear();
}

void Engine::run_micro_batch(Phase phase, int64_t step, const std::vector<Segment>& segments,
                             const std::vector<int32_t>& tokens, const Tensor& received) {
  if (request_->on_micro_batch) request_->on_micro_batch(phase, step);
  const auto start = Clock::now();
  const Pass pass = plan_pass(phase, BatchLayout(segments));
  const Outputs outputs = stage_.is_last() ? outputs_of(phase, segments) : Outputs{};
  Tensor residual, logits;
  // The device work of the micro-batch: what a decode step may run as a graph.
  const auto forward = [&] {
    residual = stage_.is_first() ? embed(pass, tokens) : received;
    const Tensor residual_sums = run_layers(pass, residual);
    if (!outputs.logit_rows.empty())
      logits = head(pass, residual, residual_sums, outputs.logit_rows);
  };
  bool launched = false;
  if (phase == Phase::kDecode && step_graphs_)
    launched = run_step_graph(segments, forward);
  else
    forward();
  if (stage_.is_last()) {
    // A launched graph holds the step's collectives, which no communicator
    // waits for: the wait for the step's results (in sample) is watched instead.
    const ParallelContext::DeviceWait wait(ctx_, launched ? "decode step (CUDA graph)" : nullptr);
    if (!outputs.logit_rows.empty()) finish_micro_batch(outputs, logits);
  } else {
    // This rank's shard of the residual goes to the rank with the same
    // (x, y, z) in the next stage: the split at rest is the same there.
    std::vector<int32_t> segs;
    for (const Segment& s : segments) segs.insert(segs.end(), {s.slot, s.start_pos, s.num_tokens});
    StageHeader header{StageMessageKind::kBatch, int32_t(phase), int32_t(step),
                       int32_t(segments.size()), residual.numel()};
    const size_t segment_bytes = segs.size() * sizeof(int32_t);
    if (residual_on_device()) {
      // The header and segments over MPI, then the residual device to device,
      // queued behind the kernels that made it; the tensor is kept until sent.
      send_header(stage_.next_rank, header, segs.data(), segment_bytes);
      const ParallelContext::Link link = ctx_.device_link(stage_.next_rank);
      pending_.push_back(
          {link.comm.isend(residual.raw(), residual.nbytes(), link.peer), {}, residual});
    } else {
      // Segments (int32) then the residual as F32 (16-bit activations widen
      // exactly; the host path is the CPU's), which stays 4-byte aligned.
      std::vector<char> payload(segment_bytes + size_t(residual.numel()) * sizeof(float));
      std::memcpy(payload.data(), segs.data(), segment_bytes);
      backend_.copy_to_host(residual, reinterpret_cast<float*>(payload.data() + segment_bytes));
      send_header(stage_.next_rank, header, payload.data(), payload.size());
    }
  }
  *busy_s_ += seconds_since(start);
}

bool Engine::run_step_graph(const std::vector<Segment>& segments,
                            const std::function<void()>& forward) {
  // Steps of one set of sequences (slots) issue the same operations on the
  // same shapes; only the tokens and positions they bring differ.
  std::vector<int64_t> key;
  for (const Segment& s : segments) key.push_back(s.slot);
  const StepGraphMode mode = backend_.begin_step_graph(key);
  try {
    forward();
    backend_.launch_step_graph();
  } catch (const std::exception& e) {
    // A step abandoned while captured or replayed has not run: its operations
    // were recorded, or checked and skipped. Another error while capturing
    // says that this shape cannot be captured: it stays eager.
    const bool abandoned = dynamic_cast<const StepGraphAbandoned*>(&e) != nullptr;
    if (!abandoned && mode != StepGraphMode::kCapture) throw;
    backend_.abandon_step_graph(e.what(), !abandoned);
    ++result_->graph_steps_eager;
    forward();
    return false;
  }
  if (mode == StepGraphMode::kCapture) {
    ++result_->graph_steps_captured;
    return true;
  }
  if (mode == StepGraphMode::kReplay) {
    ++result_->graph_steps_replayed;
    return true;
  }
  ++result_->graph_steps_eager;
  return false;
}

Engine::Outputs Engine::outputs_of(Phase phase, const std::vector<Segment>& segments) const {
  const GenerationRequest& req = *request_;
  const bool keep_prompt = phase == Phase::kPrefill && req.keep_prompt_logits;
  Outputs out;
  std::vector<int32_t> sample_rows;
  int32_t row = 0;
  for (const Segment& seg : segments) {
    if (keep_prompt && seg.slot == 0)
      for (int t = 0; t < seg.num_tokens; ++t) out.logit_rows.push_back(row + t);
    const bool completes = phase == Phase::kDecode || seg.start_pos + seg.num_tokens ==
                                                          int(req.prompts[size_t(seg.slot)].size());
    if (completes && req.max_new_tokens > 0) {
      sample_rows.push_back(row + seg.num_tokens - 1);
      out.sampled.push_back(seg.slot);
    }
    row += seg.num_tokens;
  }
  out.prompt_rows = out.logit_rows.size();
  out.logit_rows.insert(out.logit_rows.end(), sample_rows.begin(), sample_rows.end());
  return out;
}

void Engine::finish_micro_batch(const Outputs& outputs, const Tensor& logits) {
  const GenerationRequest& req = *request_;
  const size_t prompt_rows = outputs.prompt_rows;
  const std::vector<int>& sampled = outputs.sampled;
  // The logits stay on the backend: only the rows the request keeps come to
  // the host, and sampling returns ids.
  const int64_t vocab = config_.vocab_size;
  auto keep_rows = [&](std::vector<float>& into, int64_t first, int64_t count) {
    const size_t at = into.size();
    into.resize(at + size_t(count * vocab));
    backend_.copy_to_host(logits.rows(first, count), into.data() + at);
  };
  if (prompt_rows) keep_rows(result_->prompt_logits, 0, int64_t(prompt_rows));
  // One draw per sampled row from its sequence's generator, in row order, as
  // sample_token draws (none when greedy): a seed gives the same tokens.
  const bool draws = req.sampling.temperature > 0.f;
  std::vector<double> uniforms(sampled.size(), 0.0);
  for (size_t i = 0; i < sampled.size(); ++i)
    if (draws) uniforms[i] = sampling_draw(rngs_[size_t(sampled[i])]);
  std::vector<int32_t> ids(sampled.size());
  if (!sampled.empty())
    backend_.sample(logits.rows(int64_t(prompt_rows), int64_t(sampled.size())), req.sampling,
                    uniforms.data(), ids.data());
  std::vector<SampledToken> tokens;
  for (size_t i = 0; i < sampled.size(); ++i) {
    const int s = sampled[i];
    if (s == 0 && req.keep_step_logits)
      keep_rows(result_->step_logits, int64_t(prompt_rows + i), 1);
    const int32_t token = ids[i];
    const int produced = ++sampled_[size_t(s)];
    const bool stopped =
        std::find(req.stop_ids.begin(), req.stop_ids.end(), token) != req.stop_ids.end();
    tokens.push_back({s, token, int32_t(stopped || produced >= req.max_new_tokens)});
  }
  if (stage_.is_first()) {
    apply_tokens(tokens);
  } else {
    send_header(stage_.first_rank, {StageMessageKind::kTokens, 0, 0, int32_t(tokens.size()), 0},
                tokens.data(), tokens.size() * sizeof(SampledToken));
  }
}

void Engine::apply_tokens(const std::vector<SampledToken>& tokens) {
  for (const SampledToken& t : tokens) {
    result_->generated[size_t(t.sequence)].push_back(t.token);
    if (request_->on_token) request_->on_token(t.sequence, t.token);
    ++known_tokens_[size_t(t.sequence)];
    if (t.finished) finished_[size_t(t.sequence)] = true;
  }
}

void Engine::wait_for_tokens(const std::vector<int>& sequences, size_t count) {
  auto ready = [&] {
    return std::all_of(sequences.begin(), sequences.end(), [&](int s) {
      return finished_[size_t(s)] || size_t(known_tokens_[size_t(s)]) >= count;
    });
  };
  std::vector<char> payload;
  while (!ready()) {
    if (stage_.is_last()) throw std::logic_error("pipeline: tokens awaited on the last stage");
    const StageHeader header = recv_header(stage_.last_rank, payload);
    if (header.kind != StageMessageKind::kTokens)
      throw std::logic_error("pipeline: the last stage sent something other than tokens");
    std::vector<SampledToken> tokens;
    for (const auto& [sequence, token, finished] : triples(payload, header.count))
      tokens.push_back({sequence, token, finished});
    apply_tokens(tokens);
  }
}

void Engine::end_prefill() {
  const auto start = Clock::now();
  for (size_t layer = 0; layer < prefill_cache_.size(); ++layer)
    reshard_cache(prefill_cache_[layer], cache_[layer]);
  prefill_cache_.clear();
  if (!stage_.is_last())
    send_header(stage_.next_rank, {StageMessageKind::kEndOfPrefill}, nullptr, 0);
  *busy_s_ += seconds_since(start);
  busy_s_ = &result_->decode_busy_s;
}

void Engine::follow() {
  std::vector<char> payload;
  while (true) {
    const StageHeader header = recv_header(stage_.prev_rank, payload);
    if (header.kind == StageMessageKind::kDone) {
      if (!stage_.is_last()) send_header(stage_.next_rank, header, nullptr, 0);
      return;
    }
    if (header.kind == StageMessageKind::kEndOfPrefill) {
      end_prefill();
      continue;
    }
    if (header.kind != StageMessageKind::kBatch)
      throw std::logic_error("pipeline: unexpected message from the previous stage");
    std::vector<Segment> segments;
    for (const auto& [slot, start, count] : triples(payload, header.count))
      segments.push_back({slot, start, count});
    const Phase phase = Phase(header.phase);
    const PhaseAxes& a = phase == Phase::kPrefill ? prefill_axes_ : decode_axes_;
    const int64_t width = config_.hidden_size / ctx_.size(a.residual_e);
    Tensor residual = backend_.alloc({header.floats / width, width}, backend_.activation_dtype());
    if (residual_on_device()) {
      const ParallelContext::Link link = ctx_.device_link(stage_.prev_rank);
      link.comm.recv(residual.raw(), residual.nbytes(), link.peer);
    } else {
      backend_.copy_from_host(reinterpret_cast<const float*>(
                                  payload.data() + size_t(header.count) * 3 * sizeof(int32_t)),
                              residual);
    }
    run_micro_batch(phase, header.step, segments, {}, residual);
  }
}

int64_t check_request(const ModelConfig& config, const std::vector<std::vector<int32_t>>& prompts,
                      int64_t max_new_tokens) {
  if (prompts.empty()) throw UsageError("no prompt given");
  if (max_new_tokens < 0)
    throw UsageError(fmt::format("--max-new-tokens must be >= 0, got {}", max_new_tokens));
  size_t longest = 0;
  for (size_t s = 0; s < prompts.size(); ++s) {
    if (prompts[s].empty()) throw UsageError(fmt::format("prompt {} is empty", s));
    longest = std::max(longest, prompts[s].size());
    for (size_t i = 0; i < prompts[s].size(); ++i)
      if (prompts[s][i] < 0 || prompts[s][i] >= config.vocab_size)
        throw DataError(
            fmt::format("token id {} (prompt {}, position {}) is outside the vocabulary "
                        "[0, {})",
                        prompts[s][i], s, i, config.vocab_size));
  }
  const int64_t context = int64_t(longest) + max_new_tokens;
  if (context > config.context_length())
    throw UsageError(fmt::format(
        "prompt length {} + --max-new-tokens {} = {} exceeds the model's context length {} "
        "(max_position_embeddings = {}{})",
        longest, max_new_tokens, context, config.context_length(), config.max_position_embeddings,
        config.rope_scaling.type == RopeType::kDynamic ? " times the dynamic RoPE factor" : ""));
  return context;
}

GenerationResult Engine::generate(const GenerationRequest& request) {
  const auto& prompts = request.prompts;
  const int64_t context = check_request(config_, prompts, request.max_new_tokens);
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());

  const int batch_size = int(prompts.size());
  num_slots_ = batch_size;
  rope_.cover(backend_, context);
  cache_ = allocate_cache(decode_axes_, context);
  // Prefill writes the decode cache directly when both shard attention alike.
  const bool shared_cache = prefill_axes_.attention_rows() == decode_axes_.attention_rows() &&
                            prefill_axes_.attention_kv_heads() == decode_axes_.attention_kv_heads();
  prefill_cache_.clear();
  if (!shared_cache) prefill_cache_ = allocate_cache(prefill_axes_, int64_t(longest));

  GenerationResult result;
  result.vocab_size = config_.vocab_size;
  result.generated.resize(size_t(batch_size));
  request_ = &request;
  result_ = &result;
  busy_s_ = &result.prefill_busy_s;
  rngs_.clear();
  for (int s = 0; s < batch_size; ++s) rngs_.emplace_back(request.sampling.seed + uint64_t(s));
  known_tokens_.assign(size_t(batch_size), 0);
  sampled_.assign(size_t(batch_size), 0);
  finished_.assign(size_t(batch_size), request.max_new_tokens == 0);
  // Decode steps as graphs: a device backend, one pipeline stage (stages
  // exchange messages over MPI within a step, which a graph cannot hold).
  step_graphs_ = false;
  if (request.step_graphs && backend_.device() != Device::CPU) {
    if (stage_.stages > 1)
      result.step_graphs_note =
          "decode steps run eagerly: pipeline stages exchange messages over MPI within a step";
    else
      step_graphs_ = result.step_graphs = true;
  }
  const int micro_batches = request.micro_batches > 0 ? request.micro_batches : stage_.stages;
  std::vector<int64_t> lengths;
  for (const auto& p : prompts) lengths.push_back(int64_t(p.size()));
  const auto prefill_batches = prefill_micro_batches(lengths, micro_batches);
  const auto groups = decode_groups(batch_size, micro_batches);
  result.prefill_micro_batches = int(prefill_batches.size());
  result.decode_micro_batches = int(groups.size());
  result.prompt_tokens = std::accumulate(lengths.begin(), lengths.end(), int64_t{0});

  if (!stage_.is_first()) {
    follow();
    drain_sends();
  } else {
    // Prefill: the micro-batches flow through the stages, filling and
    // draining the pipeline once.
    const auto start = Clock::now();
    std::vector<int> everyone(static_cast<size_t>(batch_size));
    std::iota(everyone.begin(), everyone.end(), 0);
    for (size_t index = 0; index < prefill_batches.size(); ++index) {
      const std::vector<Segment>& segments = prefill_batches[index];
      std::vector<int32_t> tokens;
      for (const Segment& s : segments) {
        const auto& p = prompts[size_t(s.slot)];
        tokens.insert(tokens.end(), p.begin() + s.start_pos,
                      p.begin() + s.start_pos + s.num_tokens);
      }
      run_micro_batch(Phase::kPrefill, int64_t(index), segments, tokens, {});
    }
    end_prefill();
    wait_for_tokens(everyone, 1);
    result.prefill_s = result.ttft_s = seconds_since(start);

    // Decode: each group's step t follows its tokens of step t - 1 back from
    // the last stage; with as many groups as stages no stage waits.
    const auto decode_start = Clock::now();
    for (size_t step = 0;; ++step) {
      const auto step_start = Clock::now();
      bool any = false;
      for (const std::vector<int>& group : groups) {
        wait_for_tokens(group, step + 1);
        std::vector<Segment> segments;
        std::vector<int32_t> tokens;
        for (int s : group) {
          if (finished_[size_t(s)]) continue;
          const auto& produced = result.generated[size_t(s)];
          segments.push_back({s, int(prompts[size_t(s)].size() + step), 1});
          tokens.push_back(produced[step]);
        }
        if (segments.empty()) continue;
        any = true;
        result.decode_tokens += int64_t(segments.size());
        run_micro_batch(Phase::kDecode, int64_t(step), segments, tokens, {});
      }
      if (!any) break;
      result.step_s.push_back(seconds_since(step_start));
    }
    if (!stage_.is_last()) send_header(stage_.next_rank, {StageMessageKind::kDone}, nullptr, 0);
    drain_sends();
    result.decode_s = seconds_since(decode_start);
  }

  if (step_graphs_) {
    backend_.drop_step_graphs();  // their arenas and pinned slots
    if (result.graph_steps_eager > 0) result.step_graphs_note = backend_.step_graph_note();
    step_graphs_ = false;
  }

  // Logits live on the last stage; the first stage reports them.
  if (stage_.stages > 1 && (request.keep_prompt_logits || request.keep_step_logits)) {
    Communicator& comm = ctx_.world_comm();
    for (std::vector<float>* v : {&result.prompt_logits, &result.step_logits}) {
      if (stage_.is_last()) {
        const int64_t size = int64_t(v->size());
        comm.send(&size, sizeof size, stage_.first_rank);
        comm.send(v->data(), v->size() * sizeof(float), stage_.first_rank);
      } else if (stage_.is_first()) {
        int64_t size = 0;
        comm.recv(&size, sizeof size, stage_.last_rank);
        v->resize(size_t(size));
        comm.recv(v->data(), v->size() * sizeof(float), stage_.last_rank);
      }
    }
  }
  request_ = nullptr;
  result_ = nullptr;
  return result;
}

}  // namespace shardlm
