#pragma once
// The physical wiring of a torus machine (TPU v4): slices of published
// shapes, 3-D tori whose axes wrap around only when the slice allows it, and
// logical meshes made of whole physical axes. HardwareSpec (hardware.hpp)
// holds the slices; the cost model asks it for the links a collective has.
//
// A collective over a set of physical axes runs a bidirectional ring along
// each axis in turn (an all-gather over 4x4 gathers 4 along one axis, then
// the 4 times larger result along the other). One axis gives each chip
//   links_per_axis * link_bandwidth        when the axis wraps around,
//   links_per_axis * link_bandwidth / 2    when it does not (a line: the chips
//                                          at its ends have one neighbour),
// and on equal axes the whole runs at one axis's bandwidth: the last stage
// moves most of the bytes. A ring step takes L/2 hops on a wrapped axis of
// length L (both directions) and L - 1 on a line.
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "partitioning/mesh.hpp"

namespace shardlm {

struct TorusSlice {
  std::array<int, 3> shape{1, 1, 1};
  bool wraps = false;  // every axis of length > 2 closes into a ring

  int chips() const { return shape[0] * shape[1] * shape[2]; }
  std::string str() const;  // "4x4x8"
  // "AxBxC"; wraps when every axis is a multiple of `wrap_multiple` (TPU v4:
  // 4, cloud.google.com/tpu/docs/v4). Throws std::invalid_argument.
  static TorusSlice parse(std::string_view text, int wrap_multiple);
};

// Which mesh axis ('p' pipeline, 'x', 'y', 'z') each physical axis of a slice
// makes up; 0 for a physical axis of length 1.
struct SliceMapping {
  TorusSlice slice;
  std::array<char, 3> axis_of{0, 0, 0};
};

// Bandwidth and ring hops of the physical axes that make up the mesh axes
// named in `axes` (those of size 1 add nothing).
struct TorusLinks {
  double bandwidth = 0;  // bytes per second per chip, one way
  int hops = 0;
};
TorusLinks torus_links(const SliceMapping& mapping, std::string_view axes, double link_bandwidth,
                       int links_per_axis);

// The ways to build `mesh` (pp, x, y, z) out of whole physical axes of
// `slice`, each logical axis the product of the physical axes given to it;
// of those, the one whose slowest tensor-parallel axis is fastest (then the
// highest total). Empty when the mesh cannot be formed.
std::optional<SliceMapping> map_mesh(const TorusSlice& slice, const Mesh& mesh,
                                     double link_bandwidth, int links_per_axis);

// Every mesh (x, y, z) with pipeline depth `pp` that `slice` can form.
std::vector<Mesh> formable_meshes(const TorusSlice& slice, int pp);

}  // namespace shardlm
