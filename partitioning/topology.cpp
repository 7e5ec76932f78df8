#include "partitioning/topology.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace shardlm {

std::string TorusSlice::str() const {
  return fmt::format("{}x{}x{}", shape[0], shape[1], shape[2]);
}

TorusSlice TorusSlice::parse(std::string_view text, int wrap_multiple) {
  TorusSlice s;
  size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t end = text.find('x', pos);
    if ((i < 2) != (end != std::string_view::npos))
      throw std::invalid_argument(fmt::format("slice '{}': expected AxBxC, e.g. 4x4x8", text));
    const std::string_view part =
        text.substr(pos, end == std::string_view::npos ? text.npos : end - pos);
    auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), s.shape[size_t(i)]);
    if (ec != std::errc() || ptr != part.data() + part.size() || s.shape[size_t(i)] < 1)
      throw std::invalid_argument(
          fmt::format("slice '{}': '{}' is not a positive integer", text, part));
    pos = end + 1;
  }
  s.wraps =
      std::all_of(s.shape.begin(), s.shape.end(), [&](int l) { return l % wrap_multiple == 0; });
  return s;
}

namespace {

// One physical axis of length `length`: its bandwidth and ring hops.
TorusLinks axis_links(int length, bool wraps, double link_bandwidth, int links_per_axis) {
  if (length < 2) return {};
  // A ring of 2 is a line: the two chips share one link each way.
  const bool ring = wraps && length > 2;
  return {link_bandwidth * links_per_axis / (ring ? 1.0 : 2.0), ring ? length / 2 : length - 1};
}

}  // namespace

TorusLinks torus_links(const SliceMapping& m, std::string_view axes, double link_bandwidth,
                       int links_per_axis) {
  TorusLinks out;
  std::vector<std::pair<double, int>> rings;  // bandwidth, length of each physical axis used
  for (size_t i = 0; i < 3; ++i) {
    if (!m.axis_of[i] || axes.find(m.axis_of[i]) == std::string_view::npos) continue;
    const TorusLinks a =
        axis_links(m.slice.shape[i], m.slice.wraps, link_bandwidth, links_per_axis);
    if (a.hops == 0) continue;
    rings.emplace_back(a.bandwidth, m.slice.shape[i]);
    out.hops += a.hops;
  }
  if (rings.empty()) return out;
  // One ring per physical axis in turn, the fastest last: it moves the most.
  // Stage j of an all-gather over K chips moves (P_j - P_{j-1}) / K of the
  // output, P_j the product of the lengths so far; the whole moves (K-1)/K.
  std::sort(rings.begin(), rings.end());
  double k = 1;
  for (const auto& r : rings) k *= r.second;
  double before = 1, seconds_per_byte = 0;
  for (const auto& [bandwidth, length] : rings) {
    seconds_per_byte += (before * length - before) / k / bandwidth;
    before *= length;
  }
  out.bandwidth = (k - 1) / k / seconds_per_byte;
  return out;
}

std::optional<SliceMapping> map_mesh(const TorusSlice& slice, const Mesh& mesh,
                                     double link_bandwidth, int links_per_axis) {
  if (slice.chips() != mesh.size()) return std::nullopt;
  static constexpr char kAxes[] = {'p', 'x', 'y', 'z'};
  std::optional<SliceMapping> best;
  double best_slowest = -1, best_total = -1;
  // Each physical axis longer than 1 goes to one of the four mesh axes.
  for (int code = 0; code < 64; ++code) {
    SliceMapping m{slice, {0, 0, 0}};
    int size[4] = {1, 1, 1, 1};
    bool once = true;  // a length-1 physical axis has one assignment: none
    for (size_t i = 0, c = size_t(code); i < 3; ++i, c /= 4) {
      if (slice.shape[i] == 1) {
        once = once && c % 4 == 0;
        continue;
      }
      m.axis_of[i] = kAxes[c % 4];
      size[c % 4] *= slice.shape[i];
    }
    if (!once || size[0] != mesh.pp || size[1] != mesh.x || size[2] != mesh.y || size[3] != mesh.z)
      continue;
    double slowest = 1e300, total = 0;
    for (char a : {'x', 'y', 'z'}) {
      if (mesh.axis_size(a) == 1) continue;
      const double bw = torus_links(m, std::string(1, a), link_bandwidth, links_per_axis).bandwidth;
      slowest = std::min(slowest, bw);
      total += bw;
    }
    if (slowest > best_slowest || (slowest == best_slowest && total > best_total))
      best = m, best_slowest = slowest, best_total = total;
  }
  return best;
}

std::vector<Mesh> formable_meshes(const TorusSlice& slice, int pp) {
  std::vector<Mesh> out;
  if (slice.chips() % pp) return out;
  for (const Mesh& m : Mesh::factorizations(slice.chips() / pp, pp))
    if (map_mesh(slice, m, 1, 2)) out.push_back(m);
  return out;
}

}  // namespace shardlm
