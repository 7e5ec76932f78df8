// `shardlm sweep EXP.yaml --out DIR [--resume] [--dry-run]`: run every point
// of a YAML experiment as its own `mpirun ... shardlm generate --json` job (or
// price it with the planner under --dry-run) and append one line per point to
// DIR/results.jsonl (schema: docs/sweeps.md). Failing points are recorded with
// their reason and the sweep goes on; Ctrl-C ends the running job, records
// nothing half-done and exits 130; --resume skips every point already recorded.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "launch/commands.hpp"
#include "launch/experiment.hpp"
#include "launch/flags.hpp"
#include "launch/subprocess.hpp"
#include "launch/system_info.hpp"
#include "models/model_config.hpp"
#include "partitioning/plan_report.hpp"
#include "partitioning/planner.hpp"
#include "runtime/dtype.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSchema = "shardlm.sweep.result/1";

struct SweepOptions {
  std::string experiment, out;
  bool resume = false, dry_run = false;
};

// What a point ran as, decided before launch: the mesh (planner's choice for
// `mesh: auto`), the prediction for it, and the flags that pin it.
struct Setup {
  std::optional<Mesh> mesh;
  json predicted = nullptr;  // {hardware, prefill, decode} as generate prints it
  json run = nullptr;        // {mesh, layouts, weights} as priced
  std::vector<std::string> notes;
};

struct ModelInfo {
  ModelSpec spec;
  std::string weights;  // the planner's dtype name of the stored weights ("auto" in dry runs)
  bool checkpoint = false;
};

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string exe_path() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? "shardlm" : p.string();
}

// Everything about where and with what a sweep ran, shared by its points.
json common_provenance(const SweepOptions& o, const HardwareSpec& hw) {
  const std::string exe = exe_path();
  const ChildResult head =
      run_child({"git", "-C", fs::path(exe).parent_path().string(), "rev-parse", "HEAD"}, {}, 10);
  const ChildResult dirty = run_child({"git", "-C", fs::path(exe).parent_path().string(), "status",
                                       "--porcelain", "--untracked-files=no"},
                                      {}, 10);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::vector<std::string> command = {"shardlm", "sweep", o.experiment, "--out", o.out};
  if (o.resume) command.push_back("--resume");
  if (o.dry_run) command.push_back("--dry-run");
  const std::string act = hw.activation_dtype;
  return {
      {"sweep_command", command},
      {"git_commit", head.exit_code == 0 ? trim(head.out) : "unknown"},
      {"git_dirty", dirty.exit_code == 0 && !trim(dirty.out).empty()},
      {"host", host},
      {"cpu", fmt::format("{} ({} logical CPUs)", cpu_model(), sysconf(_SC_NPROCESSORS_ONLN))},
      {"hardware",
       {{"name", hw.name},
        {"file", hw.source_file},
        {"activation_dtype", act},
        {"peak_flops_per_chip", hw.peak(act)},
        {"memory_bandwidth_per_chip", hw.memory_bandwidth},
        {"memory_bytes_per_chip", hw.memory_bytes}}},
      {"versions",
       {{"compiler", __VERSION__},
        {"mpi", mpi_library_version()},
        {"onednn", onednn_version()},
        {"fmt", FMT_VERSION},
        {"nlohmann_json", fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR,
                                      NLOHMANN_JSON_VERSION_MINOR, NLOHMANN_JSON_VERSION_PATCH)}}},
  };
}

// 1, 5 and 15-minute load averages from /proc/loadavg; empty where unreadable.
json load_average() {
  std::ifstream in("/proc/loadavg");
  double a = 0, b = 0, c = 0;
  if (!(in >> a >> b >> c)) return json::array();
  return {a, b, c};
}

// Linear interpolation between order statistics (NumPy's default).
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}

json summary(const std::vector<double>& v) {
  if (v.empty()) return nullptr;
  return {{"mean", mean(v)},
          {"p50", percentile(v, 0.5)},
          {"p90", percentile(v, 0.9)},
          {"p99", percentile(v, 0.99)}};
}

json predicted_summary(double value) {
  return {{"mean", value}, {"p50", nullptr}, {"p90", nullptr}, {"p99", nullptr}};
}

// Roofline memory time of a phase (bytes each chip must read / its bandwidth)
// over a phase time: the fraction of the spec's bandwidth that time implies.
// The breakdown's phase totals run every layer of every stage in turn; a chip
// reads only its own stage's layers, so pipelines divide by their depth.
double bandwidth_utilisation(const json& phase, double seconds) {
  if (phase.is_null() || seconds <= 0) return 0;
  const json& b = phase["breakdown"];
  const double stages = double(phase.value("pp", 1));
  return (b["weight_load_s"].get<double>() + b["kv_load_s"].get<double>()) / stages / seconds;
}

// Metrics a point's report is drawn from; the same keys for measured and
// predicted points (percentiles are null when predicted: the cost model
// gives one step time at the mean context).
// `decode_tokens`: what the phase produced (measured: tokens from decode
// steps, the first token of each sequence coming from prefill; predicted:
// batch x the decode steps generate runs, decode_workload).
json metrics_from_times(const json& cfg, const ModelSpec& model, const HardwareSpec& hw,
                        const json& predicted, double prefill_s, double decode_s,
                        double decode_tokens, const json& ttft, const json& itl, const json& e2e) {
  const double chips = double(cfg["chips"].get<int64_t>());
  const double batch = double(cfg["batch"].get<int64_t>());
  const double prompt_tokens = batch * double(cfg["prompt_len"].get<int64_t>());
  const double peak = hw.peak(hw.activation_dtype);
  const double n = double(model.mfu_params());
  auto mfu = [&](double tokens, double s) {
    return s > 0 ? 2 * n * tokens / (chips * peak * s) : 0;
  };
  auto rate = [](double tokens, double s) { return s > 0 ? tokens / s : 0; };
  auto cost = [&](double tokens, double s) { return tokens > 0 ? chips * s * 1e3 / tokens : 0; };
  const json no_phase = nullptr;
  const json& pre = predicted.is_null() ? no_phase : predicted["prefill"];
  const json& dec = predicted.is_null() ? no_phase : predicted["decode"];
  return {{"ttft_ms", ttft},
          {"itl_ms", itl},
          {"e2e_ms", e2e},
          {"prefill_ms", prefill_s * 1e3},
          {"decode_ms", decode_s * 1e3},
          {"prefill_tokens_per_s", rate(prompt_tokens, prefill_s)},
          {"decode_tokens_per_s", rate(decode_tokens, decode_s)},
          {"prefill_mfu", mfu(prompt_tokens, prefill_s)},
          {"decode_mfu", mfu(decode_tokens, decode_s)},
          {"prefill_mbu", bandwidth_utilisation(pre, prefill_s)},
          {"decode_mbu", bandwidth_utilisation(dec, decode_s)},
          {"prefill_cost_chip_ms_per_token", cost(prompt_tokens, prefill_s)},
          {"decode_cost_chip_ms_per_token", cost(decode_tokens, decode_s)},
          {"tokens_per_forward_prefill", prompt_tokens},
          {"tokens_per_forward_decode", batch}};
}

json run_json(const Mesh& mesh, const PhaseConfig& prefill, const PhaseConfig& decode) {
  return {{"mesh", {{"pp", mesh.pp}, {"x", mesh.x}, {"y", mesh.y}, {"z", mesh.z}}},
          {"layouts",
           {{"prefill", {{"ffn", name(prefill.ffn)}, {"attn", name(prefill.attn)}}},
            {"decode", {{"ffn", name(decode.ffn)}, {"attn", name(decode.attn)}}}}},
          {"weights", decode.weights}};
}

// The planner on the point's pins. Throws UsageError (impossible) or
// DataError (does not fit), as make_plan does.
Setup plan_point(const json& cfg, const ModelInfo& model, const HardwareSpec& hw) {
  PlanRequest req;
  req.workload = {cfg["batch"].get<int64_t>(), cfg["prompt_len"].get<int64_t>(),
                  cfg["gen_len"].get<int64_t>()};
  req.chips = int(cfg["chips"].get<int64_t>());
  const int pp = int(cfg["pp"].get<int64_t>());
  req.pp = pp;
  req.weights = model.weights;
  if (cfg["weights"] != "auto") {
    const std::string w = cfg["weights"].get<std::string>();
    req.weights = w == "f16" ? "bf16" : w;  // priced by bytes: the same as bf16
  }
  // The runs' KV cache: generate's default.
  req.kv_dtype = std::string(weight_dtype_name(parse_kv_dtype(default_kv_dtype_flag())));
  // auto: the backend's default, which is the spec's (f32 CPU specs, bf16 GPU ones).
  if (cfg["activations"] != "auto") req.activation_dtype = cfg["activations"].get<std::string>();
  Setup s;
  if (cfg["mesh"] != "auto") {
    s.mesh = Mesh::parse(cfg["mesh"].get<std::string>());
    s.mesh->pp = pp;
    req.mesh = s.mesh;
    if (std::string why = hw.mesh_problem(*s.mesh); !why.empty()) throw UsageError(why);
  }
  auto pin = [](const json& v, auto parse) {
    using T = decltype(parse(std::string_view()));
    return v == "auto" ? std::optional<T>() : std::optional<T>(parse(v.get<std::string>()));
  };
  req.ffn_prefill = pin(cfg["ffn_prefill"], parse_ffn_layout);
  req.ffn_decode = pin(cfg["ffn_decode"], parse_ffn_layout);
  req.attn_prefill = pin(cfg["attn_prefill"], parse_attn_layout);
  req.attn_decode = pin(cfg["attn_decode"], parse_attn_layout);
  const Plan plan = make_plan(model.spec, hw, req);
  // Priced as generate prices the run it plans: decode for the steps it runs.
  PhaseCost prefill = plan.prefill.chosen;
  PhaseCost decode = estimate_phase(model.spec, hw, decode_workload(req.workload), Phase::kDecode,
                                    plan.decode.chosen.config);
  if (cfg["micro_batches"] != "auto") {
    // The planner picks its own micro-batch count; a pinned one is priced
    // on the layouts it chose.
    for (PhaseCost* c : {&prefill, &decode}) {
      PhaseConfig pinned = c->config;
      pinned.micro_batches = cfg["micro_batches"].get<int64_t>();
      *c = estimate_phase(model.spec, hw, c->workload, c->phase, pinned);
      if (!c->problem.empty())
        throw DataError(fmt::format("{} with micro_batches {}: {}", name(c->phase),
                                    pinned.micro_batches, c->problem));
    }
  }
  s.mesh = plan.mesh;
  s.predicted = {{"hardware", hw.name},
                 {"prefill", phase_cost_json(prefill)},
                 {"decode", phase_cost_json(decode)}};
  s.run = run_json(plan.mesh, prefill.config, decode.config);
  s.notes.insert(s.notes.end(), plan.notes.begin(), plan.notes.end());
  return s;
}

struct Outcome {
  std::string status = "ok", error;
};

// Status of a launch that did not succeed, and its reason: the job's own
// `shardlm: error:` line where there is one.
Outcome classify(const ChildResult& r, double timeout_s) {
  if (r.timed_out) return {"timeout", fmt::format("no result within timeout_s {:g} s", timeout_s)};
  std::string reason;
  std::string last;
  std::istringstream lines(r.err);
  bool continuing = false;  // a message's indented detail lines follow its first line
  for (std::string line; std::getline(lines, line);) {
    if (continuing && line.rfind("  ", 0) == 0 && reason.back() == ':') {
      reason += " " + trim(line);
      continuing = false;
    } else {
      continuing = false;
    }
    if (line.rfind("shardlm: error: ", 0) == 0 && reason.empty()) {
      reason = trim(line.substr(16));
      continuing = true;
    }
    if (!trim(line).empty()) last = trim(line);
  }
  if (reason.empty()) reason = last;
  const std::string how =
      r.signal ? fmt::format("killed by signal {} ({})", r.signal, strsignal(r.signal))
               : fmt::format("exit {}", r.exit_code);
  reason = reason.empty() ? how : fmt::format("{} ({})", reason, how);
  // "not enough memory": generate's own check before loading (launch/memory_check.hpp).
  for (const char* sign :
       {"bad_alloc", "out of memory", "not enough memory", "Cannot allocate memory", "oom-kill"})
    if (r.err.find(sign) != std::string::npos) return {"oom", reason};
  // SIGKILL that this sweep did not send is, on Linux, almost always the OOM killer.
  if (r.signal == SIGKILL || r.exit_code == 128 + SIGKILL)
    return {"oom", reason + "; killed, most likely by the kernel's out-of-memory killer"};
  if (r.exit_code == 2) return {"invalid", reason};  // generate's usage error: cannot run as asked
  return {"failed", reason};
}

std::string prompt_ids(int64_t len, int64_t vocab) {
  // A fixed, varied prompt below any vocabulary size: runs differ only in length.
  std::string out;
  for (int64_t i = 0; i < len; ++i)
    out += fmt::format("{}{}", i ? "," : "", 1 + (i * 7919 + 13) % std::max<int64_t>(1, vocab - 1));
  return out;
}

std::vector<std::string> generate_command(const Experiment& e, const json& cfg,
                                          const ModelConfig& config, const Setup& setup) {
  const Launcher& l = e.launcher;
  std::vector<std::string> argv = {l.mpirun, "-n", std::to_string(cfg["chips"].get<int64_t>())};
  if (!l.hostfile.empty()) argv.insert(argv.end(), {"--hostfile", l.hostfile});
  if (l.ranks_per_node > 0)
    argv.insert(argv.end(), {"--map-by", fmt::format("ppr:{}:node", l.ranks_per_node)});
  argv.insert(argv.end(), l.args.begin(), l.args.end());
  auto get = [&](const char* key) { return cfg[key].get<int64_t>(); };
  argv.insert(argv.end(),
              {exe_path(), "generate", "--model", cfg["model"].get<std::string>(), "--prompt-ids",
               prompt_ids(get("prompt_len"), config.vocab_size), "--batch",
               std::to_string(get("batch")), "--max-new-tokens", std::to_string(get("gen_len")),
               "--threads", std::to_string(get("threads")), "--hardware", e.hardware, "--json"});
  if (get("warmup") > 0) argv.insert(argv.end(), {"--warmup", std::to_string(get("warmup"))});
  if (setup.mesh)
    argv.insert(argv.end(),
                {"--mesh", fmt::format("{},{},{}", setup.mesh->x, setup.mesh->y, setup.mesh->z)});
  // Pipeline flags only where asked, so points without them run on today's generate.
  if (get("pp") > 1) argv.insert(argv.end(), {"--pp", std::to_string(get("pp"))});
  if (cfg["micro_batches"] != "auto")
    argv.insert(argv.end(), {"--micro-batches", std::to_string(get("micro_batches"))});
  if (cfg["weights"] != "auto")
    argv.insert(argv.end(), {"--weights", cfg["weights"].get<std::string>()});
  if (cfg["activations"] != "auto")
    argv.insert(argv.end(), {"--activations", cfg["activations"].get<std::string>()});
  bool any_auto = false;
  for (const auto& [key, flag] : {std::pair{"ffn_prefill", "--ffn-layout-prefill"},
                                  {"attn_prefill", "--attn-layout-prefill"},
                                  {"ffn_decode", "--ffn-layout-decode"},
                                  {"attn_decode", "--attn-layout-decode"}}) {
    if (cfg[key] == "auto")
      any_auto = true;
    else
      argv.insert(argv.end(), {flag, cfg[key].get<std::string>()});
  }
  if (any_auto) argv.insert(argv.end(), {"--plan", "auto"});
  return argv;
}

class Sweep {
 public:
  Sweep(const SweepOptions& o, const Experiment& e, const HardwareSpec& hw)
      : o_(o), e_(e), hw_(hw), dir_(o.out), provenance_(common_provenance(o, hw)) {}

  // The record of one point, or nullopt when Ctrl-C stopped it.
  std::optional<json> run(const SweepPoint& p, const ModelInfo& model) {
    json record = {{"schema", kSchema},      {"experiment", e_.name},
                   {"hash", p.hash},         {"label", p.label},
                   {"config", p.config},     {"mode", o_.dry_run ? "predicted" : "measured"},
                   {"status", "ok"},         {"error", nullptr},
                   {"notes", json::array()}, {"started_at", now_utc()},
                   {"run", nullptr},         {"predicted", nullptr},
                   {"metrics", nullptr}};
    json prov = provenance_;
    prov["command"] = nullptr;
    prov["load_average"] = load_average();  // other work on the machine skews timings
    prov["blas"] = o_.dry_run ? "none (predicted)" : "unknown";
    const auto start = std::chrono::steady_clock::now();
    auto finish = [&](Outcome out) {
      record["status"] = out.status;
      if (out.status != "ok") record["error"] = out.error;
      record["provenance"] = prov;
      record["wall_s"] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      return record;
    };
    if (!p.invalid.empty()) return finish({"invalid", p.invalid});

    Setup setup;
    try {
      setup = plan_point(p.config, model, hw_);
    } catch (const UsageError& err) {
      if (o_.dry_run) return finish({"invalid", err.what()});
      record["notes"].push_back(fmt::format("not priced: {}", err.what()));
    } catch (const DataError& err) {
      if (o_.dry_run) return finish({"oom", fmt::format("predicted: {}", err.what())});
      record["notes"].push_back(fmt::format("not priced: {}", err.what()));
    }
    for (const auto& n : setup.notes) record["notes"].push_back(n);
    // A measured run keeps an explicit mesh as written (also when the
    // planner refused it: generate has the last word) and takes the planner's
    // mesh for `auto`; without a plan, generate's default.
    if (p.config["mesh"] != "auto") setup.mesh = Mesh::parse(p.config["mesh"].get<std::string>());
    record["run"] = setup.run;
    record["predicted"] = setup.predicted;

    if (o_.dry_run) {
      const json& pre = setup.predicted["prefill"];
      const json& dec = setup.predicted["decode"];
      const double prefill_s = pre["latency_s"].get<double>();
      const double decode_s = dec["latency_s"].get<double>();
      const double steps = double(dec["forward_passes"].get<int64_t>());
      json m = metrics_from_times(p.config, model.spec, hw_, setup.predicted, prefill_s, decode_s,
                                  double(dec["tokens"].get<int64_t>()),
                                  predicted_summary(prefill_s * 1e3),
                                  predicted_summary(decode_s * 1e3 / steps),
                                  predicted_summary((prefill_s + decode_s) * 1e3));
      json mem = json::array();
      const json& pm = dec["memory_per_chip"];
      const double per_chip = pm["weights_bytes"].get<double>() +
                              pm["kv_cache_bytes"].get<double>() +
                              pm["activations_bytes"].get<double>();
      for (int64_t r = 0; r < p.config["chips"].get<int64_t>(); ++r)
        mem.push_back(per_chip / (1024.0 * 1024.0));
      m["peak_memory_mb_per_rank"] = mem;
      m["samples"] = {{"ttft_ms", json::array()}, {"step_ms", json::array()}};
      record["metrics"] = m;
      return finish({});
    }

    const ModelConfig& config = model.spec.config;
    const std::vector<std::string> argv = generate_command(e_, p.config, config, setup);
    prov["command"] = argv;
    const auto deadline = start + std::chrono::duration<double>(e_.timeout_s);
    std::vector<json> reps;
    const int launches = e_.repetitions;
    for (int i = 0; i < launches; ++i) {
      const double left =
          std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
      ChildResult r = run_child(argv, e_.launcher.env, std::max(0.0, left));
      if (r.interrupted) return std::nullopt;
      if (r.timed_out || r.exit_code != 0 || r.signal != 0) {
        write_log(p, i, argv, r);
        record["log"] = fmt::format("logs/{}.log", p.hash);
        Outcome out = classify(r, e_.timeout_s);
        if (launches > 1)
          out.error = fmt::format("launch {} of {}: {}", i + 1, launches, out.error);
        return finish(out);
      }
      json j;
      try {
        const std::string text = trim(r.out);
        j = json::parse(text.substr(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n')));
      } catch (const json::exception&) {
      }
      // A generate that prints something else (another version, a wrapper's
      // banner) fails the point, not the sweep.
      const char* missing = nullptr;
      for (const char* key : {"ttft_ms", "prefill_ms", "decode_ms", "decode_tokens",
                              "peak_rss_mb_per_rank", "mesh", "layouts", "predicted"})
        if (!missing && !(j.is_object() && j.contains(key))) missing = key;
      if (missing) {
        write_log(p, i, argv, r);
        record["log"] = fmt::format("logs/{}.log", p.hash);
        return finish({"failed", fmt::format("generate's last output line is not its --json "
                                             "object (no '{}')",
                                             missing)});
      }
      reps.push_back(std::move(j));
    }

    // Every repetition's numbers; percentiles pool the decode steps of all.
    std::vector<double> ttft, steps, e2e, prefill, decode;
    std::vector<double> rss(size_t(p.config["chips"].get<int64_t>()), 0.0);
    for (const json& j : reps) {
      ttft.push_back(j["ttft_ms"].get<double>());
      prefill.push_back(j["prefill_ms"].get<double>() / 1e3);
      decode.push_back(j["decode_ms"].get<double>() / 1e3);
      e2e.push_back(j["ttft_ms"].get<double>() + j["decode_ms"].get<double>());
      for (const json& s : j.value("step_ms", json::array())) steps.push_back(s.get<double>());
      const json& peaks = j["peak_rss_mb_per_rank"];
      for (size_t r = 0; r < rss.size() && r < peaks.size(); ++r)
        rss[r] = std::max(rss[r], peaks[r].get<double>());
    }
    const json& last = reps.back();
    if (!last["predicted"].is_null()) record["predicted"] = last["predicted"];
    const int pp = int(p.config["pp"].get<int64_t>());
    record["run"] = {
        {"mesh",
         {{"pp", pp},
          {"x", last["mesh"]["x"]},
          {"y", last["mesh"]["y"]},
          {"z", last["mesh"]["z"]}}},
        {"layouts", last["layouts"]},
        {"weights",
         p.config["weights"] == "auto" ? model.weights : p.config["weights"].get<std::string>()}};
    prov["blas"] = last.value("backend", "unknown");
    json m = metrics_from_times(p.config, model.spec, hw_, record["predicted"], mean(prefill),
                                mean(decode), double(last.value("decode_tokens", 0)), summary(ttft),
                                summary(steps), summary(e2e));
    m["peak_memory_mb_per_rank"] = rss;
    m["samples"] = {{"ttft_ms", ttft}, {"step_ms", steps}};
    record["metrics"] = m;
    return finish({});
  }

 private:
  void write_log(const SweepPoint& p, int launch, const std::vector<std::string>& argv,
                 const ChildResult& r) {
    if (std::error_code ec; !fs::create_directories(dir_ / "logs", ec) && ec)
      throw DataError(fmt::format("{}: cannot create: {}", (dir_ / "logs").string(), ec.message()));
    write_file_atomically(dir_ / "logs" / (p.hash + ".log"), [&](std::ostream& log) {
      log << fmt::format("# {}\n# launch {}; {:.2f} s; exit {}; signal {}{}\n",
                         fmt::join(argv, " "), launch + 1, r.seconds, r.exit_code, r.signal,
                         r.timed_out ? "; timed out" : "")
          << "## stderr\n"
          << r.err << "\n## stdout\n"
          << r.out;
    });
  }

  const SweepOptions& o_;
  const Experiment& e_;
  const HardwareSpec& hw_;
  fs::path dir_;
  json provenance_;
};

// Points already in results.jsonl. A last line cut short (the machine went
// down mid-write) is dropped so the file stays one object per line.
std::set<std::string> read_done(const fs::path& file, const std::string& mode) {
  std::set<std::string> done;
  if (std::error_code ec; !fs::exists(file, ec)) return done;
  std::ifstream in(file, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t pos = 0, good_end = 0;
  for (int number = 1; pos < text.size(); ++number) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;  // no newline: an unfinished write
    const std::string line = text.substr(pos, nl - pos);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      throw DataError(
          fmt::format("{}:{}: not a JSON object; fix or remove the line", file.string(), number));
    }
    if (!j.is_object() || !j.contains("hash") || !j.contains("mode"))
      throw DataError(
          fmt::format("{}:{}: not a sweep result (no hash or mode)", file.string(), number));
    if (!j["hash"].is_string() || !j["mode"].is_string())
      throw DataError(fmt::format("{}:{}: hash and mode must be strings", file.string(), number));
    if (j["mode"] != mode)
      throw UsageError(
          fmt::format("--resume: {} holds {} results and this run is {}; use another --out",
                      file.string(), j["mode"].get<std::string>(), mode));
    done.insert(j["hash"].get<std::string>());
    pos = good_end = nl + 1;
  }
  if (good_end < text.size()) {
    fmt::print(stderr, "sweep: {}: dropping an unfinished last line ({} bytes)\n", file.string(),
               text.size() - good_end);
    std::error_code ec;
    fs::resize_file(file, good_end, ec);
    if (ec) throw DataError(fmt::format("{}: cannot truncate: {}", file.string(), ec.message()));
  }
  return done;
}

// One write() per record on an O_APPEND file, flushed to disk before the
// next point starts: a crash or Ctrl-C leaves whole lines only.
void append_line(const fs::path& file, const json& record) {
  const std::string line = record.dump() + "\n";
  const int fd = open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw DataError(fmt::format("{}: cannot open for appending", file.string()));
  const ssize_t n = write(fd, line.data(), line.size());
  fsync(fd);
  close(fd);
  if (n != ssize_t(line.size()))
    throw DataError(fmt::format("{}: short write (disk full?)", file.string()));
}

std::string clock_text(double s) {
  const int t = int(std::lround(s));
  return t >= 3600 ? fmt::format("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}:{:02}", t / 60, t % 60);
}

// Points done, failures and ETA: a bar redrawn in place on a terminal,
// one plain line per point otherwise (logs, CI).
class Progress {
 public:
  explicit Progress(size_t total) : total_(total), tty_(isatty(2)) {}
  void start(size_t index, const std::string& label) {
    label_ = label;
    index_ = index;
    if (tty_) draw();
  }
  void finish(const json& record) {
    ++done_;
    const std::string status = record["status"].get<std::string>();
    if (status != "ok") ++failed_;
    const double s = record["wall_s"].get<double>();
    spent_ += s;
    const std::string line =
        fmt::format("sweep: [{}/{}] {:<7} {} ({:.1f} s){}", index_ + 1, total_, status, label_, s,
                    status == "ok" ? "" : ": " + record["error"].get<std::string>());
    if (tty_) {
      if (status != "ok") fmt::print(stderr, "\r\033[K{}\n", line);
      draw();
    } else {
      fmt::print(stderr, "{}; ETA {}\n", line, clock_text(eta()));
    }
  }
  void end() {
    if (tty_) fmt::print(stderr, "\n");
  }

 private:
  double eta() const { return done_ ? spent_ / double(done_) * double(total_ - done_) : 0; }
  void draw() {
    const int width = 24;
    const int filled = total_ ? int(double(done_) * width / double(total_)) : width;
    fmt::print(stderr, "\r\033[K[{}{}] {}/{} done, {} failed, ETA {}  {}", std::string(filled, '#'),
               std::string(width - filled, '.'), done_, total_, failed_,
               done_ ? clock_text(eta()) : "?", label_.substr(0, 60));
    std::fflush(stderr);
  }
  size_t total_, done_ = 0, failed_ = 0, index_ = 0;
  bool tty_;
  double spent_ = 0;
  std::string label_;
};

void run_sweep(const SweepOptions& o) {
  check_output_directory(o.out, "--out");
  const Experiment e = Experiment::load(o.experiment, o.dry_run);
  const HardwareSpec hw = HardwareSpec::load(resolve_config(e.hardware, "hardware"));
  // Every model is checked before anything runs: a typo should not surface
  // as N failed points.
  std::map<std::string, ModelInfo> models;
  for (const SweepPoint& p : e.points) {
    const std::string m = p.config["model"].get<std::string>();
    if (models.count(m)) continue;
    ModelInfo info;
    info.checkpoint = fs::is_regular_file(fs::path(m) / "config.json");
    if (!o.dry_run && !info.checkpoint)
      throw DataError(fmt::format(
          "{}: key 'grid.model': '{}' is not a checkpoint directory (a measured sweep runs "
          "generate on it; `shardlm make-model --preset NAME --out {}` writes one, and --dry-run "
          "takes configs/models names)",
          e.file, m, m));
    try {
      info.spec = ModelSpec::resolve(m);
    } catch (const std::exception& err) {
      throw DataError(fmt::format("{}: key 'grid.model': {}", e.file, err.what()));
    }
    info.weights = "auto";
    if (info.checkpoint) {
      const auto dtype = dtype_from_user(info.spec.config.torch_dtype).value_or(DType::F32);
      info.weights = std::string(weight_dtype_name(dtype));
      if (info.weights == "f16") info.weights = "bf16";
    }
    models[m] = info;
  }

  const fs::path dir = o.out;
  const fs::path results = dir / "results.jsonl";
  if (std::error_code ec; !o.resume && fs::file_size(results, ec) > 0 && !ec)
    throw UsageError(fmt::format(
        "--out {}: {} already holds results; add --resume to continue it, or choose another --out",
        o.out, results.string()));
  if (std::error_code ec; !fs::create_directories(dir, ec) && ec)
    throw UsageError(fmt::format("--out {}: cannot create: {}", o.out, ec.message()));
  const std::set<std::string> done = read_done(results, o.dry_run ? "predicted" : "measured");
  {  // the experiment as run, beside its results
    std::ifstream in(o.experiment, std::ios::binary);
    std::ostringstream text;
    if (!(text << in.rdbuf())) throw DataError(fmt::format("{}: cannot read", o.experiment));
    write_file_atomically(dir / "experiment.yaml", text.str());
  }

  std::vector<const SweepPoint*> todo;
  for (const SweepPoint& p : e.points)
    if (!done.count(p.hash)) todo.push_back(&p);
  fmt::print(stderr, "sweep {}: {} points{}{}; {} to run{}\n", e.name, e.points.size(),
             e.dropped ? fmt::format(" ({} dropped by exclude/where)", e.dropped) : "",
             done.empty() ? ""
                          : fmt::format(", {} already in {}", e.points.size() - todo.size(),
                                        results.string()),
             todo.size(), o.dry_run ? " (dry run: predictions only)" : "");

  install_interrupt_handler();
  Sweep sweep(o, e, hw);
  Progress progress(todo.size());
  std::map<std::string, int> counts;
  for (size_t i = 0; i < todo.size(); ++i) {
    const SweepPoint& p = *todo[i];
    progress.start(i, p.label);
    std::optional<json> record =
        g_interrupted ? std::nullopt : sweep.run(p, models.at(p.config["model"]));
    if (!record) {
      progress.end();
      fmt::print(stderr,
                 "sweep: interrupted; {} point(s) recorded in {}, the one running is not; "
                 "`--resume` continues\n",
                 i + (e.points.size() - todo.size()), results.string());
      std::fflush(stderr);
      std::_Exit(130);  // no unwinding through MPI or the plan caches: nothing is left to save
    }
    append_line(results, *record);
    ++counts[(*record)["status"].get<std::string>()];
    progress.finish(*record);
  }
  progress.end();
  std::vector<std::string> parts;
  for (const char* s : {"ok", "failed", "timeout", "oom", "invalid"})
    if (counts[s]) parts.push_back(fmt::format("{} {}", counts[s], s));
  fmt::print("sweep {}: ran {} point(s){}{}; results in {}; `shardlm report {}` draws the report\n",
             e.name, todo.size(), parts.empty() ? "" : ": ", fmt::join(parts, ", "),
             results.string(), o.out);
}

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto o = std::make_shared<SweepOptions>();
  auto* cmd = app.add_subcommand(
      "sweep", "run a YAML experiment's grid, one mpirun job per point, into DIR/results.jsonl");
  cmd->add_option("experiment", o->experiment, "experiment file (configs/experiments/*.yaml)")
      ->required();
  cmd->add_option("--out", o->out, "directory for results.jsonl, logs and the report")->required();
  cmd->add_flag("--resume", o->resume, "skip the points already in DIR/results.jsonl");
  cmd->add_flag("--dry-run", o->dry_run,
                "price every point with the planner instead of running it (no launch)");
  cmd->callback([o] { run_sweep(*o); });
}

}  // namespace shardlm
