#include "partitioning/measured_efficiency.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <tuple>

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

// Linear in x between the measured points (a collective's time is nearly
// affine in its bytes between neighbouring sizes), the first value below
// them, and the last segment's slope beyond them.
double interpolate_linear(const std::vector<std::pair<double, double>>& table, double x) {
  if (x <= table.front().first || table.size() == 1) return table.front().second;
  size_t i = 1;
  while (i + 1 < table.size() && x > table[i].first) ++i;
  const auto& [x0, y0] = table[i - 1];
  const auto& [x1, y1] = table[i];
  return y0 + (x - x0) * (y1 - y0) / (x1 - x0);
}

constexpr const char* kCollectiveKinds[] = {"all-gather", "all-reduce", "reduce-scatter",
                                            "all-to-all"};

MeasuredEfficiency::CollectiveTables read_collective_tables(const YamlFields& f,
                                                            const std::string& key) {
  MeasuredEfficiency::CollectiveTables out;
  if (!f.has(key)) return out;
  const YamlFields kinds = f.child(key);
  for (const char* kind : kCollectiveKinds)
    if (auto table = read_table(kinds, kind); !table.empty()) out[kind] = std::move(table);
  kinds.reject_unknown();
  return out;
}

int read_members(const YamlFields& f, const std::string& key, bool needed) {
  if (!f.has(key)) {
    if (needed)
      throw DataError(
          fmt::format("{}: expected the group size the collective tables were timed "
                      "over, beside them",
                      f.where(key)));
    return 0;
  }
  const int64_t members = f.positive_int(key);
  if (members < 2)
    throw DataError(
        fmt::format("{}: expected a group of at least 2, got {}", f.where(key), members));
  return static_cast<int>(members);
}

double read_seconds(const YamlFields& f, const std::string& key) {
  const double v = f.number(key, 0.0);
  if (v < 0) throw DataError(fmt::format("{}: expected >= 0 seconds, got {}", f.where(key), v));
  return v;
}

}  // namespace

double MeasuredEfficiency::matmul_flops(double rows, bool alone, bool bf16_activations) const {
  const bool bf16 = bf16_activations && !matmul_flops_by_rows_bf16.empty();
  const auto& all = bf16 ? matmul_flops_by_rows_bf16 : matmul_flops_by_rows;
  const auto& by_itself = bf16 ? matmul_flops_by_rows_bf16_alone : matmul_flops_by_rows_alone;
  return interpolate_log(alone && !by_itself.empty() ? by_itself : all, rows);
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

double MeasuredEfficiency::collective_s(const std::string& kind, double bytes, int members,
                                        bool spans_nodes, bool first) const {
  const CollectiveTables& tables =
      spans_nodes ? inter_node_collective_s_by_bytes : collective_s_by_bytes;
  const auto it = tables.find(kind);
  if (it == tables.end()) return 0.0;
  // A ring moves (K - 1) / K of the counted bytes through each member: a
  // group of another size is read off the table at the bytes that move.
  const int measured = spans_nodes ? inter_node_collective_members : collective_members;
  auto moving = [](double k) { return (k - 1) / k; };
  const double at = bytes * moving(members) / moving(measured);
  const double seconds = interpolate_linear(it->second, at);
  return first ? seconds : std::max(0.0, seconds - it->second.front().second);
}

MeasuredEfficiency MeasuredEfficiency::parse(const YamlFields& f) {
  MeasuredEfficiency m;
  m.matmul_flops_by_rows = read_table(f, "matmul_flops_by_rows");
  m.memory_Bps_by_bytes = read_table(f, "memory_Bps_by_bytes");
  m.matmul_flops_by_rows_alone = read_table(f, "matmul_flops_by_rows_alone");
  m.memory_Bps_by_bytes_alone = read_table(f, "memory_Bps_by_bytes_alone");
  m.attention_decode_flops_by_group = read_table(f, "attention_decode_flops_by_group");
  m.attention_decode_flops_by_group_alone = read_table(f, "attention_decode_flops_by_group_alone");
  m.matmul_flops_by_rows_bf16 = read_table(f, "matmul_flops_by_rows_bf16");
  m.matmul_flops_by_rows_bf16_alone = read_table(f, "matmul_flops_by_rows_bf16_alone");
  if ((!m.matmul_flops_by_rows_alone.empty() && m.matmul_flops_by_rows.empty()) ||
      (!m.matmul_flops_by_rows_bf16_alone.empty() && m.matmul_flops_by_rows_bf16.empty()) ||
      (!m.memory_Bps_by_bytes_alone.empty() && m.memory_Bps_by_bytes.empty()) ||
      (!m.attention_decode_flops_by_group_alone.empty() &&
       m.attention_decode_flops_by_group.empty()))
    throw DataError(fmt::format("{}: an _alone table needs the table of all ranks beside it",
                                f.where("matmul_flops_by_rows")));
  m.collective_s_by_bytes = read_collective_tables(f, "collective_s_by_bytes");
  m.inter_node_collective_s_by_bytes =
      read_collective_tables(f, "inter_node_collective_s_by_bytes");
  m.collective_members = read_members(f, "collective_members", !m.collective_s_by_bytes.empty());
  m.inter_node_collective_members =
      read_members(f, "inter_node_collective_members", !m.inter_node_collective_s_by_bytes.empty());
  m.layer_overhead_s = read_seconds(f, "layer_overhead_s");
  m.token_overhead_s = read_seconds(f, "token_overhead_s");
  if (f.has("overhead_width")) m.overhead_width = f.positive("overhead_width");
  m.collective_overhead_s = read_seconds(f, "collective_overhead_s");
  m.inter_node_collective_overhead_s = read_seconds(f, "inter_node_collective_overhead_s");
  m.weight_gather_s_per_byte = read_seconds(f, "weight_gather_s_per_byte");
  m.inter_node_s_per_byte = read_seconds(f, "inter_node_s_per_byte");
  for (auto [key, value] :
       {std::pair{"attention_decode_flops", &m.attention_decode_flops},
        std::pair{"attention_decode_flops_alone", &m.attention_decode_flops_alone}})
    if (f.has(key)) *value = f.positive(key);
  if (f.has("attention_read_overlap"))
    m.attention_read_overlap = f.fraction("attention_read_overlap");
  if (f.has("weight_read_fraction")) m.weight_read_fraction = f.fraction("weight_read_fraction");
  f.reject_unknown();
  return m;
}

std::string MeasuredEfficiency::to_yaml() const {
  if (!has_matmul() && !has_memory() && layer_overhead_s == 0 && token_overhead_s == 0 &&
      collective_overhead_s == 0 && inter_node_collective_overhead_s == 0 &&
      weight_gather_s_per_byte == 0 && attention_decode_flops == 0 &&
      attention_decode_flops_by_group.empty() && attention_read_overlap == 0 &&
      weight_read_fraction == 0 && inter_node_s_per_byte == 0 && collective_s_by_bytes.empty() &&
      inter_node_collective_s_by_bytes.empty())
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
  if (!matmul_flops_by_rows_bf16.empty())
    out += fmt::format("  matmul_flops_by_rows_bf16: {}\n", table(matmul_flops_by_rows_bf16));
  if (!matmul_flops_by_rows_bf16_alone.empty())
    out += fmt::format("  matmul_flops_by_rows_bf16_alone: {}\n",
                       table(matmul_flops_by_rows_bf16_alone));
  out += fmt::format(
      "  layer_overhead_s: {:.4g}\n  token_overhead_s: {:.4g}\n  collective_overhead_s: {:.4g}\n",
      layer_overhead_s, token_overhead_s, collective_overhead_s);
  if (overhead_width > 0) out += fmt::format("  overhead_width: {:.0f}\n", overhead_width);
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
  if (attention_read_overlap > 0)
    out += fmt::format("  attention_read_overlap: {:.3g}\n", attention_read_overlap);
  if (weight_read_fraction > 0)
    out += fmt::format("  weight_read_fraction: {:.3g}\n", weight_read_fraction);
  for (auto [key, members, tables] :
       {std::tuple{"collective", collective_members, &collective_s_by_bytes},
        std::tuple{"inter_node_collective", inter_node_collective_members,
                   &inter_node_collective_s_by_bytes}}) {
    if (tables->empty()) continue;
    out += fmt::format("  {}_members: {}\n  {}_s_by_bytes:\n", key, members, key);
    for (const auto& [kind, t] : *tables) out += fmt::format("    {}: {}\n", kind, table(t));
  }
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
