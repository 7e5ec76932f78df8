// `shardlm bench`: prefill and decode speed of a checkpoint over a grid of
// settings, llama-bench style (every flag takes a list), beside the limits of
// the machine: prefill MFU against the measured matmul peak and decode
// bandwidth utilisation against the measured memory read bandwidth.
//
// Definitions (docs/cpu_backend.md):
// - prefill tok/s = batch * p / prefill time (the forward pass over all prompts);
// - decode tok/s = tokens produced by decode steps / decode time;
// - prefill FLOP = 2 * (linear weights of the layers) * batch * p
//   + 2 * lm_head * batch (logits of the last token only)
//   + attention 4 * layers * heads * head_dim * batch * p (p + 1) / 2;
//   MFU = FLOP / prefill time / peak, peak = the fastest matmul of the backend
//   at 2048^3 with the row's threads (oneDNN sgemm, or AMX on BF16 weights
//   where the CPU has it: measure_peak_matmul);
// - decode bytes per token = stored weight bytes read per step / batch + KV
//   cache bytes one token reads (K and V, every layer, at the mean context
//   length d + p + (n + 1) / 2, at the KV cache's bytes per value);
//   utilisation = bytes * tok/s / measured bandwidth;
// - roofline: a decode step cannot take less than max(bytes / bandwidth,
//   FLOP / peak), bytes = stored weights + every sequence's KV cache read,
//   FLOP = 2 * linear weights * batch + attention 4 * layers * heads *
//   head_dim * context * batch; the "roofline" column is the fraction of that
//   bound's tok/s reached. Prefill likewise: max(weight bytes / bandwidth,
//   prefill FLOP / peak) against the measured prefill time;
// - with --context d each sequence's prompt is d + p tokens (a context of d
//   tokens already there, llama-bench's -d); the prefill columns cover all of them.
// Under mpirun the peak and bandwidth are the sums over ranks (all measure at
// once) and the bytes those of all ranks' shards. Limits are measured before
// and after the rows; the higher of the two is used.
// With --backend cuda the limits are the --hardware spec's per-GPU dense bf16
// peak and memory bandwidth (the datasheet's, e.g. h200-sxm: 989 TFLOP/s,
// 4.8 TB/s) times the ranks, not measured: the matmul's operands are 16-bit
// whatever the weights' storage, and --threads does not apply.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "launch/backend_choice.hpp"
#include "launch/commands.hpp"
#include "launch/flags.hpp"
#include "launch/memory_check.hpp"
#include "launch/openmp_wait.hpp"
#include "models/model_weights.hpp"
#include "partitioning/calibrate.hpp"
#include "partitioning/cost_model.hpp"
#include "runtime/engine.hpp"
#include "runtime/errors.hpp"
#include "runtime/parallel.hpp"

namespace shardlm {
namespace {

struct BenchOptions {
  std::string model, output = "md", mesh, ffn = "2d", attn = "heads";
  std::vector<int> prompt = {128, 512}, gen = {128}, threads = {0}, batch = {1}, context = {0};
  std::vector<std::string> weights = {"auto"};
  std::string kv_dtype = default_kv_dtype_flag(), activations = "auto", hardware, backend = "auto";
  std::string cuda_graphs = "on";
  int reps = 3;
  double bandwidth_gib = 1.5;
};

struct Limits {
  double peak_flops = 0, bandwidth = 0;
  std::string peak_path;  // the matmul that reached peak_flops (measure_peak_matmul)
};

struct Row {
  std::string weights, weights_dtype;  // as shown ("auto (bf16)"), and the dtype alone
  int threads = 0, batch = 0, prompt = 0, gen = 0, context = 0;
  double prefill_tps = 0, decode_tps = 0, prefill_flops = 0, mfu = 0;
  double decode_bytes_per_token = 0, bandwidth_util = 0;
  // The roofline of each phase (see the top of the file): bytes and FLOP of
  // one decode step of the whole batch, and the fractions of the bound reached.
  double step_bytes = 0, step_flops = 0, decode_roofline = 0, prefill_roofline = 0;
  double weight_bytes = 0;
  Limits limits;
  // The planner's rates on the --hardware spec (0: no spec given).
  double predicted_prefill_tps = 0, predicted_decode_tps = 0;
};

double sum_over_ranks(World& world, double mine) {
  float value = float(mine);
  if (world.size() > 1) world.all().all_reduce(&value, 1);
  return double(value);
}

// Bytes of every stored weight this rank holds, I8 scales included.
double weight_bytes(const ModelWeights& w) {
  auto bytes = [](const Tensor& t) {
    return double(t.empty() ? 0 : t.nbytes()) + (t.scales() ? double(t.scales()->nbytes()) : 0.0);
  };
  double total = bytes(w.lm_head.local) + bytes(w.final_norm);
  for (const LayerWeights& l : w.layers)
    for (const Tensor* t : {&l.input_norm, &l.post_attention_norm, &l.q.local, &l.k.local,
                            &l.v.local, &l.o.local, &l.gate.local, &l.up.local, &l.down.local})
      total += bytes(*t);
  return total;
}

double prefill_flops(const ModelConfig& c, int batch, int p) {
  const double e = double(c.hidden_size);
  const double linear =
      double(c.num_layers) * (e * double(c.q_dim()) * 2 + e * double(c.kv_dim()) * 2 +
                              3 * e * double(c.intermediate_size));
  const double tokens = double(batch) * p;
  const double attention = 4.0 * double(c.num_layers) * double(c.num_heads) * double(c.head_dim) *
                           batch * (double(p) * (p + 1) / 2);
  return 2 * linear * tokens + 2 * double(c.vocab_size) * e * batch + attention;
}

// Decode FLOP of one step of `batch` sequences at `context` cached tokens.
double decode_step_flops(const ModelConfig& c, int batch, double context) {
  return prefill_flops(c, batch, 1) -
         4.0 * double(c.num_layers) * double(c.num_heads) * double(c.head_dim) * batch +
         4.0 * double(c.num_layers) * double(c.num_heads) * double(c.head_dim) * batch * context;
}

// Both phases' roofline fractions of a row whose rates and limits are set.
void set_rooflines(Row& r) {
  const Limits& l = r.limits;
  const double step_s = std::max(r.step_bytes / l.bandwidth, r.step_flops / l.peak_flops);
  r.decode_roofline = r.decode_tps * step_s / r.batch;
  const double prefill_tokens = double(r.batch) * (r.context + r.prompt);
  const double prefill_s = std::max(r.weight_bytes / l.bandwidth, r.prefill_flops / l.peak_flops);
  r.prefill_roofline = r.prefill_tps > 0 ? prefill_s / (prefill_tokens / r.prefill_tps) : 0;
}

// The planner's prefill and decode tok/s for a row on `spec`: the estimate
// `generate` prints beside its measured times, for the row's layout, mesh,
// dtypes and workload (a context of d tokens is prefilled with the prompt:
// d + p positions; decode prices the n - 1 steps a run of n tokens takes).
void set_predictions(Row& r, const ModelSpec& model, const HardwareSpec& spec, PhaseConfig config) {
  config.weights = r.weights_dtype;
  const Workload request{r.batch, r.context + r.prompt, r.gen};
  const Workload steps = decode_workload(request);
  const double prefill_s = estimate_phase(model, spec, request, Phase::kPrefill, config).latency_s;
  const double decode_s = estimate_phase(model, spec, steps, Phase::kDecode, config).latency_s;
  r.predicted_prefill_tps = double(request.batch * request.prompt_len) / prefill_s;
  r.predicted_decode_tps = double(steps.batch * steps.gen_len) / decode_s;
}

// A prediction's error as `generate` and perf/planner_bench.py state it:
// predicted time / measured time - 1 (+: predicted slower), from the rates.
double time_error(double predicted_tps, double measured_tps) {
  return predicted_tps > 0 ? measured_tps / predicted_tps - 1 : 0.0;
}

// `activations`: the dtype name the runs' activations had.
std::string format_rows(const BenchOptions& o, const ModelConfig& c, int ranks,
                        const std::vector<Row>& rows, const std::map<int, Limits>& limits, bool gpu,
                        const std::string& activations) {
  if (o.output == "json") {
    nlohmann::json out = {{"model", o.model},
                          {"ranks", ranks},
                          {"backend", gpu ? "cuda" : "cpu"},
                          {"activations", activations},
                          {"params", c.num_params()},
                          {"rows", nlohmann::json::array()}};
    for (const auto& [t, l] : limits)
      out["limits"].push_back({{"threads", t},
                               {"peak_flops", l.peak_flops},
                               {"peak_path", l.peak_path},
                               {"bandwidth_Bps", l.bandwidth}});
    for (const Row& r : rows)
      out["rows"].push_back({{"weights", r.weights},
                             {"threads", r.threads},
                             {"batch", r.batch},
                             {"d", r.context},
                             {"p", r.prompt},
                             {"n", r.gen},
                             {"prefill_tok_s", r.prefill_tps},
                             {"decode_tok_s", r.decode_tps},
                             {"prefill_flop", r.prefill_flops},
                             {"prefill_mfu", r.mfu},
                             {"decode_bytes_per_token", r.decode_bytes_per_token},
                             {"decode_bw_util", r.bandwidth_util},
                             {"decode_step_bytes", r.step_bytes},
                             {"decode_step_flop", r.step_flops},
                             {"decode_roofline_fraction", r.decode_roofline},
                             {"prefill_roofline_fraction", r.prefill_roofline},
                             {"peak_flops", r.limits.peak_flops},
                             {"bandwidth_Bps", r.limits.bandwidth},
                             {"reps", o.reps}});
    if (!o.hardware.empty()) {
      out["predicted_on"] = o.hardware;
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        out["rows"][i]["predicted_prefill_tok_s"] = r.predicted_prefill_tps;
        out["rows"][i]["predicted_decode_tok_s"] = r.predicted_decode_tps;
      }
    }
    return out.dump(2) + "\n";
  }
  std::ostringstream s;
  if (o.output == "csv") {
    s << "model,ranks,weights,threads,batch,p,n,prefill_tok_s,decode_tok_s,prefill_mfu,"
         "decode_bw_util,decode_bytes_per_token,peak_flops,bandwidth_Bps,d,kv_dtype,"
         "decode_roofline,prefill_roofline,activations,predicted_prefill_tok_s,"
         "predicted_decode_tok_s\n";
    for (const Row& r : rows)
      s << fmt::format(
          "{},{},{},{},{},{},{},{:.2f},{:.3f},{:.4f},{:.4f},{:.0f},{:.4g},{:.4g},{},{},{:.4f},{:."
          "4f},{},{:.2f},{:.3f}\n",
          o.model, ranks, r.weights, r.threads, r.batch, r.prompt, r.gen, r.prefill_tps,
          r.decode_tps, r.mfu, r.bandwidth_util, r.decode_bytes_per_token, r.limits.peak_flops,
          r.limits.bandwidth, r.context, o.kv_dtype, r.decode_roofline, r.prefill_roofline,
          activations, r.predicted_prefill_tps, r.predicted_decode_tps);
    return s.str();
  }
  s << fmt::format(
      "model {}: {:.1f}M params, {} layers; {} rank(s); {} KV cache, {} activations; medians of {} "
      "repetitions\n\n",
      o.model, double(c.num_params()) / 1e6, c.num_layers, ranks, o.kv_dtype, activations, o.reps);
  for (const auto& [t, l] : limits)
    if (gpu)
      s << fmt::format(
          "- CUDA, {} GPU(s): peak {:.1f} TFLOP/s (dense bf16) and memory bandwidth {:.0f} GB/s "
          "from the hardware spec {}\n",
          ranks, l.peak_flops / 1e12, l.bandwidth / 1e9, o.hardware);
    else
      s << fmt::format(
          "- {} thread(s) per rank: peak {:.1f} GFLOP/s ({}), memory read "
          "bandwidth {:.1f} GB/s ({:.1f} GiB streamed); idle threads: {}\n",
          t, l.peak_flops / 1e9, l.peak_path, l.bandwidth / 1e9, o.bandwidth_gib,
          openmp_wait_description());
  s << "\n| weights | threads | batch | d | p | n | prefill tok/s | prefill MFU | prefill "
       "roofline | decode tok/s | decode MB/token | decode BW util | decode roofline ms/step | "
       "decode roofline "
       "|\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const Row& r : rows) {
    const double roof_ms =
        1e3 * std::max(r.step_bytes / r.limits.bandwidth, r.step_flops / r.limits.peak_flops);
    s << fmt::format(
        "| {} | {} | {} | {} | {} | {} | {:.1f} | {:.1f}% | {:.1f}% | {:.2f} | {:.1f} | {:.1f}% | "
        "{:.1f} | {:.1f}% |\n",
        r.weights, r.threads, r.batch, r.context, r.prompt, r.gen, r.prefill_tps, 100 * r.mfu,
        100 * r.prefill_roofline, r.decode_tps, r.decode_bytes_per_token / 1e6,
        100 * r.bandwidth_util, roof_ms, 100 * r.decode_roofline);
  }
  if (!o.hardware.empty()) {
    s << fmt::format(
        "\nPredicted on {} (the planner's estimate for each row's layout, dtypes and workload; "
        "error = predicted time / measured - 1):\n\n| weights | threads | batch | d | p | n | "
        "prefill tok/s | predicted | error | decode tok/s | predicted | error |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        o.hardware);
    for (const Row& r : rows)
      s << fmt::format(
          "| {} | {} | {} | {} | {} | {} | {:.1f} | {:.1f} | {:+.0f}% | {:.2f} | {:.2f} | "
          "{:+.0f}% |\n",
          r.weights, r.threads, r.batch, r.context, r.prompt, r.gen, r.prefill_tps,
          r.predicted_prefill_tps, 100 * time_error(r.predicted_prefill_tps, r.prefill_tps),
          r.decode_tps, r.predicted_decode_tps,
          100 * time_error(r.predicted_decode_tps, r.decode_tps));
  }
  return s.str();
}

void run_bench(const BenchOptions& o) {
  if (o.output != "md" && o.output != "csv" && o.output != "json")
    throw UsageError(fmt::format("-o {}: expected md, csv or json", o.output));
  if (o.reps < 1) throw UsageError("-r must be >= 1");
  for (int v : o.prompt)
    if (v < 1) throw UsageError("-p values must be >= 1");
  for (int v : o.gen)
    if (v < 1) throw UsageError("-n values must be >= 1 (decode is measured)");
  for (int v : o.batch)
    if (v < 1) throw UsageError("-b values must be >= 1");
  for (int v : o.context)
    if (v < 0) throw UsageError("-d values must be >= 0");
  const DType kv_dtype = parse_kv_dtype(o.kv_dtype);
  const std::optional<DType> activation_dtype = parse_activation_dtype(o.activations);
  for (int v : o.threads)
    if (v < 0) throw UsageError("-t values must be >= 0 (0: all cores)");
  std::vector<std::optional<DType>> weight_dtypes;
  for (const std::string& w : o.weights) weight_dtypes.push_back(parse_weight_dtype(w));
  const BackendKind backend_kind = resolve_backend(o.backend);
  const bool gpu = backend_kind == BackendKind::kCuda;
  const std::string activations_name(
      weight_dtype_name(resolved_activation_dtype(backend_kind, activation_dtype)));
  if (gpu && o.hardware.empty())
    throw UsageError(
        "bench --backend cuda: give --hardware (e.g. h200-sxm): its peak bf16 FLOP/s and memory "
        "bandwidth per GPU are what the rows are measured against");
  // The CPU backend's rows per thread count; a GPU's one row, "0 threads".
  const std::vector<int> thread_counts = gpu ? std::vector<int>{0} : o.threads;

  World& world = World::get();
  const Mesh mesh = mesh_flag(o.mesh, world.size());
  ParallelContext ctx(world, mesh);
  const ModelConfig config = ModelConfig::load(o.model);
  const int64_t longest = *std::max_element(o.context.begin(), o.context.end()) +
                          *std::max_element(o.prompt.begin(), o.prompt.end()) +
                          *std::max_element(o.gen.begin(), o.gen.end());
  if (longest > config.context_length())
    throw UsageError(fmt::format("d + p + n = {} exceeds the model's context length {}", longest,
                                 config.context_length()));
  const FfnLayout ffn = parse_flag("--ffn-layout", o.ffn, parse_ffn_layout);
  const AttnLayout attn = parse_flag("--attn-layout", o.attn, parse_attn_layout);
  const LayoutShape shape{config.num_heads, config.num_kv_heads, config.parallel_block, true};
  const Layout layout = make_layout(ffn, attn, shape, mesh);
  check_shardable(config, mesh, layout, layout);
  // The layout every row runs as the planner prices it; the weights' dtype
  // is each row's (`stored_dtype`: --weights, or the checkpoint's for auto).
  PhaseConfig phase_config{ffn, attn, "", mesh};
  phase_config.kv_dtype = weight_dtype_name(kv_dtype);
  phase_config.activation_dtype = activations_name;
  auto stored_dtype = [&config](const std::optional<DType>& dtype) {
    return std::string(weight_dtype_name(
        dtype.value_or(dtype_from_user(config.torch_dtype).value_or(DType::F32))));
  };
  // The largest point of the grid, in each weight dtype, must fit before any
  // is loaded (launch/memory_check.hpp).
  if (const auto budget =
          memory_budget(std::nullopt, world.ranks_on_node(world.node(world.rank()))))
    for (const std::optional<DType>& dtype : weight_dtypes) {
      LayoutChoice choice;
      choice.prefill = choice.decode = phase_config;
      choice.prefill.weights = choice.decode.weights = stored_dtype(dtype);
      // A context of d tokens is prefilled with the prompt: d + p positions.
      const Workload largest{*std::max_element(o.batch.begin(), o.batch.end()),
                             *std::max_element(o.context.begin(), o.context.end()) +
                                 *std::max_element(o.prompt.begin(), o.prompt.end()),
                             *std::max_element(o.gen.begin(), o.gen.end())};
      check_rank_memory(config, choice, {largest, world.size(), false, false}, *budget);
    }
  const Checkpoint checkpoint(o.model);
  // The matmul paths' crossover that `calibrate` measured, when a spec is given.
  const std::optional<HardwareSpec> spec =
      o.hardware.empty()
          ? std::nullopt
          : std::optional(HardwareSpec::load(resolve_config(o.hardware, "hardware")));
  const int64_t streaming_rows = spec ? spec->cpu_streaming_max_rows : 0;
  const int64_t amx_streaming_rows = spec ? spec->cpu_amx_streaming_max_rows : 0;

  // The limits, per thread count: measured before the weights are loaded and
  // again after the last row, keeping the higher value of each, so a burst of
  // other work on a shared machine during one measurement does not lower them.
  const int all_cores = omp_get_max_threads();
  std::map<int, Limits> limits;
  auto measure_limits = [&] {
    if (gpu) {
      limits[0] = {spec->peak("bf16") * world.size(), spec->memory_bandwidth * world.size(),
                   "hardware spec (dense bf16)"};
      return;
    }
    for (int t : thread_counts) {
      const int threads = t > 0 ? t : all_cores;
      omp_set_num_threads(threads);
      Limits& l = limits[threads];
      const PeakMatmul peak = measure_peak_matmul(3);
      const double peak_flops = sum_over_ranks(world, peak.flops_per_s);
      if (peak_flops > l.peak_flops) l.peak_flops = peak_flops, l.peak_path = peak.path;
      l.bandwidth = std::max(
          l.bandwidth,
          sum_over_ranks(world, measure_memory_read(size_t(o.bandwidth_gib * double(1 << 30)), 3)));
    }
  };
  measure_limits();

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, int32_t(config.vocab_size - 1));
  std::vector<Row> rows;
  for (size_t wi = 0; wi < o.weights.size(); ++wi) {
    BackendPtr backend = make_backend(backend_kind,
                                      {all_cores, weight_dtypes[wi], kv_dtype, activation_dtype,
                                       streaming_rows, amx_streaming_rows},
                                      world);
    ctx.set_device_collectives(backend->device() == Device::CUDA);
    ModelWeights weights = load_model_weights(checkpoint, config, *backend, layout, ctx,
                                              {0, config.num_layers, true, true});
    const double stored_bytes = sum_over_ranks(world, weight_bytes(weights));
    const std::string weights_name =
        weight_dtypes[wi]
            ? std::string(weight_dtype_name(*weight_dtypes[wi]))
            : fmt::format("auto ({})", weight_dtype_name(weights.lm_head.local.dtype()));
    Engine engine(*backend, ctx, config, layout, layout, std::move(weights));
    for (int t : thread_counts) {
      const int threads = gpu ? 0 : t > 0 ? t : all_cores;
      if (!gpu) omp_set_num_threads(threads);
      for (int b : o.batch)
        for (int d : o.context)
          for (int p : o.prompt)
            for (int n : o.gen) {
              GenerationRequest request;
              request.step_graphs = o.cuda_graphs == "on";
              for (int s = 0; s < b; ++s) {
                std::vector<int32_t> ids(static_cast<size_t>(d + p));
                for (int32_t& id : ids) id = token(rng);
                request.prompts.push_back(std::move(ids));
              }
              std::vector<double> prefill, decode;
              for (int rep = -1; rep < o.reps; ++rep) {  // rep -1 warms caches and pages up
                request.max_new_tokens = rep < 0 ? std::min(n, 4) : n;
                const GenerationResult r = engine.generate(request);
                if (rep < 0) continue;
                prefill.push_back(double(r.prompt_tokens) / r.prefill_s);
                decode.push_back(r.decode_s > 0 ? double(r.decode_tokens) / r.decode_s : 0.0);
              }
              Row row;
              row.weights = weights_name;
              row.weights_dtype = stored_dtype(weight_dtypes[wi]);
              row.threads = threads;
              row.batch = b;
              row.context = d;
              row.prompt = p;
              row.gen = n;
              row.limits = limits.at(threads);
              row.prefill_tps = median(prefill);
              row.decode_tps = median(decode);
              row.prefill_flops = prefill_flops(config, b, d + p);
              row.mfu = row.prefill_flops * row.prefill_tps / (double(b) * (d + p)) /
                        row.limits.peak_flops;
              const double mean_context = d + p + (n + 1) / 2.0;
              const double kv_bytes = 2.0 * double(config.num_layers) * double(config.kv_dim()) *
                                      double(dtype_size(kv_dtype)) * mean_context;
              row.decode_bytes_per_token = stored_bytes / b + kv_bytes;
              row.bandwidth_util =
                  row.decode_bytes_per_token * row.decode_tps / row.limits.bandwidth;
              row.weight_bytes = stored_bytes;
              row.step_bytes = stored_bytes + kv_bytes * b;
              row.step_flops = decode_step_flops(config, b, mean_context);
              set_rooflines(row);
              rows.push_back(row);
              if (world.is_root() && o.output == "md")
                fmt::print(stderr,
                           "bench: {} weights, {} threads, b {}, d {}, p {}, n {}: prefill {:.1f} "
                           "tok/s, decode {:.2f} tok/s ({:.0f}% of the roofline as measured at "
                           "the start; the table takes the better of start and end)\n",
                           row.weights, threads, b, d, p, n, row.prefill_tps, row.decode_tps,
                           100 * row.decode_roofline);
            }
    }
  }
  measure_limits();
  const std::optional<ModelSpec> model_spec =
      spec ? std::optional(ModelSpec::from_config(config, "model")) : std::nullopt;
  for (Row& row : rows) {
    const Limits& l = limits.at(row.threads);
    row.mfu *= row.limits.peak_flops / l.peak_flops;
    row.bandwidth_util *= row.limits.bandwidth / l.bandwidth;
    row.limits = l;
    set_rooflines(row);
    if (spec) set_predictions(row, *model_spec, *spec, phase_config);
  }
  if (world.is_root())
    fmt::print("{}", format_rows(o, config, world.size(), rows, limits, gpu, activations_name));
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd =
      app.add_subcommand("bench", "prefill and decode speed against the machine's measured limits");
  cmd->add_option("--model", o->model, "checkpoint directory")->required();
  auto list = [&](const std::string& flags, auto& target, const std::string& help) {
    cmd->add_option(flags, target, help)
        ->delimiter(',')
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->capture_default_str();
  };
  list("-p,--prompt", o->prompt, "prompt lengths (tokens per sequence)");
  list("-n,--gen", o->gen, "tokens generated per sequence");
  list("-t,--threads", o->threads,
       "threads per rank of the CPU backend (0: all cores this rank may use)");
  list("-b,--batch", o->batch, "sequences per batch");
  list("-d,--context", o->context,
       "tokens of context already in each sequence's cache: the prompt is d + p tokens");
  list("--weights", o->weights, "weight storage: f32, bf16, f16, int8 or auto (the checkpoint's)");
  cmd->add_option("--kv-dtype", o->kv_dtype, kv_dtype_flag_help())->capture_default_str();
  cmd->add_option("--activations", o->activations, activations_flag_help())->capture_default_str();
  add_backend_flag(cmd, o->backend);
  cmd->add_option("--cuda-graphs", o->cuda_graphs,
                  "on: with --backend cuda, decode steps as CUDA graphs (each run captures its "
                  "own; the CPU backend ignores this flag); off: every step eagerly")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  cmd->add_option("--hardware", o->hardware,
                  "hardware spec whose cpu_streaming_max_rows (from `shardlm calibrate`) sets "
                  "the CPU matmul paths' crossover and on which every row's prefill and decode "
                  "are also predicted (a table after the rows); with --backend cuda, whose bf16 "
                  "peak and memory bandwidth per GPU the rows are measured against "
                  "(e.g. h200-sxm)");
  cmd->add_option("-o,--output", o->output, "md, csv or json")->capture_default_str();
  cmd->add_option("-r,--reps", o->reps, "repetitions per row (the median is reported)")
      ->capture_default_str();
  cmd->add_option("--mesh", o->mesh,
                  "tensor-parallel mesh X,Y,Z (default: x near sqrt(ranks)/2, y the rest)");
  cmd->add_option("--ffn-layout", o->ffn, "feed-forward layout of both phases")
      ->capture_default_str();
  cmd->add_option("--attn-layout", o->attn, "attention layout of both phases")
      ->capture_default_str();
  cmd->add_option("--bandwidth-gib", o->bandwidth_gib, "GiB streamed to measure memory bandwidth")
      ->capture_default_str();
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace shardlm
