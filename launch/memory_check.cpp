#include "launch/memory_check.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <vector>

#include "launch/flags.hpp"
#include "partitioning/model_spec.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

struct MemoryNeed {
  double weights = 0, kv_cache = 0, activations = 0, tables = 0;
  double total() const { return weights + kv_cache + activations + tables; }
};

// The planner's accounting of one rank of `choice`, for the CPU runtime: f32
// activations, the KV cache in the choice's KV dtype, weights as stored. Only memory is read, so a
// missing spec is replaced by one that prices nothing else.
MemoryNeed price(const ModelConfig& config, const LayoutChoice& choice, const RunShape& run) {
  HardwareSpec hw = choice.hardware.value_or(HardwareSpec{});
  hw.activation_dtype = "f32";
  hw.peak_flops.try_emplace("f32", 1.0);
  for (double* rate : {&hw.memory_bandwidth, &hw.link_bandwidth, &hw.intra_node_bandwidth,
                       &hw.inter_node_bandwidth})
    if (*rate <= 0) *rate = 1.0;
  hw.max_chips = std::max(hw.max_chips, choice.decode.mesh.size());
  Workload w = run.workload;
  w.gen_len = std::max<int64_t>(w.gen_len, 1);
  const ModelSpec model = ModelSpec::from_config(config, "model");
  const MemoryUse prefill = estimate_phase(model, hw, w, Phase::kPrefill, choice.prefill).memory;
  const MemoryUse decode = estimate_phase(model, hw, w, Phase::kDecode, choice.decode).memory;
  const MemoryUse& peak = prefill.total() > decode.total() ? prefill : decode;
  MemoryNeed need{peak.weights, peak.kv_cache, peak.activations, 0};
  // RoPE rows for the run's positions (engine: RopeTables::cover), and the
  // logits kept for the --dump-* files.
  const int64_t context = run.workload.prompt_len + run.workload.gen_len;
  need.tables =
      double(std::min(context, config.max_position_embeddings)) * double(config.head_dim) * 4.0;
  if (run.keep_prompt_logits)
    need.tables += double(run.workload.prompt_len) * double(config.vocab_size) * 4.0;
  if (run.keep_step_logits)
    need.tables += double(run.workload.gen_len) * double(config.vocab_size) * 4.0;
  return need;
}

// Bytes from /proc/meminfo's MemAvailable; 0 when unknown.
double mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  double value = 0;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;  // the kernel reports kB
  }
  return 0;
}

// What the cgroup still lets this job allocate (v2, else v1); 0 when unlimited.
double cgroup_room() {
  auto read = [](const char* file) -> double {
    std::ifstream in(file);
    std::string text;
    if (!(in >> text) || text == "max") return 0;
    double v = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    return ec == std::errc() ? v : 0;
  };
  for (const auto& [limit_file, usage_file] :
       {std::pair{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
        std::pair{"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                  "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const double limit = read(limit_file);
    // v1 reports "no limit" as a huge page-rounded number.
    if (limit > 0 && limit < 1e18) return std::max(0.0, limit - read(usage_file));
  }
  return 0;
}

}  // namespace

double parse_bytes(const std::string& text, const char* flag) {
  double value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  std::string unit(ptr, end);
  unit.erase(0, unit.find_first_not_of(' '));
  for (char& c : unit) c = char(std::tolower(static_cast<unsigned char>(c)));
  static const std::vector<std::pair<std::string, double>> units = {
      {"", 1},           {"b", 1},
      {"kb", 1e3},       {"mb", 1e6},
      {"gb", 1e9},       {"tb", 1e12},
      {"k", 1024.0},     {"kib", 1024.0},
      {"m", 1 << 20},    {"mib", 1 << 20},
      {"g", 1 << 30},    {"gib", 1 << 30},
      {"t", 1ull << 40}, {"tib", double(1ull << 40)}};
  const auto u = std::find_if(units.begin(), units.end(),
                              [&](const auto& entry) { return entry.first == unit; });
  if (ec != std::errc() || u == units.end() || !(value > 0) || !std::isfinite(value))
    throw UsageError(fmt::format(
        "{} {}: expected a positive number of bytes, optionally with a unit (e.g. 2GiB, 512MiB, "
        "1.5GB)",
        flag, text));
  return value * u->second;
}

std::optional<MemoryBudget> memory_budget(std::optional<double> limit, int ranks_on_node) {
  const double ranks = std::max(1, ranks_on_node);
  const std::string shared =
      ranks_on_node > 1 ? fmt::format(" shared by the {} ranks on this node", ranks_on_node) : "";
  if (limit)
    return MemoryBudget{*limit / ranks,
                        fmt::format("--memory-limit {}{}", format_bytes(*limit), shared),
                        ranks_on_node};
  const double available = mem_available(), room = cgroup_room();
  if (available <= 0 && room <= 0) return std::nullopt;
  if (room > 0 && (available <= 0 || room < available))
    return MemoryBudget{
        room / ranks,
        fmt::format("{} left under this cgroup's memory limit{}", format_bytes(room), shared),
        ranks_on_node};
  return MemoryBudget{
      available / ranks,
      fmt::format("{} available on this node (MemAvailable){}", format_bytes(available), shared),
      ranks_on_node};
}

double rank_memory_need(const ModelConfig& config, const LayoutChoice& choice,
                        const RunShape& run) {
  return price(config, choice, run).total();
}

void check_rank_memory(const ModelConfig& config, const LayoutChoice& choice, const RunShape& run,
                       const MemoryBudget& budget) {
  const MemoryNeed need = price(config, choice, run);
  if (need.total() <= budget.per_rank) return;
  auto fits = [&](const LayoutChoice& c, const RunShape& r) {
    return rank_memory_need(config, c, r) <= budget.per_rank;
  };
  std::vector<std::string> fixes;
  if (choice.decode.weights != "int8") {
    LayoutChoice c = choice;
    c.prefill.weights = c.decode.weights = "int8";
    if (fits(c, run)) fixes.push_back("--weights int8");
  }
  // More ranks, each node keeping the ranks it has now (so each rank its share).
  const int pp = choice.decode.mesh.pp;
  for (int ranks = run.ranks * 2; ranks <= 4096; ranks *= 2) {
    LayoutChoice c = choice;
    const Mesh mesh = [&] {
      Mesh m = mesh_flag("", ranks / pp);
      m.pp = pp;
      return m;
    }();
    c.prefill.mesh = c.decode.mesh = mesh;
    RunShape r = run;
    r.ranks = ranks;
    if (fits(c, r)) {
      const int per_node = std::max(1, budget.ranks_on_node);
      fixes.push_back(fmt::format("mpirun -n {} over {} nodes of {} rank{}", ranks,
                                  (ranks + per_node - 1) / per_node, per_node,
                                  per_node > 1 ? "s" : ""));
      break;
    }
  }
  for (int64_t batch = run.workload.batch / 2; batch >= 1; batch /= 2) {
    RunShape r = run;
    r.workload.batch = batch;
    LayoutChoice c = choice;
    c.prefill.micro_batches = std::min(c.prefill.micro_batches, batch);
    c.decode.micro_batches = std::min(c.decode.micro_batches, batch);
    if (fits(c, r)) {
      fixes.push_back(fmt::format("--batch {}", batch));
      break;
    }
  }
  for (int64_t tokens = run.workload.gen_len / 2; tokens >= 1; tokens /= 2) {
    RunShape r = run;
    r.workload.gen_len = tokens;
    if (fits(choice, r)) {
      fixes.push_back(fmt::format("--max-new-tokens {}", tokens));
      break;
    }
  }
  throw DataError(fmt::format(
      "not enough memory: each rank needs {} (weights {}, KV cache {}, activations {}, tables "
      "{}) but may use {} ({}); {}",
      format_bytes(need.total()), format_bytes(need.weights), format_bytes(need.kv_cache),
      format_bytes(need.activations), format_bytes(need.tables), format_bytes(budget.per_rank),
      budget.source,
      fixes.empty() ? "neither --weights int8, more ranks, a smaller --batch nor fewer "
                      "--max-new-tokens makes it fit"
                    : fmt::format("it would fit with {}", fmt::join(fixes, ", or "))));
}

}  // namespace shardlm
