#include "partitioning/hardware.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "partitioning/yaml_fields.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

double HardwareSpec::peak(const std::string& dtype) const {
  auto it = peak_flops.find(dtype);
  if (it == peak_flops.end())
    throw DataError(fmt::format("{}: key 'peak_flops.{}' is missing (matmuls in {} need it)",
                                source_file, dtype, dtype));
  return it->second;
}

int HardwareSpec::node_of(int rank, int ranks) const {
  // The job's own placement holds for the job's size only (the planner also
  // prices other sizes).
  if (rank_nodes.size() == size_t(ranks)) return rank_nodes[size_t(rank)];
  if (!map_by_node) return rank / chips_per_node;
  const int nodes = (ranks + chips_per_node - 1) / chips_per_node;
  return rank % nodes;
}

bool HardwareSpec::group_spans_nodes(const Mesh& mesh, const std::string& axes) const {
  for (int r = 0; r < mesh.size(); ++r) {
    if (mesh.group_index(r, axes) != 0) continue;  // each group once, from its first member
    const int first = node_of(r, mesh.size());
    for (int m : mesh.group(r, axes))
      if (node_of(m, mesh.size()) != first) return true;
  }
  return false;
}

int HardwareSpec::group_members_per_node(const Mesh& mesh, const std::string& axes) const {
  int most = 0;
  for (int r = 0; r < mesh.size(); ++r) {
    if (mesh.group_index(r, axes) != 0) continue;
    std::map<int, int> on;
    for (int m : mesh.group(r, axes)) most = std::max(most, ++on[node_of(m, mesh.size())]);
  }
  return most;
}

std::optional<TorusSlice> HardwareSpec::slice_of(int chips) const {
  for (const TorusSlice& s : torus_slices)
    if (s.chips() == chips) return s;
  return std::nullopt;
}

std::optional<SliceMapping> HardwareSpec::slice_mapping(const Mesh& mesh) const {
  const auto slice = slice_of(mesh.size());
  if (topology != "torus" || !slice) return std::nullopt;
  return map_mesh(*slice, mesh, link_bandwidth, links_per_axis);
}

double HardwareSpec::collective_traffic_fraction(const Mesh& mesh, const std::string& axes) const {
  if (topology != "torus" || !torus_per_axis || !slice_mapping(mesh)) return 1.0;
  const double k = mesh.axes_size(axes);
  return (k - 1) / k;
}

int HardwareSpec::collective_hops(const Mesh& mesh, const std::string& axes) const {
  if (topology == "torus") {
    if (const auto m = slice_mapping(mesh))
      return torus_links(*m, axes, link_bandwidth, links_per_axis).hops;
    int hops = 0;  // each mesh axis its own ring
    for (char a : axes) hops += mesh.axis_size(a) / 2;
    return hops;
  }
  return mesh.axes_size(axes) - 1;
}

double HardwareSpec::collective_bandwidth(const Mesh& mesh, const std::string& axes) const {
  if (topology == "torus") {
    if (torus_per_axis)
      if (const auto m = slice_mapping(mesh)) {
        const double bw = torus_links(*m, axes, link_bandwidth, links_per_axis).bandwidth;
        if (bw > 0) return bw;
      }
    int long_axes = 3;
    if (torus_per_axis) {
      long_axes = 0;
      for (char a : axes) long_axes += mesh.axis_size(a) > 1;
    }
    return std::max(1, long_axes) * links_per_axis * link_bandwidth;
  }
  const int n = mesh.size();
  std::map<int, int> ranks_on;  // node -> ranks of the job there
  for (int r = 0; r < n; ++r) ++ranks_on[node_of(r, n)];
  const double cards = nics_per_node > 0 ? nics_per_node : chips_per_node;
  double slowest = intra_node_bandwidth;
  for (int r = 0; r < n; ++r) {
    if (mesh.group_index(r, axes) != 0) continue;
    std::map<int, int> members_on;
    for (int m : mesh.group(r, axes)) ++members_on[node_of(m, n)];
    if (members_on.size() < 2) continue;
    // NCCL-style collectives run one ring or tree per network card, so what
    // crosses a node boundary moves over every card there at once; the
    // groups with members on the node share those cards.
    for (const auto& [node, members] : members_on) {
      const double on_node = ranks_on[node];
      const double share = inter_node_bandwidth * std::min(cards, on_node) * members / on_node;
      slowest = std::min(slowest, share);
    }
  }
  return slowest;
}

double HardwareSpec::collective_latency(const Mesh& mesh, const std::string& axes) const {
  const double hops = hop_latency > 0 ? hop_latency * collective_hops(mesh, axes) : 0.0;
  if (topology == "torus") return intra_node_latency + hops;
  return (group_spans_nodes(mesh, axes) ? inter_node_latency : intra_node_latency) + hops;
}

double HardwareSpec::send_seconds(const Mesh& mesh, int from, int to, double bytes) const {
  if (topology == "torus") return intra_node_latency + bytes / link_bandwidth;
  if (node_of(from, mesh.size()) == node_of(to, mesh.size()))
    return intra_node_latency + bytes / intra_node_bandwidth;
  return inter_node_latency + bytes / std::min(intra_node_bandwidth, inter_node_bandwidth);
}

std::string HardwareSpec::mesh_problem(const Mesh& mesh) const {
  if (mesh.size() > max_chips)
    return fmt::format("{} chips exceed {}'s maximum of {}", mesh.size(), name, max_chips);
  for (char a : std::string("xyz")) {
    int s = mesh.axis_size(a);
    if (s > 1 && s < min_axis_size)
      return fmt::format("axis {} of size {} is below {}'s minimum axis size {}", a, s, name,
                         min_axis_size);
  }
  if (topology == "torus" && !torus_slices.empty()) {
    const auto slice = slice_of(mesh.size());
    if (!slice) {
      std::vector<std::string> sizes;
      for (const TorusSlice& t : torus_slices) sizes.push_back(std::to_string(t.chips()));
      return fmt::format("{} has no slice of {} chips (slices of {})", name, mesh.size(),
                         fmt::join(sizes, ", "));
    }
    if (!slice_mapping(mesh))
      return fmt::format(
          "mesh {} (pp={}) cannot be formed on the {} slice: each mesh axis must be whole "
          "physical axes",
          mesh.str(), mesh.pp, slice->str());
  }
  return "";
}

std::string resolve_config(const std::string& name_or_path, const std::string& kind) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(name_or_path, ec)) return name_or_path;
  std::vector<fs::path> roots = {"configs"};
  // Next to the binary too (build-dir/shardlm finds ../configs), so the CLI
  // works from any working directory.
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.root_path();
       dir = dir.parent_path())
    if (std::error_code missing; fs::is_directory(dir / "configs", missing)) {
      roots.push_back(dir / "configs");
      break;
    }
  if (const char* env = std::getenv("SHARDLM_CONFIGS")) roots.insert(roots.begin(), env);
  for (const auto& root : roots) {
    fs::path p = root / kind / (name_or_path + ".yaml");
    if (std::error_code missing; fs::is_regular_file(p, missing)) return p.string();
  }
  std::set<std::string> known;
  for (const auto& root : roots) {
    for (const auto& e : fs::directory_iterator(root / kind, ec))
      if (e.path().extension() == ".yaml") known.insert(e.path().stem().string());
  }
  const std::string singular = kind == "models" ? "model" : kind;
  throw DataError(fmt::format("{} '{}': no such file, and no configs/{}/{}.yaml (known: {})",
                              singular, name_or_path, kind, name_or_path,
                              known.empty() ? "none" : fmt::format("{}", fmt::join(known, ", "))));
}
HardwareSpec HardwareSpec::load(const std::string& file) {
  return from_yaml(YamlFields::load_file(file));
}

HardwareSpec HardwareSpec::from_yaml(const YamlFields& f) {
  HardwareSpec h;
  h.source_file = f.file();
  h.name = f.text("name");
  const YamlFields peaks = f.child("peak_flops");
  for (const char* dtype : {"bf16", "int8", "f32"})
    if (peaks.has(dtype)) h.peak_flops[dtype] = peaks.positive(dtype);
  if (h.peak_flops.empty())
    throw DataError(fmt::format("{} needs at least one of bf16, int8, f32", f.where("peak_flops")));
  const YamlFields mem = f.child("memory");
  h.memory_bytes = mem.positive("capacity_bytes");
  h.memory_bandwidth = mem.positive("bandwidth_Bps");
  h.chips_per_node = static_cast<int>(f.positive_int("chips_per_node"));
  h.max_chips = static_cast<int>(f.positive_int("max_chips", h.max_chips));
  h.activation_dtype = f.text("activation_dtype", "bf16");
  h.nodes_share_cores = f.flag("nodes_share_cores", false);
  if (f.has("cpu_streaming_max_rows"))
    h.cpu_streaming_max_rows = f.positive_int("cpu_streaming_max_rows");
  if (f.has("cpu_amx_streaming_max_rows"))
    h.cpu_amx_streaming_max_rows = f.positive_int("cpu_amx_streaming_max_rows");
  if (!h.peak_flops.count(h.activation_dtype))
    throw DataError(fmt::format("{}: '{}' has no peak_flops entry", f.where("activation_dtype"),
                                h.activation_dtype));
  const YamlFields net = f.child("interconnect");
  h.topology = net.text("topology");
  h.min_axis_size = static_cast<int>(net.positive_int("min_axis_size", 1));
  h.intra_node_latency = net.number("latency_s", 0.0);
  h.hop_latency = net.number("hop_latency_s", 0.0);
  if (h.hop_latency < 0)
    throw DataError(fmt::format("{}: expected >= 0 seconds", net.where("hop_latency_s")));
  if (h.topology == "torus") {
    h.link_bandwidth = net.positive("link_bandwidth_Bps");
    h.links_per_axis = static_cast<int>(net.positive_int("links_per_axis", 2));
    const std::string per = net.text("bandwidth_per", "chip");
    if (per != "chip" && per != "axis")
      throw DataError(
          fmt::format("{}: expected 'chip' or 'axis', got '{}'", net.where("bandwidth_per"), per));
    h.torus_per_axis = per == "axis";
    if (net.has("slices")) {
      const int wrap = static_cast<int>(net.positive_int("wraparound_multiple", 4));
      const YAML::Node list = net.node("slices");
      if (!list.IsSequence() || list.size() == 0)
        throw DataError(fmt::format("{}: expected a list of slice shapes, e.g. [2x2x2, 4x4x4]",
                                    net.where("slices")));
      for (const auto& item : list) {
        try {
          h.torus_slices.push_back(TorusSlice::parse(item.as<std::string>(), wrap));
        } catch (const std::exception& e) {
          throw DataError(fmt::format("{}: {}", net.where("slices"), e.what()));
        }
      }
    }
    h.inter_node_latency = h.intra_node_latency;
  } else if (h.topology == "switched") {
    h.intra_node_bandwidth = net.positive("intra_node_bandwidth_Bps");
    h.inter_node_bandwidth = net.positive("inter_node_bandwidth_Bps");
    h.inter_node_latency = net.number("inter_node_latency_s", h.intra_node_latency);
    h.nics_per_node = static_cast<int>(net.positive_int("nics_per_node", 0));
  } else {
    throw DataError(fmt::format("{}: expected 'torus' or 'switched', got '{}'",
                                net.where("topology"), h.topology));
  }
  if (f.has("efficiency")) {
    YamlFields e = f.child("efficiency");
    EfficiencyModel& m = h.efficiency;
    m.matmul_peak_fraction = e.fraction("matmul_peak_fraction", m.matmul_peak_fraction);
    m.matmul_half_rows = e.number("matmul_half_rows", m.matmul_half_rows);
    m.memory_bandwidth_fraction =
        e.fraction("memory_bandwidth_fraction", m.memory_bandwidth_fraction);
    m.collective_bandwidth_fraction =
        e.fraction("collective_bandwidth_fraction", m.collective_bandwidth_fraction);
    m.comm_overlap = e.number("comm_overlap", m.comm_overlap);
    m.weight_gather_overlap = e.number("weight_gather_overlap", m.weight_gather_overlap);
    if (m.weight_gather_overlap < 0 || m.weight_gather_overlap > 1)
      throw DataError(
          fmt::format("{}: expected a fraction in [0, 1]", e.where("weight_gather_overlap")));
    m.layer_overhead_s = e.number("layer_overhead_s", m.layer_overhead_s);
    m.memory_reserve_fraction = e.number("memory_reserve_fraction", m.memory_reserve_fraction);
    if (m.matmul_half_rows < 0)
      throw DataError(fmt::format("{}: expected >= 0", e.where("matmul_half_rows")));
    if (m.comm_overlap < 0 || m.comm_overlap > 1)
      throw DataError(fmt::format("{}: expected a fraction in [0, 1]", e.where("comm_overlap")));
    if (m.layer_overhead_s < 0)
      throw DataError(fmt::format("{}: expected >= 0 seconds", e.where("layer_overhead_s")));
    if (m.memory_reserve_fraction < 0 || m.memory_reserve_fraction >= 1)
      throw DataError(
          fmt::format("{}: expected a fraction in [0, 1)", e.where("memory_reserve_fraction")));
    e.reject_unknown();
  }
  if (f.has("measured")) h.measured = MeasuredEfficiency::parse(f.child("measured"));
  for (const YamlFields* section : {&f, &peaks, &mem, &net}) section->reject_unknown();
  return h;
}

}  // namespace shardlm
