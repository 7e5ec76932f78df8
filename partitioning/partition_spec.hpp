#pragma once
// PartitionSpec: which mesh axes shard which dimension of a tensor, in the
// notation of Pope et al. §3.1 (after GSPMD): `BLE_xyz` is a [B, L, E] tensor
// whose E dimension is split over x, y and z; `E_x F_yz` a weight split X ways
// over E and Y*Z ways over F. An axis a tensor does not name replicates it.
//
// Dimensions are single letters:
//   B batch, L tokens of this step, C cached context, E d_model, F d_ff,
//   H query heads, K key/value heads, D head dim (the paper's Q), V vocabulary.
// Axes are listed most significant first: `F_zy` means shard index z*Y + y.
// The paper writes the axes of a dimension as a set; paper_str() prints that
// form and str() the exact order the runtime must use.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "partitioning/mesh.hpp"

namespace shardlm {

struct DimSharding {
  char dim = '?';
  std::string axes;  // e.g. "zy"; empty when the dimension is not split
  bool operator==(const DimSharding&) const = default;
};

// Global sizes of the named dimensions, e.g. {{'B', 512}, {'E', 18432}}.
using DimSizes = std::map<char, int64_t>;

struct PartitionSpec {
  std::vector<DimSharding> dims;
  std::string partial_sum;  // axes over which the values still have to be summed

  bool operator==(const PartitionSpec&) const = default;

  // Accepts the notation str() prints: "BLE_xyz", "E_x F_zy",
  // "BLF_zy (partialsum-x)". Throws std::invalid_argument.
  static PartitionSpec parse(std::string_view text);
  std::string str() const;
  std::string paper_str() const;  // axes of each dimension printed in x, y, z order

  // The axes a dimension is split over ("" when not split or absent).
  const std::string& axes_of(char dim) const;
  bool has_dim(char dim) const;
  // All axes used for sharding, without repeats, in x, y, z order.
  std::string sharded_axes() const;
  // The same spec with `dim` split over `axes` (replaces its sharding).
  PartitionSpec with_axes(char dim, std::string axes) const;

  // Per-chip extent of each dimension: ceil(global / product of its axes).
  // Throws std::invalid_argument when a dimension has no size in `sizes`.
  std::vector<int64_t> local_shape(const DimSizes& sizes, const Mesh& mesh) const;
  int64_t local_elements(const DimSizes& sizes, const Mesh& mesh) const;
  int64_t global_elements(const DimSizes& sizes) const;
  // Names of dimensions whose global size the mesh does not divide evenly.
  std::string uneven_dims(const DimSizes& sizes, const Mesh& mesh) const;
};

// Axes in `a` that are not in `b`, keeping `a`'s order.
std::string axes_minus(std::string_view a, std::string_view b);

}  // namespace shardlm
