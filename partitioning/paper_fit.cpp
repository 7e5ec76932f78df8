#include "partitioning/paper_fit.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "partitioning/planner.hpp"
#include "partitioning/yaml_fields.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

PublishedSet PublishedSet::load(const std::string& file) {
  YamlFields f = YamlFields::load_file(file);
  PublishedSet set;
  set.hardware = f.text("hardware");
  if (!f.has("results")) throw DataError(fmt::format("{} is missing", f.where("results")));
  f.reject_unknown();
  set.config_root = std::filesystem::path(file).parent_path().parent_path().string();
  const std::string data_set = std::filesystem::path(file).stem().string();
  set.data_sets = {data_set};
  YAML::Node list = YAML::LoadFile(file)["results"];
  if (!list || !list.IsSequence())
    throw DataError(fmt::format("{}: expected a list", f.where("results")));
  for (size_t i = 0; i < list.size(); ++i) {
    YamlFields r(list[i], file, fmt::format("results[{}].", i));
    PublishedResult p;
    p.label = r.text("label");
    p.model = r.text("model");
    p.data_set = data_set;
    const std::string phase = r.text("phase");
    if (phase != "prefill" && phase != "decode" && phase != "both")
      throw DataError(fmt::format("{}: expected prefill, decode or both", r.where("phase")));
    p.phase = phase == "prefill" ? Phase::kPrefill : Phase::kDecode;
    p.both_phases = phase == "both";
    p.workload = {r.positive_int("batch"), r.positive_int("prompt_len"), r.positive_int("gen_len")};
    try {
      p.config = {parse_ffn_layout(r.text("ffn")), parse_attn_layout(r.text("attn")),
                  r.text("weights"), Mesh::parse(r.text("mesh"))};
      p.config.mesh.pp = static_cast<int>(r.positive_int("pp", 1));
      p.config.micro_batches = r.positive_int("micro_batches", 0);
      if (r.has("prefill_ffn") || r.has("prefill_attn") || r.has("prefill_micro_batches")) {
        if (!p.both_phases)
          throw std::invalid_argument(
              "prefill_ffn, prefill_attn and prefill_micro_batches need phase: both");
        PhaseConfig pre = p.config;
        pre.ffn = parse_ffn_layout(r.text("prefill_ffn", std::string(name(p.config.ffn))));
        pre.attn = parse_attn_layout(r.text("prefill_attn", std::string(name(p.config.attn))));
        pre.micro_batches = r.positive_int("prefill_micro_batches", 0);
        p.prefill_config = pre;
      }
    } catch (const std::invalid_argument& e) {
      throw DataError(fmt::format("{}: results[{}]: {}", file, i, e.what()));
    }
    p.latency_s = r.positive("latency_s");
    r.positive_int("table", 1);  // which table of the paper: documentation only
    r.reject_unknown();
    set.results.push_back(std::move(p));
  }
  return set;
}

PublishedSet PublishedSet::load(const std::vector<std::string>& files) {
  if (files.empty()) throw DataError("no published-results file given");
  PublishedSet all = load(files.front());
  for (size_t i = 1; i < files.size(); ++i) {
    PublishedSet more = load(files[i]);
    if (more.hardware != all.hardware)
      throw DataError(fmt::format("{}: hardware '{}' differs from {}'s '{}'", files[i],
                                  more.hardware, files.front(), all.hardware));
    all.data_sets.push_back(more.data_sets.front());
    for (auto& r : more.results) all.results.push_back(std::move(r));
  }
  return all;
}

ModelSpec PublishedSet::model(const std::string& name) const {
  const auto local = std::filesystem::path(config_root) / "models" / (name + ".yaml");
  return std::filesystem::is_regular_file(local) ? ModelSpec::load_yaml(local.string())
                                                 : ModelSpec::resolve(name);
}

namespace {

// The phases a published latency covers, priced once (reprice() then
// weighs them with other efficiency constants).
std::vector<PhaseCost> price_phases(const ModelSpec& m, const HardwareSpec& hw,
                                    const PublishedResult& p) {
  std::vector<PhaseCost> phases = {estimate_phase(m, hw, p.workload, p.phase, p.config)};
  if (p.both_phases)
    phases.push_back(
        estimate_phase(m, hw, p.workload, Phase::kPrefill, p.prefill_config.value_or(p.config)));
  return phases;
}

double total_latency(const std::vector<PhaseCost>& phases) {
  double t = 0;
  for (const PhaseCost& c : phases) t += c.latency_s;
  return t;
}

std::map<std::string, ModelSpec> load_models(const PublishedSet& set) {
  std::map<std::string, ModelSpec> models;
  for (const auto& p : set.results)
    if (!models.count(p.model)) models.emplace(p.model, set.model(p.model));
  return models;
}

}  // namespace

double predict(const ModelSpec& m, const HardwareSpec& hw, const PublishedResult& p) {
  return total_latency(price_phases(m, hw, p));
}

std::vector<FidelityRow> evaluate(const PublishedSet& set, const HardwareSpec& hw) {
  const std::map<std::string, ModelSpec> models = load_models(set);
  HardwareSpec ideal = hw;
  ideal.efficiency = EfficiencyModel{};
  ideal.efficiency.memory_reserve_fraction = hw.efficiency.memory_reserve_fraction;
  ideal.efficiency.weight_gather_overlap = ideal.efficiency.comm_overlap = 1;  // all it can hide
  std::vector<FidelityRow> rows;
  for (const auto& p : set.results) {
    const ModelSpec& m = models.at(p.model);
    const double t = predict(m, hw, p);
    const Workload& w = p.workload;
    const double tokens = static_cast<double>(
        w.batch * (p.both_phases ? w.prompt_len + w.gen_len
                                 : (p.phase == Phase::kPrefill ? w.prompt_len : w.gen_len)));
    const double mfu = 2.0 * static_cast<double>(m.mfu_params()) * tokens /
                       (p.config.mesh.size() * hw.peak(hw.activation_dtype) * t);
    rows.push_back({p, t, mfu, predict(m, ideal, p)});
  }
  return rows;
}

std::string format_fidelity(const std::vector<FidelityRow>& rows, const HardwareSpec& hw) {
  std::vector<std::string> sets;
  for (const auto& r : rows)
    if (std::find(sets.begin(), sets.end(), r.published.data_set) == sets.end())
      sets.push_back(r.published.data_set);
  std::string out;
  for (const std::string& data_set : sets) {
    out += fmt::format(
        "{}| {} ({}) | mesh | layout | published s | predicted s | error | cross-validated "
        "error | roofline s | predicted MFU |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n",
        out.empty() ? "" : "\n", data_set, hw.name);
    double sum_sq = 0, sum_sq_cv = 0, worst = 0, worst_cv = 0;
    int n = 0, n_cv = 0;
    for (const auto& r : rows) {
      const auto& p = r.published;
      if (p.data_set != data_set) continue;
      const bool cv = !std::isnan(r.cross_validated_s);
      const std::string layout =
          p.prefill_config ? fmt::format("{} + {} / {}", name(p.config.ffn),
                                         name(p.prefill_config->attn), name(p.config.attn))
                           : fmt::format("{} + {}", name(p.config.ffn), name(p.config.attn));
      out += fmt::format(
          "| {} | {}{},{},{} | {} | {:.3g} | {:.3g} | {:+.1f}% | {} | {:.3g} | "
          "{:.1f}% |\n",
          p.label, p.config.mesh.pp > 1 ? fmt::format("pp{} ", p.config.mesh.pp) : "",
          p.config.mesh.x, p.config.mesh.y, p.config.mesh.z, layout, p.latency_s, r.predicted_s,
          r.error() * 100, cv ? fmt::format("{:+.1f}%", r.cross_validated_error() * 100) : "-",
          r.roofline_s, r.predicted_mfu * 100);
      sum_sq += std::pow(std::log(r.predicted_s / p.latency_s), 2);
      worst = std::max(worst, std::abs(r.error()));
      ++n;
      if (cv) {
        sum_sq_cv += std::pow(std::log(r.cross_validated_s / p.latency_s), 2);
        worst_cv = std::max(worst_cv, std::abs(r.cross_validated_error()));
        ++n_cv;
      }
    }
    out += fmt::format("\n{}: {} results; in sample: RMS log error {:.3f}, largest error {:.1f}%",
                       data_set, n, std::sqrt(sum_sq / n), worst * 100);
    if (n_cv)
      out += fmt::format("; leave-one-out: RMS log error {:.3f}, largest error {:.1f}%",
                         std::sqrt(sum_sq_cv / n_cv), worst_cv * 100);
    out += ".\n";
  }
  return out;
}

namespace {

constexpr int kParams = 6;
using Vec = std::array<double, kParams>;

double sigmoid(double v) {
  return 1 / (1 + std::exp(-std::clamp(v, -40.0, 40.0)));
}

// Unconstrained coordinates -> efficiency constants within their ranges.
EfficiencyModel decode(const Vec& q, EfficiencyModel base) {
  base.matmul_peak_fraction = sigmoid(q[0]);
  base.matmul_half_rows = std::exp(std::clamp(q[1], -20.0, 15.0));
  base.memory_bandwidth_fraction = sigmoid(q[2]);
  base.collective_bandwidth_fraction = sigmoid(q[3]);
  base.comm_overlap = sigmoid(q[4]);
  base.layer_overhead_s = std::exp(std::clamp(q[5], -30.0, 0.0));
  return base;
}

Vec nelder_mead(const std::function<double(const Vec&)>& f, Vec start, double step,
                int iterations) {
  std::array<Vec, kParams + 1> simplex;
  std::array<double, kParams + 1> value;
  for (int i = 0; i <= kParams; ++i) {
    simplex[i] = start;
    if (i > 0) simplex[i][i - 1] += step;
    value[i] = f(simplex[i]);
  }
  for (int it = 0; it < iterations; ++it) {
    std::array<int, kParams + 1> order;
    for (int i = 0; i <= kParams; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int a, int b) { return value[a] < value[b]; });
    const int best = order[0], worst = order[kParams], second = order[kParams - 1];
    Vec centroid{};
    for (int i = 0; i <= kParams; ++i)
      if (i != worst)
        for (int k = 0; k < kParams; ++k) centroid[k] += simplex[i][k] / kParams;
    auto along = [&](double t) {
      Vec v;
      for (int k = 0; k < kParams; ++k) v[k] = centroid[k] + t * (simplex[worst][k] - centroid[k]);
      return v;
    };
    Vec r = along(-1);
    double fr = f(r);
    if (fr < value[best]) {
      Vec e = along(-2);
      double fe = f(e);
      if (fe < fr)
        simplex[worst] = e, value[worst] = fe;
      else
        simplex[worst] = r, value[worst] = fr;
    } else if (fr < value[second]) {
      simplex[worst] = r, value[worst] = fr;
    } else {
      Vec c = along(0.5);
      double fc = f(c);
      if (fc < value[worst]) {
        simplex[worst] = c, value[worst] = fc;
      } else {
        for (int i = 0; i <= kParams; ++i) {
          if (i == best) continue;
          for (int k = 0; k < kParams; ++k)
            simplex[i][k] = simplex[best][k] + 0.5 * (simplex[i][k] - simplex[best][k]);
          value[i] = f(simplex[i]);
        }
      }
    }
  }
  int best = static_cast<int>(std::min_element(value.begin(), value.end()) - value.begin());
  return simplex[best];
}

}  // namespace

namespace {

// Unconstrained coordinates of the efficiency constants (the inverse of decode).
Vec encode(const EfficiencyModel& e) {
  auto logit = [](double f) {
    f = std::clamp(f, 1e-6, 1 - 1e-6);
    return std::log(f / (1 - f));
  };
  return {logit(e.matmul_peak_fraction),
          std::log(std::max(e.matmul_half_rows, 1e-8)),
          logit(e.memory_bandwidth_fraction),
          logit(e.collective_bandwidth_fraction),
          logit(e.comm_overlap),
          std::log(std::max(e.layer_overhead_s, 1e-13))};
}

// Every published configuration priced once; the loss reprices them.
struct FitProblem {
  const PublishedSet& set;
  HardwareSpec trial;
  std::map<std::string, ModelSpec> models;
  std::vector<std::vector<PhaseCost>> priced;

  FitProblem(const PublishedSet& s, const HardwareSpec& hw)
      : set(s), trial(hw), models(load_models(s)) {
    for (const auto& p : set.results) priced.push_back(price_phases(models.at(p.model), hw, p));
  }
  double latency(size_t i) {
    for (PhaseCost& c : priced[i]) reprice(c, models.at(set.results[i].model), trial);
    return total_latency(priced[i]);
  }
  // Sum of squared log errors over every result but `left_out`.
  double loss(const Vec& q, const EfficiencyModel& base, size_t left_out) {
    trial.efficiency = decode(q, base);
    double sum = 0;
    for (size_t i = 0; i < priced.size(); ++i)
      if (i != left_out) sum += std::pow(std::log(latency(i) / set.results[i].latency_s), 2);
    return sum;
  }
};

constexpr size_t kNone = std::numeric_limits<size_t>::max();

}  // namespace

HardwareSpec fit_efficiency(const PublishedSet& set, const HardwareSpec& hw) {
  FitProblem problem(set, hw);
  auto loss = [&](const Vec& q) { return problem.loss(q, hw.efficiency, kNone); };
  Vec best = encode(hw.efficiency);
  double best_loss = loss(best);
  // A coarse grid of starts, then polish the best a few times.
  for (double mm : {0.0, 2.0})
    for (double half : {3.0, 6.0})
      for (double net : {-1.0, 1.0})
        for (double oh : {-12.0, -9.0}) {
          Vec q = nelder_mead(loss, {mm, half, 1.0, net, -2.0, oh}, 0.5, 300);
          const double l = loss(q);
          if (l < best_loss) best_loss = l, best = q;
        }
  for (int round = 0; round < 3; ++round) best = nelder_mead(loss, best, 0.2, 800);
  HardwareSpec out = hw;
  out.efficiency = decode(best, hw.efficiency);
  return out;
}

void cross_validate(const PublishedSet& set, const HardwareSpec& hw,
                    std::vector<FidelityRow>& rows) {
  FitProblem problem(set, hw);
  const Vec start = encode(hw.efficiency);
  for (size_t i = 0; i < set.results.size() && i < rows.size(); ++i) {
    auto loss = [&](const Vec& q) { return problem.loss(q, hw.efficiency, i); };
    // Refit from hw's constants (fitted to every result): without result i
    // the optimum moves little, and a local search finds it.
    Vec q = nelder_mead(loss, start, 0.3, 400);
    q = nelder_mead(loss, q, 0.1, 400);
    problem.trial.efficiency = decode(q, hw.efficiency);
    rows[i].cross_validated_s = problem.latency(i);
  }
}

std::string format_efficiency_yaml(const EfficiencyModel& e) {
  return fmt::format(
      "efficiency:\n  matmul_peak_fraction: {:.4g}\n  matmul_half_rows: {:.4g}\n  "
      "memory_bandwidth_fraction: {:.4g}\n"
      "  collective_bandwidth_fraction: {:.4g}\n  weight_gather_overlap: {:.4g}\n"
      "  comm_overlap: {:.4g}\n  layer_overhead_s: {:.4g}\n"
      "  memory_reserve_fraction: {:.4g}\n",
      e.matmul_peak_fraction, e.matmul_half_rows, e.memory_bandwidth_fraction,
      e.collective_bandwidth_fraction, e.weight_gather_overlap, e.comm_overlap, e.layer_overhead_s,
      e.memory_reserve_fraction);
}

}  // namespace shardlm

namespace shardlm {

std::vector<FreeChoiceRow> free_choices(const PublishedSet& set, const HardwareSpec& hw) {
  const std::map<std::string, ModelSpec> models = load_models(set);
  // Results of one model, chip count, workload, phase and weight dtype.
  std::map<std::string, std::vector<const PublishedResult*>> groups;
  std::vector<std::string> order;
  for (const auto& p : set.results) {
    const Workload& w = p.workload;
    const std::string key = fmt::format(
        "{} on {} chips, B={} {}+{}, {}, {}", p.model, p.config.mesh.size(), w.batch, w.prompt_len,
        w.gen_len, p.both_phases ? "prefill + decode" : name(p.phase), p.config.weights);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(&p);
  }
  std::vector<FreeChoiceRow> rows;
  for (const std::string& key : order) {
    const auto& group = groups.at(key);
    const PublishedResult& best = **std::min_element(
        group.begin(), group.end(), [](const PublishedResult* a, const PublishedResult* b) {
          return a->latency_s < b->latency_s;
        });
    const ModelSpec& m = models.at(best.model);
    FreeChoiceRow row{key, best.label, best.latency_s, predict(m, hw, best), 0, "nothing fits"};
    PlanRequest req;
    req.workload = best.workload;
    req.chips = best.config.mesh.size();
    req.weights = best.config.weights;
    if (best.both_phases) {
      try {
        const Plan plan = make_plan(m, hw, req);
        row.free_s = plan.latency_s();
        row.free_setup =
            fmt::format("{}: prefill {} + {}, decode {} + {}", plan.mesh.str(),
                        name(plan.prefill.chosen.config.ffn), name(plan.prefill.chosen.config.attn),
                        name(plan.decode.chosen.config.ffn), name(plan.decode.chosen.config.attn));
      } catch (const DataError&) {
      }
    } else {
      for (const Mesh& mesh : candidate_meshes(m, hw, req, req.chips)) {
        const PhaseCost c = plan_phase(m, hw, req, best.phase, mesh, req.weights).chosen;
        if (!c.problem.empty() || (row.free_s > 0 && c.latency_s >= row.free_s)) continue;
        row.free_s = c.latency_s;
        row.free_setup =
            fmt::format("{}: {} + {}", mesh.str(), name(c.config.ffn), name(c.config.attn));
      }
    }
    rows.push_back(row);
  }
  return rows;
}

std::string format_free_choices(const std::vector<FreeChoiceRow>& rows) {
  std::string out =
      "| workload | fastest published | published s | its prediction s | free choice | "
      "predicted s | faster than published |\n|---|---|---:|---:|---|---:|---:|\n";
  double worst = -1;
  for (const auto& r : rows) {
    out += fmt::format("| {} | {} | {:.3g} | {:.3g} | {} | {} | {} |\n", r.what, r.best_label,
                       r.best_published_s, r.best_predicted_s, r.free_setup,
                       r.free_s > 0 ? fmt::format("{:.3g}", r.free_s) : "-",
                       r.free_s > 0 ? fmt::format("{:+.1f}%", r.speedup() * 100) : "-");
    if (r.free_s > 0) worst = std::max(worst, r.speedup());
  }
  out += fmt::format(
      "\nLargest predicted speed-up of a free choice over the fastest published "
      "configuration: {:+.1f}%.\n",
      worst * 100);
  return out;
}

}  // namespace shardlm
