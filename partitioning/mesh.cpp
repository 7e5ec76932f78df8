#include "partitioning/mesh.hpp"

#include <fmt/core.h>

#include <charconv>
#include <stdexcept>

namespace shardlm {

int Mesh::axis_size(char axis) const {
  switch (axis) {
    case 'x': return x;
    case 'y': return y;
    case 'z': return z;
  }
  throw std::invalid_argument(fmt::format("unknown mesh axis '{}' (expected x, y or z)", axis));
}

int Mesh::axes_size(std::string_view axes) const {
  int product = 1;
  for (char a : axes) product *= axis_size(a);
  return product;
}

std::string Mesh::splitting(std::string_view axes) const {
  std::string out;
  for (char a : axes)
    if (axis_size(a) > 1) out += a;
  return out;
}

MeshCoord Mesh::coord(int rank) const {
  if (rank < 0 || rank >= size())
    throw std::invalid_argument(fmt::format("rank {} outside mesh of {} ranks", rank, size()));
  MeshCoord c;
  c.x = rank % x;
  c.y = (rank / x) % y;
  c.z = (rank / (x * y)) % z;
  c.pp = rank / tp_size();
  return c;
}

int Mesh::rank(const MeshCoord& c) const {
  return c.x + x * (c.y + y * (c.z + z * c.pp));
}

static int& coord_of(MeshCoord& c, char axis) {
  switch (axis) {
    case 'x': return c.x;
    case 'y': return c.y;
    case 'z': return c.z;
  }
  throw std::invalid_argument(fmt::format("unknown mesh axis '{}'", axis));
}

std::vector<int> Mesh::group(int rank_id, std::string_view axes) const {
  const MeshCoord base = coord(rank_id);
  std::vector<int> ranks;
  const int n = axes_size(axes);
  ranks.reserve(n);
  for (int index = 0; index < n; ++index) {
    MeshCoord c = base;
    // Decode `index` with the last named axis least significant.
    int rest = index;
    for (auto it = axes.rbegin(); it != axes.rend(); ++it) {
      const int s = axis_size(*it);
      coord_of(c, *it) = rest % s;
      rest /= s;
    }
    ranks.push_back(rank(c));
  }
  return ranks;
}

int Mesh::group_index(int rank_id, std::string_view axes) const {
  MeshCoord c = coord(rank_id);
  int index = 0;
  for (char a : axes) index = index * axis_size(a) + coord_of(c, a);
  return index;
}

std::string Mesh::str() const {
  std::string tp = fmt::format("x={} y={} z={}", x, y, z);
  return pp > 1 ? fmt::format("pp={} {}", pp, tp) : tp;
}

Mesh Mesh::parse(std::string_view text) {
  Mesh m;
  int* fields[3] = {&m.x, &m.y, &m.z};
  size_t pos = 0;
  for (int i = 0; i < 3; ++i) {
    size_t end = text.find(',', pos);
    if ((i < 2) != (end != std::string_view::npos))
      throw std::invalid_argument(fmt::format("mesh '{}': expected X,Y,Z, e.g. 4,4,4", text));
    std::string_view part = text.substr(pos, end == std::string_view::npos ? text.npos : end - pos);
    auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), *fields[i]);
    if (ec != std::errc() || ptr != part.data() + part.size() || *fields[i] < 1)
      throw std::invalid_argument(
          fmt::format("mesh '{}': '{}' is not a positive integer", text, part));
    pos = end + 1;
  }
  return m;
}

std::vector<Mesh> Mesh::factorizations(int n_tp, int pp) {
  std::vector<Mesh> out;
  for (int x = 1; x <= n_tp; ++x) {
    if (n_tp % x) continue;
    for (int y = 1; y <= n_tp / x; ++y) {
      if ((n_tp / x) % y) continue;
      out.push_back(Mesh{pp, x, y, n_tp / x / y});
    }
  }
  return out;
}

}  // namespace shardlm
