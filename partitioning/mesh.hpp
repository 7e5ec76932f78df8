#pragma once
// A device mesh is a value: {pp, x, y, z}. Tensor-parallel (TP) axes x, y, z
// carry the paper's layouts; pp is the pipeline axis.
//
// Rank order (as FasterTransformer and TensorRT-LLM do): x varies fastest,
// then y, then z, and the pipeline stage slowest:
//
//   rank = x + X * (y + Y * (z + Z * stage))
//
// Worked example, Mesh{pp=2, x=2, y=2, z=1} (8 ranks):
//   rank: 0 1 2 3 | 4 5 6 7
//   x:    0 1 0 1 | 0 1 0 1
//   y:    0 0 1 1 | 0 0 1 1
//   pp:   0 0 0 0 | 1 1 1 1
// so an x-group is two neighbouring ranks (on one node when chips_per_node>=2)
// and a pipeline stage is one contiguous block of X*Y*Z ranks.
#include <string>
#include <string_view>
#include <vector>

namespace shardlm {

struct MeshCoord {
  int pp = 0, x = 0, y = 0, z = 0;
  bool operator==(const MeshCoord&) const = default;
};

struct Mesh {
  int pp = 1, x = 1, y = 1, z = 1;

  bool operator==(const Mesh&) const = default;
  int tp_size() const { return x * y * z; }
  int size() const { return pp * tp_size(); }
  // Size of one TP axis ('x', 'y' or 'z'); throws std::invalid_argument otherwise.
  int axis_size(char axis) const;
  // Product of the sizes of the axes named in `axes` (e.g. "yz"); "" gives 1.
  int axes_size(std::string_view axes) const;
  // `axes` without those of size 1, which split nothing ("xzy" with x = 1 is
  // "zy"): the form in which two splits can be compared.
  std::string splitting(std::string_view axes) const;

  MeshCoord coord(int rank) const;
  int rank(const MeshCoord& c) const;

  // The ranks that share `rank`'s coordinates on every axis not named in
  // `axes`, ordered by their shard index over `axes`, where the first named
  // axis is the most significant ("zy": index = z * Y + y).
  std::vector<int> group(int rank, std::string_view axes) const;
  // This rank's index in group(rank, axes).
  int group_index(int rank, std::string_view axes) const;

  // "x=4 y=4 z=4" (with "pp=2 " in front when pipelined).
  std::string str() const;
  // Parses "X,Y,Z" (TP axes; pp stays 1). Throws std::invalid_argument.
  static Mesh parse(std::string_view text);
  // Every (x, y, z) with x*y*z == n_tp, in lexicographic order.
  static std::vector<Mesh> factorizations(int n_tp, int pp = 1);
};

}  // namespace shardlm
