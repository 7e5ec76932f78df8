#include "partitioning/paper_fit.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

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
  YAML::Node list = YAML::LoadFile(file)["results"];
  if (!list || !list.IsSequence())
    throw DataError(fmt::format("{}: expected a list", f.where("results")));
  for (size_t i = 0; i < list.size(); ++i) {
    YamlFields r(list[i], file, fmt::format("results[{}].", i));
    PublishedResult p;
    p.label = r.text("label");
    p.model = r.text("model");
    const std::string phase = r.text("phase");
    if (phase != "prefill" && phase != "decode" && phase != "both")
      throw DataError(fmt::format("{}: expected prefill, decode or both", r.where("phase")));
    p.phase = phase == "prefill" ? Phase::kPrefill : Phase::kDecode;
    p.both_phases = phase == "both";
    p.workload = {r.positive_int("batch"), r.positive_int("prompt_len"), r.positive_int("gen_len")};
    try {
      p.config = {parse_ffn_layout(r.text("ffn")), parse_attn_layout(r.text("attn")),
                  r.text("weights"), Mesh::parse(r.text("mesh"))};
    } catch (const std::invalid_argument& e) {
      throw DataError(fmt::format("{}results[{}]: {}", file + ": ", i, e.what()));
    }
    p.latency_s = r.positive("latency_s");
    r.positive_int("table", 1);  // which table of the paper: documentation only
    r.reject_unknown();
    set.results.push_back(std::move(p));
  }
  return set;
}

ModelSpec PublishedSet::model(const std::string& name) const {
  const auto local = std::filesystem::path(config_root) / "models" / (name + ".yaml");
  std::error_code ec;
  return std::filesystem::is_regular_file(local, ec) ? ModelSpec::load_yaml(local.string())
                                                     : ModelSpec::resolve(name);
}

double predict(const ModelSpec& m, const HardwareSpec& hw, const PublishedResult& p) {
  double t = estimate_phase(m, hw, p.workload, p.phase, p.config).latency_s;
  if (p.both_phases) t += estimate_phase(m, hw, p.workload, Phase::kPrefill, p.config).latency_s;
  return t;
}

std::vector<FidelityRow> evaluate(const PublishedSet& set, const HardwareSpec& hw) {
  std::map<std::string, ModelSpec> models;
  HardwareSpec ideal = hw;
  ideal.efficiency = EfficiencyModel{};
  ideal.efficiency.memory_reserve_fraction = hw.efficiency.memory_reserve_fraction;
  std::vector<FidelityRow> rows;
  for (const auto& p : set.results) {
    if (!models.count(p.model)) models.emplace(p.model, set.model(p.model));
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
  std::string out = fmt::format(
      "| published result ({}) | mesh | layout | published s | predicted s | error | roofline s | "
      "predicted MFU |\n|---|---|---|---:|---:|---:|---:|---:|\n",
      hw.name);
  double sum_sq = 0, worst = 0;
  for (const auto& r : rows) {
    const auto& p = r.published;
    out += fmt::format(
        "| {} | {},{},{} | {} + {} | {:.3g} | {:.3g} | {:+.1f}% | {:.3g} | {:.1f}% |\n", p.label,
        p.config.mesh.x, p.config.mesh.y, p.config.mesh.z, name(p.config.ffn), name(p.config.attn),
        p.latency_s, r.predicted_s, r.error() * 100, r.roofline_s, r.predicted_mfu * 100);
    sum_sq += std::pow(std::log(r.predicted_s / p.latency_s), 2);
    worst = std::max(worst, std::abs(r.error()));
  }
  out += fmt::format("\nRMS log error {:.3f}; largest error {:.1f}%.\n",
                     std::sqrt(sum_sq / rows.size()), worst * 100);
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

HardwareSpec fit_efficiency(const PublishedSet& set, const HardwareSpec& hw) {
  std::map<std::string, ModelSpec> models;
  for (const auto& p : set.results)
    if (!models.count(p.model)) models.emplace(p.model, set.model(p.model));
  HardwareSpec trial = hw;
  auto loss = [&](const Vec& q) {
    trial.efficiency = decode(q, hw.efficiency);
    double sum = 0;
    for (const auto& p : set.results) {
      sum += std::pow(std::log(predict(models.at(p.model), trial, p) / p.latency_s), 2);
    }
    return sum;
  };
  Vec best{};
  double best_loss = std::numeric_limits<double>::infinity();
  // A coarse grid of starts, then polish the best few times.
  for (double mm : {0.0, 2.0})
    for (double half : {3.0, 6.0})
      for (double mem : {0.0, 2.0})
        for (double net : {-1.0, 1.0})
          for (double ov : {-1.0, 1.0})
            for (double oh : {-12.0, -9.0}) {
              Vec q = nelder_mead(loss, {mm, half, mem, net, ov, oh}, 0.5, 400);
              double l = loss(q);
              if (l < best_loss) best_loss = l, best = q;
            }
  for (int round = 0; round < 3; ++round) best = nelder_mead(loss, best, 0.2, 1500);
  HardwareSpec out = hw;
  out.efficiency = decode(best, hw.efficiency);
  return out;
}

std::string format_efficiency_yaml(const EfficiencyModel& e) {
  return fmt::format(
      "efficiency:\n  matmul_peak_fraction: {:.4g}\n  matmul_half_rows: {:.4g}\n  "
      "memory_bandwidth_fraction: {:.4g}\n"
      "  collective_bandwidth_fraction: {:.4g}\n  comm_overlap: {:.4g}\n  layer_overhead_s: "
      "{:.4g}\n"
      "  memory_reserve_fraction: {:.4g}\n",
      e.matmul_peak_fraction, e.matmul_half_rows, e.memory_bandwidth_fraction,
      e.collective_bandwidth_fraction, e.comm_overlap, e.layer_overhead_s,
      e.memory_reserve_fraction);
}

}  // namespace shardlm
