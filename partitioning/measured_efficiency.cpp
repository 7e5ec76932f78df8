#include "partitioning/measured_efficiency.hpp"

#include <fmt/core.h>

#include <cmath>

#include "partitioning/yaml_fields.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

namespace {

// Linear in log(x) between the measured points, flat beyond them.
double interpolate_log(const std::vector<std::pair<double, double>>& table, double x) {
  if (x <= table.front().first) return table.front().second;
  if (x >= table.back().first) return table.back().second;
  for (size_t i = 1; i < table.size(); ++i) {
    const auto& [x1, y1] = table[i];
    if (x > x1) continue;
    const auto& [x0, y0] = table[i - 1];
    const double t = std::log(x / x0) / std::log(x1 / x0);
    return y0 + t * (y1 - y0);
  }
  return table.back().second;
}

std::vector<std::pair<double, double>> read_table(const YamlFields& f, const std::string& key) {
  std::vector<std::pair<double, double>> out;
  if (!f.has(key)) return out;
  const YAML::Node n = f.node(key);
  const std::string expected = "expected a list of [x, value] pairs, x increasing, values positive";
  if (!n.IsSequence() || n.size() == 0)
    throw DataError(fmt::format("{}: {}", f.where(key), expected));
  for (const auto& pair : n) {
    double x = 0, y = 0;
    try {
      if (!pair.IsSequence() || pair.size() != 2) throw YAML::Exception({}, "");
      x = pair[0].as<double>();
      y = pair[1].as<double>();
    } catch (const YAML::Exception&) {
      throw DataError(fmt::format("{}: {}", f.where(key), expected));
    }
    if (x <= 0 || y <= 0 || (!out.empty() && x <= out.back().first))
      throw DataError(fmt::format("{}: {} (at [{}, {}])", f.where(key), expected, x, y));
    out.emplace_back(x, y);
  }
  return out;
}

double read_seconds(const YamlFields& f, const std::string& key) {
  const double v = f.number(key, 0.0);
  if (v < 0) throw DataError(fmt::format("{}: expected >= 0 seconds, got {}", f.where(key), v));
  return v;
}

}  // namespace

double MeasuredEfficiency::matmul_flops(double rows, bool alone) const {
  const bool use_alone = alone && !matmul_flops_by_rows_alone.empty();
  return interpolate_log(use_alone ? matmul_flops_by_rows_alone : matmul_flops_by_rows, rows);
}

double MeasuredEfficiency::memory_Bps(double working_set_bytes, bool alone) const {
  const bool use_alone = alone && !memory_Bps_by_bytes_alone.empty();
  return interpolate_log(use_alone ? memory_Bps_by_bytes_alone : memory_Bps_by_bytes,
                         working_set_bytes);
}

double MeasuredEfficiency::attention_decode_rate(bool alone, double group) const {
  if (!attention_decode_flops_by_group.empty()) {
    const bool use_alone = alone && !attention_decode_flops_by_group_alone.empty();
    return interpolate_log(
        use_alone ? attention_decode_flops_by_group_alone : attention_decode_flops_by_group, group);
  }
  return alone && attention_decode_flops_alone > 0 ? attention_decode_flops_alone
                                                   : attention_decode_flops;
}

MeasuredEfficiency MeasuredEfficiency::parse(const YamlFields& f) {
  MeasuredEfficiency m;
  m.matmul_flops_by_rows = read_table(f, "matmul_flops_by_rows");
  m.memory_Bps_by_bytes = read_table(f, "memory_Bps_by_bytes");
  m.matmul_flops_by_rows_alone = read_table(f, "matmul_flops_by_rows_alone");
  m.memory_Bps_by_bytes_alone = read_table(f, "memory_Bps_by_bytes_alone");
  m.attention_decode_flops_by_group = read_table(f, "attention_decode_flops_by_group");
  m.attention_decode_flops_by_group_alone = read_table(f, "attention_decode_flops_by_group_alone");
  if ((!m.matmul_flops_by_rows_alone.empty() && m.matmul_flops_by_rows.empty()) ||
      (!m.memory_Bps_by_bytes_alone.empty() && m.memory_Bps_by_bytes.empty()) ||
      (!m.attention_decode_flops_by_group_alone.empty() &&
       m.attention_decode_flops_by_group.empty()))
    throw DataError(fmt::format("{}: an _alone table needs the table of all ranks beside it",
                                f.where("matmul_flops_by_rows")));
  m.layer_overhead_s = read_seconds(f, "layer_overhead_s");
  m.token_overhead_s = read_seconds(f, "token_overhead_s");
  m.collective_overhead_s = read_seconds(f, "collective_overhead_s");
  m.inter_node_collective_overhead_s = read_seconds(f, "inter_node_collective_overhead_s");
  m.weight_gather_s_per_byte = read_seconds(f, "weight_gather_s_per_byte");
  m.inter_node_s_per_byte = read_seconds(f, "inter_node_s_per_byte");
  for (auto [key, value] :
       {std::pair{"attention_decode_flops", &m.attention_decode_flops},
        std::pair{"attention_decode_flops_alone", &m.attention_decode_flops_alone}})
    if (f.has(key)) *value = f.positive(key);
  f.reject_unknown();
  return m;
}

std::string MeasuredEfficiency::to_yaml() const {
  if (!has_matmul() && !has_memory() && layer_overhead_s == 0 && token_overhead_s == 0 &&
      collective_overhead_s == 0 && inter_node_collective_overhead_s == 0 &&
      weight_gather_s_per_byte == 0 && attention_decode_flops == 0 &&
      attention_decode_flops_by_group.empty() && inter_node_s_per_byte == 0)
    return "";
  auto table = [](const std::vector<std::pair<double, double>>& t) {
    std::string s = "[";
    for (size_t i = 0; i < t.size(); ++i)
      s += fmt::format("{}[{:.6g}, {:.4g}]", i ? ", " : "", t[i].first, t[i].second);
    return s + "]";
  };
  std::string out = "measured:\n";
  if (has_matmul()) out += fmt::format("  matmul_flops_by_rows: {}\n", table(matmul_flops_by_rows));
  if (has_memory()) out += fmt::format("  memory_Bps_by_bytes: {}\n", table(memory_Bps_by_bytes));
  if (!matmul_flops_by_rows_alone.empty())
    out += fmt::format("  matmul_flops_by_rows_alone: {}\n", table(matmul_flops_by_rows_alone));
  if (!memory_Bps_by_bytes_alone.empty())
    out += fmt::format("  memory_Bps_by_bytes_alone: {}\n", table(memory_Bps_by_bytes_alone));
  out += fmt::format(
      "  layer_overhead_s: {:.4g}\n  token_overhead_s: {:.4g}\n  collective_overhead_s: {:.4g}\n",
      layer_overhead_s, token_overhead_s, collective_overhead_s);
  if (attention_decode_flops > 0)
    out += fmt::format("  attention_decode_flops: {:.4g}\n", attention_decode_flops);
  if (attention_decode_flops_alone > 0)
    out += fmt::format("  attention_decode_flops_alone: {:.4g}\n", attention_decode_flops_alone);
  if (!attention_decode_flops_by_group.empty())
    out += fmt::format("  attention_decode_flops_by_group: {}\n",
                       table(attention_decode_flops_by_group));
  if (!attention_decode_flops_by_group_alone.empty())
    out += fmt::format("  attention_decode_flops_by_group_alone: {}\n",
                       table(attention_decode_flops_by_group_alone));
  if (weight_gather_s_per_byte > 0)
    out += fmt::format("  weight_gather_s_per_byte: {:.4g}\n", weight_gather_s_per_byte);
  if (inter_node_s_per_byte > 0)
    out += fmt::format("  inter_node_s_per_byte: {:.4g}\n", inter_node_s_per_byte);
  if (inter_node_collective_overhead_s > 0)
    out += fmt::format("  inter_node_collective_overhead_s: {:.4g}\n",
                       inter_node_collective_overhead_s);
  return out;
}

}  // namespace shardlm
