// `shardlm generate`: load a checkpoint, prefill the prompts, decode.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "launch/backend_choice.hpp"
#include "launch/commands.hpp"
#include "launch/flags.hpp"
#include "launch/layout_choice.hpp"
#include "launch/memory_check.hpp"
#include "launch/prompt_text.hpp"
#include "models/model_weights.hpp"
#include "models/tokenizer.hpp"
#include "runtime/engine.hpp"
#include "runtime/errors.hpp"
#include "runtime/npy.hpp"
#include "runtime/output_file.hpp"
#include "runtime/parallel.hpp"

namespace shardlm {
namespace {

struct GenerateOptions {
  std::string model, prompt_ids, prompt_ids_file, dump_logits, dump_step_logits;
  std::vector<std::string> prompts;  // --prompt, text
  std::string prompt_file;
  std::optional<bool> stream;  // unset: stream when stdout is a terminal
  bool stream_flag = false, no_stream_flag = false;
  bool ignore_eos = false;
  int batch = 1, max_new_tokens = 16, top_k = 0, threads = 0, warmup = 0;
  double comm_timeout = 60;
  float temperature = 0.f, top_p = 1.f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;
  bool json = false, verbose = false;
  std::string mesh, weights, kv_dtype = default_kv_dtype_flag(), activations = "auto",
                             backend = "auto";
  std::string memory_limit;  // --memory-limit text; empty: the node's free memory
  LayoutFlags layouts{false, "", "", "", "", "cpu-local", false, {}};
  std::string plan = "pinned";
  std::string cuda_graphs = "on";
  int pp = 1, micro_batches = 0;
  bool pp_given = false;
  bool prompt_ids_given = false;  // --prompt-ids, even with empty text
  std::string pp_layers;
};

// Token ids separated by commas and/or whitespace. `where` names the flag or
// file line for the message; `make_error` picks usage (flag) or data (file).
template <typename Error>
std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  // Items are separated by one comma (with optional spaces) or by spaces alone.
  std::string normalized = text;
  for (char& c : normalized)
    if (std::isspace(static_cast<unsigned char>(c))) c = ' ';
  std::vector<int32_t> ids;
  size_t i = 0;
  auto skip_spaces = [&] {
    while (i < normalized.size() && normalized[i] == ' ') ++i;
  };
  skip_spaces();
  while (i < normalized.size()) {
    size_t end = normalized.find_first_of(", ", i);
    if (end == std::string::npos) end = normalized.size();
    const std::string item = normalized.substr(i, end - i);
    int64_t value = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() ||
        value < INT32_MIN || value > INT32_MAX)
      throw Error(fmt::format(
          "{}: \"{}\" is not a token id (expected integers separated by commas)", where, item));
    ids.push_back(int32_t(value));
    i = end;
    skip_spaces();
    if (i < normalized.size() && normalized[i] == ',') {
      ++i;
      skip_spaces();
      if (i == normalized.size())
        throw Error(fmt::format("{}: a comma with no token id after it", where));
    }
  }
  if (ids.empty()) throw Error(fmt::format("{}: no token ids", where));
  return ids;
}

// One prompt is repeated --batch times; several set the batch themselves.
template <typename Prompt>
void apply_batch(std::vector<Prompt>& prompts, const GenerateOptions& o, bool batch_given,
                 const std::string& source) {
  if (prompts.size() == 1) {
    prompts.resize(size_t(o.batch), prompts[0]);
  } else if (batch_given && size_t(o.batch) != prompts.size()) {
    throw UsageError(fmt::format("--batch {} disagrees with the {} prompts in {}", o.batch,
                                 prompts.size(), source));
  }
}

std::vector<std::vector<int32_t>> read_prompts(const GenerateOptions& o, bool batch_given) {
  std::vector<std::vector<int32_t>> prompts;
  if (o.prompt_ids_given) {
    prompts.push_back(parse_ids<UsageError>(o.prompt_ids, "--prompt-ids"));
  } else {
    std::ifstream in = open_input_file(o.prompt_ids_file, "--prompt-ids-file");
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (line.find_first_not_of(" \t\r,") == std::string::npos) continue;
      prompts.push_back(
          parse_ids<DataError>(line, fmt::format("{} line {}", o.prompt_ids_file, number)));
    }
    if (prompts.empty()) throw DataError(fmt::format("{}: holds no prompt", o.prompt_ids_file));
  }
  apply_batch(prompts, o, batch_given, o.prompt_ids_file);
  return prompts;
}

// Test hook: SHARDLM_FAULT=RANK:throw|segv|abort[:prefill|decode:N] makes that
// rank fail after loading (or when it starts prefill micro-batch N, or decode
// step N), while the others go on into their next collective or stage
// message; the job must still end promptly with the failing rank's message.
struct FaultSpec {
  int rank = -1;
  std::string kind, phase;
  int64_t step = 0;
};

FaultSpec fault_spec() {
  const char* spec = std::getenv("SHARDLM_FAULT");
  if (!spec) return {};
  std::vector<std::string> parts;
  std::string text = spec;
  for (size_t begin = 0;;) {
    const size_t colon = text.find(':', begin);
    parts.push_back(text.substr(begin, colon - begin));
    if (colon == std::string::npos) break;
    begin = colon + 1;
  }
  FaultSpec f;
  const UsageError malformed(
      fmt::format("SHARDLM_FAULT={}: expected RANK:throw|segv|abort[:prefill|decode:N]", spec));
  auto number = [&](const std::string& text) {
    int64_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) throw malformed;
    return value;
  };
  if (parts.size() < 2 || parts.size() == 3) throw malformed;
  f.rank = int(number(parts[0]));
  f.kind = parts[1];
  if (parts.size() > 3) {
    f.phase = parts[2];
    f.step = number(parts[3]);
  }
  return f;
}

void fail_now(const FaultSpec& f, int rank) {
  if (f.kind == "throw") throw std::runtime_error(fmt::format("injected fault on rank {}", rank));
  if (f.kind == "abort") std::abort();
  if (f.kind == "segv") std::raise(SIGSEGV);
}

// Peak resident memory of every rank, in MiB, on every rank.
std::vector<float> peak_rss_mb_per_rank(World& world) {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  const float mine = float(usage.ru_maxrss) / 1024.0f;  // Linux reports KiB
  std::vector<float> all(static_cast<size_t>(world.size()));
  world.all().all_gather(&mine, all.data(), 1);
  return all;
}

void run_generate(const GenerateOptions& o, bool batch_given) {
  if (!(o.temperature >= 0 && std::isfinite(o.temperature)))
    throw UsageError(
        fmt::format("--temperature must be a finite number >= 0, got {}", o.temperature));
  if (!(o.top_p > 0 && o.top_p <= 1))
    throw UsageError(fmt::format("--top-p must be in (0, 1], got {}", o.top_p));
  // Text prompts go through the model's tokenizer; the prompt file and the
  // tokenizer are checked before any weight is read.
  const bool text_mode = !o.prompts.empty() || !o.prompt_file.empty();
  std::optional<Tokenizer> tokenizer;
  std::vector<TextPrompt> texts;
  std::vector<std::vector<int32_t>> prompts;
  if (text_mode) {
    texts = read_text_prompts(o.prompts, o.prompt_file);
    tokenizer.emplace(Tokenizer::load(o.model));
    for (const TextPrompt& t : texts) prompts.push_back(encode_prompt(*tokenizer, t));
    apply_batch(texts, o, batch_given, o.prompt_file.empty() ? "--prompt" : o.prompt_file);
    apply_batch(prompts, o, batch_given, o.prompt_file.empty() ? "--prompt" : o.prompt_file);
  } else {
    prompts = read_prompts(o, batch_given);
  }
  if (o.stream.value_or(false) && (!text_mode || prompts.size() != 1 || o.json))
    throw UsageError("--stream needs one text prompt (--prompt or --prompt-file) and no --json");

  World& world = World::get();
  // Rank 0 writes the outputs: their paths are checked there, before any work.
  if (world.is_root()) {
    if (!o.dump_logits.empty()) check_output_file(o.dump_logits, "--dump-logits");
    if (!o.dump_step_logits.empty()) check_output_file(o.dump_step_logits, "--dump-step-logits");
  }
  if (world.size() % o.pp != 0)
    throw UsageError(fmt::format("--pp {} does not divide the job's {} ranks (mpirun -n {})", o.pp,
                                 world.size(), world.size()));
  Mesh mesh = mesh_flag(o.mesh, world.size() / o.pp);
  mesh.pp = o.pp;
  const auto load_start = std::chrono::steady_clock::now();
  const ModelConfig config = ModelConfig::load(o.model);
  const std::optional<DType> weight_dtype = parse_weight_dtype(o.weights);
  const DType kv_dtype = parse_kv_dtype(o.kv_dtype);
  const std::optional<DType> activation_dtype = parse_activation_dtype(o.activations);
  // Every rank of a node sees the same devices and plugin: an unusable
  // --backend is said once.
  const BackendKind backend_kind = resolve_backend(o.backend);
  size_t longest_prompt = 0;
  for (const auto& p : prompts) longest_prompt = std::max(longest_prompt, p.size());
  // Prompts against the model, on every rank alike, before anything is loaded.
  check_request(config, prompts, o.max_new_tokens);
  const Workload workload{int64_t(prompts.size()), int64_t(longest_prompt), o.max_new_tokens};
  const std::string weights_name(weight_dtype_name(
      weight_dtype.value_or(dtype_from_user(config.torch_dtype).value_or(DType::F32))));
  const bool mesh_pinned = !o.mesh.empty() || o.pp_given;
  LayoutFlags layout_flags = o.layouts;
  layout_flags.rank_nodes = world.node_of_ranks();
  // The planner prices the collectives in the dtype they will move.
  const std::string activations_name(
      weight_dtype_name(resolved_activation_dtype(backend_kind, activation_dtype)));
  LayoutChoice choice =
      choose_layouts(layout_flags, config, mesh, mesh_pinned, workload, weights_name,
                     std::string(weight_dtype_name(kv_dtype)), activations_name);
  mesh = choice.decode.mesh;
  if (mesh.pp > config.num_layers)
    throw UsageError(fmt::format("--pp {}: more pipeline stages than the model's {} layers",
                                 mesh.pp, config.num_layers));
  ParallelContext ctx(world, mesh);
  const StageSplit split = choose_stage_split(o.pp_layers, config, choice, workload);
  const StageInfo stage = StageInfo::of(ctx, split);
  if (mesh.pp > 1) {
    std::vector<int> stages;
    for (int r = 0; r < world.size(); ++r) stages.push_back(mesh.coord(r).pp);
    world.set_stages(stages);
  }
  if (o.verbose && world.is_root()) {
    // Where each rank runs and which shard it holds, before anything is loaded.
    std::string map = world.placement_report();
    for (int r = 0; r < world.size(); ++r) {
      const MeshCoord c = mesh.coord(r);
      fmt::print(stderr, "{}", map.substr(0, map.find('\n')));
      fmt::print(stderr, ", mesh x={} y={} z={}{}\n", c.x, c.y, c.z,
                 mesh.pp > 1 ? fmt::format(" stage={}", c.pp) : "");
      map.erase(0, map.find('\n') + 1);
    }
  }
  // Micro-batches: as given, else one per stage (more when the planner wants
  // more for memory); a lone pipeline stage runs the batch whole.
  int micro_batches = o.micro_batches;
  if (micro_batches == 0 && mesh.pp > 1) {
    micro_batches = mesh.pp;
    if (choice.hardware)
      micro_batches = int(std::max<int64_t>(
          micro_batches, estimate_phase(ModelSpec::from_config(config, "model"), *choice.hardware,
                                        workload, Phase::kDecode, choice.decode)
                             .micro_batches));
  }
  {
    std::vector<int64_t> lengths;
    for (const auto& p : prompts) lengths.push_back(int64_t(p.size()));
    choice.prefill.micro_batches =
        int64_t(prefill_micro_batches(lengths, std::max(micro_batches, 1)).size());
    choice.decode.micro_batches =
        int64_t(decode_groups(int(prompts.size()), std::max(micro_batches, 1)).size());
  }
  const LayoutShape shape{config.num_heads, config.num_kv_heads, config.parallel_block, true};
  const Layout prefill = make_layout(choice.prefill.ffn, choice.prefill.attn, shape, mesh);
  const Layout decode = make_layout(choice.decode.ffn, choice.decode.attn, shape, mesh);
  check_shardable(config, mesh, prefill, decode);
  // Memory before it is spent: what this rank will hold against its share of
  // its node, refused here (every rank alike) rather than by the allocator.
  {
    const std::optional<double> limit = parse_optional_flag<double>(
        "--memory-limit", o.memory_limit,
        [](const std::string& t) { return parse_bytes(t, "--memory-limit"); });
    const std::optional<MemoryBudget> budget =
        memory_budget(limit, world.ranks_on_node(world.node(world.rank())));
    if (budget)
      check_rank_memory(
          config, choice,
          {workload, world.size(), !o.dump_logits.empty(), !o.dump_step_logits.empty()}, *budget);
  }
  // From here on what fails may fail on one rank only (a file, a node), and
  // each rank says so itself. Loading may take each rank a different time:
  // the collectives up to the first step get a longer allowance.
  world.set_errors_agree(false);
  world.set_comm_timeout(o.comm_timeout > 0 ? std::max(600.0, 10 * o.comm_timeout) : 0);
  const Checkpoint checkpoint(o.model);
  const int threads = o.threads > 0 ? o.threads : world.default_threads(world.rank());
  // The spec's measured crossover of the matmul paths, when it has one.
  const int64_t streaming_rows = choice.hardware ? choice.hardware->cpu_streaming_max_rows : 0;
  const int64_t amx_streaming_rows =
      choice.hardware ? choice.hardware->cpu_amx_streaming_max_rows : 0;
  BackendPtr backend = make_backend(
      backend_kind,
      {threads, weight_dtype, kv_dtype, activation_dtype, streaming_rows, amx_streaming_rows},
      world);
  ctx.set_device_collectives(backend->device() == Device::CUDA);
  const WeightsPart part{split.first_layer(stage.stage), split.end_layer(stage.stage),
                         stage.is_first(), stage.is_last()};
  Engine engine(*backend, ctx, config, prefill, decode,
                load_model_weights(checkpoint, config, *backend, decode, ctx, part), stage);
  if (world.size() > 1) world.all().barrier();
  world.set_comm_timeout(o.comm_timeout);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  const FaultSpec fault = fault_spec();
  if (fault.rank == world.rank() && fault.phase.empty()) fail_now(fault, world.rank());
  // The first stage holds the results, and its ranks all the same ones.
  const bool prints = stage.is_first() && (world.is_root() || o.verbose);
  if (prints && !o.json) {
    fmt::print("model {}: {:.1f}M params, {} weights, {} layers; {}; loaded in {:.2f} s\n", o.model,
               double(config.num_params()) / 1e6, config.torch_dtype, config.num_layers,
               backend->describe(), load_s);
    fmt::print("{} rank{}, mesh {}; prefill {} / {} attention, decode {} / {} attention{}\n",
               world.size(), world.size() > 1 ? "s" : "", mesh.str(), name(prefill.ffn),
               name(prefill.attn), name(decode.ffn), name(decode.attn),
               o.layouts.plan_auto ? " (chosen by the planner)" : "");
    if (!choice.why.empty()) fmt::print("planner: {}\n", choice.why);
  }
  GenerationRequest request;
  request.micro_batches = micro_batches;
  if (fault.rank == world.rank() && !fault.phase.empty())
    request.on_micro_batch = [fault, &world](Phase phase, int64_t step) {
      if (step == fault.step && fault.phase == (phase == Phase::kPrefill ? "prefill" : "decode"))
        fail_now(fault, world.rank());
    };
  request.prompts = prompts;
  request.max_new_tokens = o.max_new_tokens;
  request.sampling = {o.temperature, o.top_k, o.top_p, o.seed};
  request.stop_ids = o.stop_ids;
  // Text generation ends at the tokenizer's end-of-sequence tokens, as other
  // servers do; ids in, ids out keeps only the --stop-ids asked for.
  if (tokenizer && !o.ignore_eos)
    request.stop_ids.insert(request.stop_ids.end(), tokenizer->eos_ids().begin(),
                            tokenizer->eos_ids().end());
  request.keep_prompt_logits = !o.dump_logits.empty();
  request.keep_step_logits = !o.dump_step_logits.empty();
  request.step_graphs = o.cuda_graphs == "on";
  // Untimed runs first, so the timed one measures warm kernels (oneDNN
  // primitives, page faults) rather than a cold process; sweeps use it.
  for (int i = 0; i < o.warmup; ++i) engine.generate(request);
  // On a terminal the continuation appears as it is generated. Special
  // tokens (EOS) are not shown; ids beyond the tokenizer's vocabulary (a
  // model's padded embedding rows) read as nothing, as in Hugging Face.
  const bool streaming = tokenizer && world.is_root() && !o.json && prompts.size() == 1 &&
                         o.stream.value_or(isatty(STDOUT_FILENO) == 1);
  std::optional<TextStream> stream;
  if (streaming) {
    stream.emplace(*tokenizer, true, true);
    fmt::print("{}", texts[0].text);
    std::fflush(stdout);
    request.on_token = [&](int, int32_t token) {
      const std::string piece = stream->push(token);
      if (piece.empty()) return;
      fmt::print("{}", piece);
      std::fflush(stdout);
    };
  }
  const GenerationResult r = engine.generate(request);
  if (stream) fmt::print("{}\n", stream->finish());
  const std::vector<float> peak_rss_mb = peak_rss_mb_per_rank(world);
  // Each stage's busy time, from its first rank, for the measured bubble.
  std::vector<float> busy(size_t(2 * world.size()));
  const float mine[2] = {float(r.prefill_busy_s), float(r.decode_busy_s)};
  world.all().all_gather(mine, busy.data(), 2);
  // The first stage holds the results, each of its ranks the same ones:
  // rank 0 writes the files (ranks on one machine would otherwise write the
  // same path at once), and prints unless --verbose asks them all to.
  if (world.is_root()) {
    if (!o.dump_logits.empty())
      write_npy_f32(o.dump_logits, r.prompt_logits.data(),
                    {int64_t(prompts[0].size()), r.vocab_size});
    if (!o.dump_step_logits.empty())
      write_npy_f32(o.dump_step_logits, r.step_logits.data(),
                    {int64_t(r.step_logits.size()) / r.vocab_size, r.vocab_size});
  }
  if (!prints) return;

  const nlohmann::json predicted = predicted_costs(choice, config, workload);
  auto per_second = [](double count, double seconds) {
    return seconds > 0 ? count / seconds : 0.0;
  };
  const double prefill_tps = per_second(double(r.prompt_tokens), r.prefill_s);
  const double decode_tps = per_second(double(r.decode_tokens), r.decode_s);
  const double itl_ms = r.step_s.empty() ? 0.0 : r.decode_s * 1e3 / double(r.step_s.size());
  std::vector<double> step_ms;  // each decode step, for ITL percentiles in sweeps
  for (double s : r.step_s) step_ms.push_back(s * 1e3);
  // The pipeline: per stage, its busy time in each phase (first rank of the
  // stage) and the bubble, 1 - busy / phase time, beside the prediction.
  nlohmann::json pipeline = {
      {"pp", mesh.pp},
      {"layers_per_stage", split.layers},
      {"micro_batches",
       {{"prefill", r.prefill_micro_batches}, {"decode", r.decode_micro_batches}}}};
  for (const auto& [phase_name, index, phase_s] :
       {std::tuple{"prefill", 0, r.prefill_s}, std::tuple{"decode", 1, r.decode_s}}) {
    std::vector<double> stage_busy;
    double bubble = 0;
    for (int s = 0; s < mesh.pp; ++s) {
      const double b = busy[size_t(2 * ctx.rank_in_stage(s) + index)];
      stage_busy.push_back(b * 1e3);
      bubble += phase_s > 0 ? std::max(0.0, 1.0 - b / phase_s) / mesh.pp : 0.0;
    }
    pipeline["measured"]["stage_busy_ms"][phase_name] = stage_busy;
    pipeline["measured"]["bubble"][phase_name] = bubble;
    if (!predicted.is_null())
      pipeline["predicted_bubble"][phase_name] = predicted[phase_name]["pipeline_bubble"];
  }
  if (o.json) {
    nlohmann::json out = {
        {"generated_ids", r.generated},
        {"ttft_ms", r.ttft_s * 1e3},
        {"itl_ms", itl_ms},
        {"step_ms", step_ms},
        {"prefill_tokens_per_s", prefill_tps},
        {"decode_tokens_per_s", decode_tps},
        {"n_params", config.num_params()},
        {"batch", prompts.size()},
        {"prompt_tokens", r.prompt_tokens},
        {"decode_tokens", r.decode_tokens},
        {"prefill_ms", r.prefill_s * 1e3},
        {"decode_ms", r.decode_s * 1e3},
        {"load_ms", load_s * 1e3},
        {"backend", backend->describe()},
        {"ranks", world.size()},
        {"peak_rss_mb_per_rank", peak_rss_mb},
        {"mesh", {{"x", mesh.x}, {"y", mesh.y}, {"z", mesh.z}}},
        {"pp", mesh.pp},
        {"micro_batches", micro_batches},
        {"pipeline", pipeline},
        {"layouts",
         {{"prefill", {{"ffn", name(prefill.ffn)}, {"attn", name(prefill.attn)}}},
          {"decode", {{"ffn", name(decode.ffn)}, {"attn", name(decode.attn)}}}}},
        {"plan", o.layouts.plan_auto ? "auto" : "pinned"},
        {"predicted", predicted},
    };
    if (backend->device() == Device::CUDA)
      out["cuda_graphs"] = {{"on", r.step_graphs},
                            {"captured", r.graph_steps_captured},
                            {"replayed", r.graph_steps_replayed},
                            {"eager", r.graph_steps_eager},
                            {"note", r.step_graphs_note}};
    if (tokenizer) {
      out["prompt_ids"] = prompts;
      std::vector<std::string> text;
      for (const auto& ids : r.generated) text.push_back(tokenizer->decode(ids, true, true));
      out["text"] = text;
    }
    fmt::print("{}\n", out.dump());
    return;
  }
  if (mesh.pp > 1)
    fmt::print(
        "pipeline: {} stages of {} layers; {} prefill / {} decode micro-batches; bubble "
        "measured {:.0f}% / {:.0f}%{}\n",
        mesh.pp, split.str(), r.prefill_micro_batches, r.decode_micro_batches,
        100 * pipeline["measured"]["bubble"]["prefill"].get<double>(),
        100 * pipeline["measured"]["bubble"]["decode"].get<double>(),
        predicted.is_null()
            ? ""
            : fmt::format(", predicted {:.0f}% / {:.0f}%",
                          100 * predicted["prefill"]["pipeline_bubble"].get<double>(),
                          100 * predicted["decode"]["pipeline_bubble"].get<double>()));
  if (o.verbose && backend->device() == Device::CUDA)
    fmt::print("decode steps: {}{}\n",
               r.step_graphs ? fmt::format("CUDA graphs, {} captured, {} replayed, {} eager",
                                           r.graph_steps_captured, r.graph_steps_replayed,
                                           r.graph_steps_eager)
               : o.cuda_graphs == "on" ? "eager"
                                       : "eager (--cuda-graphs off)",
               r.step_graphs_note.empty() ? "" : fmt::format(" ({})", r.step_graphs_note));
  if (tokenizer && !stream) {
    for (size_t s = 0; s < r.generated.size(); ++s)
      fmt::print("sequence {}: {}{}\n", s, texts[s].text,
                 tokenizer->decode(r.generated[s], true, true));
  } else if (!tokenizer) {
    for (size_t s = 0; s < r.generated.size(); ++s)
      fmt::print("sequence {}: {}\n", s, fmt::join(r.generated[s], " "));
  }
  fmt::print("peak resident memory per rank (MiB): {:.0f}\n", fmt::join(peak_rss_mb, " "));
  fmt::print("prefill: {} tokens in {:.1f} ms ({:.1f} tokens/s); time to first token {:.1f} ms\n",
             r.prompt_tokens, r.prefill_s * 1e3, prefill_tps, r.ttft_s * 1e3);
  fmt::print(
      "decode: {} tokens in {} steps, {:.1f} ms ({:.1f} tokens/s); mean inter-token latency "
      "{:.2f} ms\n",
      r.decode_tokens, r.step_s.size(), r.decode_s * 1e3, decode_tps, itl_ms);
  if (!predicted.is_null())
    fmt::print(
        "predicted on {}: prefill {:.1f} ms, decode {:.1f} ms (measured {:.1f} ms, {:.1f} ms)\n",
        predicted["hardware"].get<std::string>(),
        predicted["prefill"]["latency_s"].get<double>() * 1e3,
        predicted["decode"]["latency_s"].get<double>() * 1e3, r.prefill_s * 1e3, r.decode_s * 1e3);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  auto* cmd = app.add_subcommand("generate", "generate tokens from a checkpoint");
  cmd->add_option("--model", o->model, "checkpoint directory (config.json + safetensors)")
      ->required();
  auto* text = cmd->add_option("--prompt", o->prompts,
                               "prompt text, encoded with the model's tokenizer.json; repeat the "
                               "flag for a batch")
                   ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  auto* text_file =
      cmd->add_option("--prompt-file", o->prompt_file,
                      "file of text prompts: one a line, or JSON Lines with a \"prompt\" field");
  auto* ids = cmd->add_option("--prompt-ids", o->prompt_ids, "prompt token ids, e.g. 1,2,3");
  auto* file = cmd->add_option("--prompt-ids-file", o->prompt_ids_file,
                               "file of prompts, one per line, ids separated by commas or spaces");
  for (CLI::Option* a : {text, text_file, ids, file})
    for (CLI::Option* b : {text, text_file, ids, file})
      if (a != b) a->excludes(b);
  cmd->add_flag("--stream", o->stream_flag,
                "print the continuation as it is generated (default: when stdout is a terminal)");
  cmd->add_flag("--no-stream", o->no_stream_flag, "print the text once generation has ended")
      ->excludes("--stream");
  cmd->add_flag("--ignore-eos", o->ignore_eos,
                "with text prompts, do not stop at the tokenizer's end-of-sequence tokens");
  cmd->add_option("--batch", o->batch, "sequences per batch (a single prompt is repeated)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate per sequence")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "0 for greedy")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "keep the k most likely tokens (0: all)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_option("--top-p", o->top_p, "nucleus sampling threshold in (0, 1]");
  cmd->add_option("--seed", o->seed, "sampling seed")->capture_default_str();
  cmd->add_option("--stop-ids", o->stop_ids, "token ids that end a sequence")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--dump-logits", o->dump_logits,
                  "write prefill logits of sequence 0, [prompt_tokens, vocab], as .npy");
  cmd->add_option("--dump-step-logits", o->dump_step_logits,
                  "write the logits each token of sequence 0 was sampled from, as .npy");
  add_backend_flag(cmd, o->backend);
  cmd->add_option("--threads", o->threads,
                  "compute threads of the CPU backend (0: the cores this process may use, "
                  "divided by the ranks of its node that share them; OMP_NUM_THREADS when set)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_option("--weights", o->weights, weights_flag_help());
  cmd->add_option("--kv-dtype", o->kv_dtype, kv_dtype_flag_help());
  cmd->add_option("--activations", o->activations, activations_flag_help())->capture_default_str();
  cmd->add_option("--memory-limit", o->memory_limit,
                  "memory the job may use on each node, shared by its ranks there, e.g. 2GiB or "
                  "512MB (default: the node's available memory, or its cgroup limit); a run that "
                  "needs more is refused before loading");
  cmd->add_option("--warmup", o->warmup, "untimed runs of the same request before the timed one")
      ->check(CLI::Range(0, 1000));
  cmd->add_flag("--json", o->json, "print one JSON object of results");
  cmd->add_flag("--verbose", o->verbose,
                "print where each rank runs (host, local rank, threads, mesh coordinate) and let "
                "every rank print its results, not only rank 0");
  cmd->add_option("--comm-timeout", o->comm_timeout,
                  "end the job when one collective waits longer than SECONDS (a stopped rank or a "
                  "cut-off node); 0: wait forever")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  cmd->add_option("--mesh", o->mesh,
                  "tensor-parallel mesh X,Y,Z of each pipeline stage, X*Y*Z*pp = ranks (default: X "
                  "near sqrt(ranks/pp)/2)");
  cmd->add_option("--pp", o->pp, "pipeline stages (the slowest mesh axis)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--pp-layers", o->pp_layers,
                  "decoder layers per stage, e.g. 7,9 (default: balance the predicted time)");
  cmd->add_option("--micro-batches", o->micro_batches,
                  "pipeline micro-batches (default: one per stage, or what the planner needs)")
      ->check(CLI::Range(1, 1 << 20));
  const std::string ffn_help = "feed-forward layout: 1d, 2d, wg-x, wg-xy or wg-xyz (default 2d)";
  const std::string attn_help = "attention layout: heads or batch (default heads)";
  cmd->add_option("--ffn-layout-prefill", o->layouts.ffn_prefill, ffn_help);
  cmd->add_option("--ffn-layout-decode", o->layouts.ffn_decode, ffn_help);
  cmd->add_option("--attn-layout-prefill", o->layouts.attn_prefill, attn_help);
  cmd->add_option("--attn-layout-decode", o->layouts.attn_decode, attn_help);
  cmd->add_option(
         "--plan", o->plan,
         "pinned: layouts from the flags above; auto: the planner picks what they leave open")
      ->check(CLI::IsMember({"pinned", "auto"}))
      ->capture_default_str();
  cmd->add_option("--cuda-graphs", o->cuda_graphs,
                  "on: with --backend cuda, capture a decode step once per set of sequences as a "
                  "CUDA graph and replay it (one pipeline stage only; the CPU backend ignores "
                  "this flag); off: every step eagerly")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd->add_option("--hardware", o->layouts.hardware,
                  "hardware spec (configs/hardware NAME or a YAML file from `shardlm calibrate`) "
                  "for --plan auto and for the predicted times reported beside the measured ones")
      ->capture_default_str();
  cmd->callback([o, cmd] {
    o->layouts.plan_auto = o->plan == "auto";
    o->layouts.hardware_given = cmd->count("--hardware") > 0;
    o->pp_given = cmd->count("--pp") > 0;
    o->prompt_ids_given = cmd->count("--prompt-ids") > 0;
    if (o->stream_flag) o->stream = true;
    if (o->no_stream_flag) o->stream = false;
    if (cmd->count("--prompt-ids") == 0 && cmd->count("--prompt-ids-file") == 0 &&
        cmd->count("--prompt") == 0 && cmd->count("--prompt-file") == 0)
      throw UsageError("generate: give --prompt, --prompt-file, --prompt-ids or --prompt-ids-file");
    run_generate(*o, cmd->count("--batch") > 0);
  });
}

}  // namespace shardlm
