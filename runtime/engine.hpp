#pragma once
// The engine: prefill over the prompts of a batch, then decode step by step
// with a KV cache, sampling each sequence's next token until it stops. Every
// rank of a tensor-parallel group runs the same engine on its shards; each
// phase runs in its own layout, and all ranks of a group sample the same
// tokens from the same (all-gathered) logits.
//
// With pipeline stages (the mesh's pp axis) each stage holds its own layers
// and their KV cache. The first stage drives one prefill/decode loop over
// micro-batches (runtime/pipeline.hpp): it embeds a micro-batch, runs its
// layers and sends its shard of the residual stream to the rank with the
// same (x, y, z) in the next stage; the last stage runs the head, samples,
// and sends the tokens back to the first. With one stage the same loop runs
// with nothing to send. Messages go over MPI; on a device backend with its
// collectives on the device the residual itself goes over NCCL between the
// two ranks (ParallelContext::device_link), without a trip through the host.
#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "models/decoder_block.hpp"
#include "models/model_config.hpp"
#include "models/model_weights.hpp"
#include "runtime/backend.hpp"
#include "runtime/parallel.hpp"
#include "runtime/pipeline.hpp"
#include "runtime/sampler.hpp"

namespace shardlm {

struct GenerationRequest {
  std::vector<std::vector<int32_t>> prompts;  // one per sequence, token ids
  int max_new_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;    // a sequence ends right after emitting one
  bool keep_prompt_logits = false;  // logits at every prompt position of sequence 0
  bool keep_step_logits = false;    // logits each token of sequence 0 was sampled from
  // Pipeline micro-batches (0: one per stage); see runtime/pipeline.hpp.
  int micro_batches = 0;
  // Called as a stage starts a micro-batch: prefill micro-batch `step`, or
  // decode step `step` (fault-injection tests).
  std::function<void(Phase phase, int64_t step)> on_micro_batch;
  // Called with (sequence, token) as each token is sampled, in order, so a
  // caller can stream text while decoding goes on.
  std::function<void(int, int32_t)> on_token;
  // Offer decode steps to the backend as graphs (--cuda-graphs): captured
  // once per set of sequences and replayed (the CUDA backend). Only with one
  // pipeline stage: stages exchange host messages (MPI) within a step.
  bool step_graphs = false;
};

struct GenerationResult {
  std::vector<std::vector<int32_t>> generated;  // new tokens only, stop id included
  int64_t vocab_size = 0;
  std::vector<float> prompt_logits;  // [prompt 0 length, vocab]
  std::vector<float> step_logits;    // [tokens generated for sequence 0, vocab]
  int64_t prompt_tokens = 0;         // all sequences
  int64_t decode_tokens = 0;         // tokens produced by decode steps, all sequences
  double prefill_s = 0;              // prefill, until the last stage has the last prompt token
  double ttft_s = 0;                 // start to first tokens sampled
  double decode_s = 0;               // all decode steps
  std::vector<double> step_s;        // each decode step (of all micro-batches)
  int prefill_micro_batches = 1, decode_micro_batches = 1;
  // This rank's time computing (not waiting for another stage) in each phase.
  double prefill_busy_s = 0, decode_busy_s = 0;
  // Decode steps as graphs (GenerationRequest::step_graphs): steps captured,
  // replayed, and run eagerly though offered (each set of sequences' first
  // step, and steps the backend abandoned); why graphs were not used, or
  // the backend's last reason for running a step eagerly.
  bool step_graphs = false;
  int64_t graph_steps_captured = 0, graph_steps_replayed = 0, graph_steps_eager = 0;
  std::string step_graphs_note;
};

// This rank's stage: which layers it holds and where its neighbours are.
struct StageInfo {
  int stage = 0, stages = 1;
  int64_t first_layer = 0;  // weights.layers[i] is layer first_layer + i
  // World ranks with this rank's (x, y, z) in the previous, next, first and
  // last stage (-1 where there is none).
  int prev_rank = -1, next_rank = -1, first_rank = -1, last_rank = -1;
  bool is_first() const { return stage == 0; }
  bool is_last() const { return stage == stages - 1; }
  static StageInfo of(const ParallelContext& ctx, const StageSplit& split);
};

// Checks a request against the model before any work: prompts present and
// non-empty, ids inside the vocabulary (DataError), the longest prompt + new
// tokens within the model's context (UsageError). Returns that context.
int64_t check_request(const ModelConfig& config, const std::vector<std::vector<int32_t>>& prompts,
                      int64_t max_new_tokens);

class Engine {
 public:
  // `prefill` and `decode` are the layouts of the two phases on ctx's mesh;
  // `weights` were loaded as they store them, for the layers of `stage`.
  Engine(Backend& backend, ParallelContext& ctx, ModelConfig config, const Layout& prefill,
         const Layout& decode, ModelWeights weights, StageInfo stage = {});
  // Checks ids and lengths (throws DataError / UsageError), then generates.
  // With pipeline stages, generated ids, timings and logits are complete on
  // the first stage; busy times are every rank's own.
  GenerationResult generate(const GenerationRequest& request);
  const ModelConfig& config() const { return config_; }

 private:
  struct Pass;  // where this rank's rows sit for one micro-batch
  Pass plan_pass(Phase phase, const BatchLayout& batch);
  Tensor embed(const Pass& pass, const std::vector<int32_t>& tokens);
  // Returns the residual's sums of squares when the last layer made them
  // along (see run_decoder_block), else an empty tensor.
  Tensor run_layers(const Pass& pass, const Tensor& residual);
  // Logits of the rows in `logit_rows` of the micro-batch, [rows, vocab], on
  // the backend; `residual_sums` as run_layers returns them.
  Tensor head(const Pass& pass, const Tensor& residual, const Tensor& residual_sums,
              const std::vector<int32_t>& logit_rows);

  std::vector<KVCacheLayer> allocate_cache(const PhaseAxes& axes, int64_t capacity);
  // Copies a prefill cache in the prefill layout's sharding into the decode cache.
  void reshard_cache(const KVCacheLayer& from, const KVCacheLayer& to);

  // One micro-batch through this stage (and, on the last, the head and
  // sampling); `tokens` are read on the first stage only.
  void run_micro_batch(Phase phase, int64_t step, const std::vector<Segment>& segments,
                       const std::vector<int32_t>& tokens, const Tensor& received);
  // A decode step's device work (`forward`: embedding to logits) offered to
  // the backend as a graph (Backend::begin_step_graph); run again eagerly
  // when the backend abandons it. True when a graph was launched.
  bool run_step_graph(const std::vector<Segment>& segments, const std::function<void()>& forward);
  // The logit rows of a micro-batch on the last stage: the prompt rows kept
  // (prefill, sequence 0) first, then one row per sampled sequence.
  struct Outputs {
    std::vector<int32_t> logit_rows;
    size_t prompt_rows = 0;
    std::vector<int> sampled;  // the sequence of each sampled row
  };
  Outputs outputs_of(Phase phase, const std::vector<Segment>& segments) const;
  // The last stage's part: logits kept, sampling, tokens back to the first stage.
  void finish_micro_batch(const Outputs& outputs, const Tensor& logits);
  void end_prefill();
  // First stage: applies sampled tokens; waits for those of `sequences`.
  void apply_tokens(const std::vector<SampledToken>& tokens);
  void wait_for_tokens(const std::vector<int>& sequences, size_t count);
  // Stages after the first: follow the first stage's messages until done.
  void follow();

  // Messages between stages.
  void send_header(int to, const StageHeader& header, const void* payload, size_t bytes);
  StageHeader recv_header(int from, std::vector<char>& payload);
  void drain_sends();

  Backend& backend_;
  ParallelContext& ctx_;
  ShardOps ops_;
  ModelConfig config_;
  PhaseAxes prefill_axes_, decode_axes_;
  ModelWeights weights_;
  RopeTables rope_;
  StageInfo stage_;
  int64_t num_slots_ = 0;
  std::vector<KVCacheLayer> cache_;          // in the decode layout's sharding
  std::vector<KVCacheLayer> prefill_cache_;  // empty when the prefill layout shares it

  // State of one generate call.
  const GenerationRequest* request_ = nullptr;
  GenerationResult* result_ = nullptr;
  std::vector<std::mt19937_64> rngs_;  // last stage: one per sequence
  std::vector<int> sampled_;           // last stage: tokens sampled per sequence
  std::vector<int> known_tokens_;      // first stage: tokens received per sequence
  std::vector<bool> finished_;         // first stage: sequence has ended
  // The residual crosses a stage boundary device to device (NCCL) when the
  // collectives run on the device; else through the host over MPI.
  bool residual_on_device() const { return ctx_.device_collectives(); }
  struct PendingSend {
    std::function<void()> wait;
    std::vector<char> buffer;  // the data, kept until the send completes
    Tensor device_data;        // or the device tensor sent, kept as long
  };
  std::deque<PendingSend> pending_;  // boundary sends not yet waited for
  double* busy_s_ = nullptr;         // the phase's busy-time counter
  bool step_graphs_ = false;         // decode steps offered to the backend as graphs
};

}  // namespace shardlm
