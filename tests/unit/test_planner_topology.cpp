// Physical topology of a torus machine (TPU v4 slices): which meshes a slice
// can form, the links and hops a collective over some mesh axes gets, and
// the per-collective overlap rule of the efficiency model.
#include <catch2/catch.hpp>
#include <cmath>
#include <set>

#include "partitioning/planner.hpp"
#include "partitioning/topology.hpp"
#include "runtime/errors.hpp"

using namespace shardlm;

namespace {
const std::string kRoot = SHARDLM_SOURCE_DIR;
HardwareSpec tpu() {
  return HardwareSpec::load(kRoot + "/configs/hardware/tpu-v4.yaml");
}
}  // namespace

TEST_CASE("slice shapes parse, and wrap around only when every axis is a multiple of 4",
          "[topology]") {
  CHECK(TorusSlice::parse("4x4x4", 4).wraps);
  CHECK(TorusSlice::parse("4x4x8", 4).wraps);
  CHECK_FALSE(TorusSlice::parse("2x4x4", 4).wraps);
  CHECK_FALSE(TorusSlice::parse("2x2x4", 4).wraps);
  CHECK(TorusSlice::parse("4x8x8", 4).chips() == 256);
  CHECK(TorusSlice::parse("4x8x8", 4).str() == "4x8x8");
  CHECK_THROWS_AS(TorusSlice::parse("4x4", 4), std::invalid_argument);
  CHECK_THROWS_AS(TorusSlice::parse("4x0x4", 4), std::invalid_argument);
  const HardwareSpec h = tpu();
  for (auto [chips, shape] : {std::pair{8, "2x2x2"},
                              {16, "2x2x4"},
                              {32, "2x4x4"},
                              {64, "4x4x4"},
                              {128, "4x4x8"},
                              {256, "4x8x8"}}) {
    REQUIRE(h.slice_of(chips));
    CHECK(h.slice_of(chips)->str() == shape);
  }
  CHECK_FALSE(h.slice_of(12));
}

TEST_CASE("a slice forms the meshes whose axes are products of whole physical axes", "[topology]") {
  // 4x4x4: each mesh axis is 4^k, the exponents summing to 3: C(5, 2) = 10.
  const auto meshes = formable_meshes(TorusSlice::parse("4x4x4", 4), 1);
  CHECK(meshes.size() == 10);
  std::set<std::tuple<int, int, int>> got;
  for (const Mesh& m : meshes) got.insert({m.x, m.y, m.z});
  CHECK(got.count({4, 4, 4}));
  CHECK(got.count({16, 4, 1}));
  CHECK(got.count({1, 1, 64}));
  CHECK_FALSE(got.count({8, 8, 1}));  // 8 is no product of 4s
  const HardwareSpec h = tpu();
  CHECK(h.mesh_problem(Mesh{1, 8, 8, 1}).find("4x4x4") != std::string::npos);
  // 2x4x4 has one axis of 2: two mesh axes of 2 cannot both be made.
  CHECK_FALSE(h.mesh_problem(Mesh{1, 2, 2, 8}).empty());
  CHECK(h.mesh_problem(Mesh{1, 8, 4, 1}).empty());  // 8 = 2 x 4
  CHECK(h.mesh_problem(Mesh{1, 4, 2, 4}).empty());  // Table 3's 62B prefill mesh
  // Pipeline stages take whole physical axes too: 128 chips are 4x4x8, so
  // 8 stages of 4x4 form and 2 stages of 4x4x4 do not.
  CHECK_FALSE(h.mesh_problem(Mesh{2, 4, 4, 4}).empty());
  CHECK(h.mesh_problem(Mesh{8, 4, 4, 1}).empty());
  CHECK(h.mesh_problem(Mesh{1, 4, 4, 3}).find("no slice of 48") != std::string::npos);
}

TEST_CASE("the planner enumerates only meshes the slice can form", "[topology]") {
  const HardwareSpec h = tpu();
  const ModelSpec m = ModelSpec::load_yaml(kRoot + "/configs/models/palm-62b.yaml");
  PlanRequest req;
  req.workload = {8, 128, 8};
  req.chips = 32;
  const auto meshes = candidate_meshes(m, h, req, 32);
  REQUIRE(!meshes.empty());
  for (const Mesh& mesh : meshes) {
    INFO(mesh.str());
    CHECK(h.mesh_problem(mesh).empty());
  }
  // Every factorisation of 32 without a pipeline: 21; 2x4x4 forms fewer.
  size_t unpipelined = 0;
  for (const Mesh& mesh : meshes) unpipelined += mesh.pp == 1;
  CHECK(unpipelined < Mesh::factorizations(32).size());
  req.chips = 12;
  CHECK_THROWS_AS(make_plan(m, h, req), UsageError);
  // A pinned mesh the slice cannot form is a usage error, not a shortfall.
  req.chips = 64;
  req.mesh = Mesh{1, 8, 8, 1};
  CHECK_THROWS_WITH(make_plan(m, h, req), Catch::Contains("cannot be formed on the 4x4x4 slice"));
}

TEST_CASE("a collective gets the links of its physical axes, halved where they do not wrap",
          "[topology]") {
  const HardwareSpec h = tpu();  // 45 GB/s per link, 2 links per axis
  // 4x4x4 torus: one wrapped axis 90 GB/s, 2 hops per ring step (both ways).
  const Mesh cube{1, 4, 4, 4};
  CHECK(h.collective_bandwidth(cube, "x") == Approx(90e9));
  CHECK(h.collective_hops(cube, "x") == 2);
  // Over two or three axes, one ring after the other: the last (largest)
  // stage dominates, so equal axes give one axis's bandwidth, (K-1)/K of the
  // bytes crossing: (3/4 + 12/16) ... = 15/16 over (1/16*3/90 + 12/16/90).
  CHECK(h.collective_bandwidth(cube, "zy") == Approx(90e9));
  CHECK(h.collective_hops(cube, "zy") == 4);
  CHECK(h.collective_hops(cube, "xyz") == 6);
  CHECK(h.collective_traffic_fraction(cube, "x") == Approx(0.75));
  CHECK(h.collective_traffic_fraction(cube, "xyz") == Approx(63.0 / 64));
  // 16 x 4 x 1 on the cube: x is two physical axes.
  CHECK(h.collective_hops(Mesh{1, 16, 4, 1}, "x") == 4);
  // 2x4x4 is a 3D mesh, not a torus: a line of 4 has 45 GB/s and 3 hops, a
  // pair one link each way, 1 hop.
  const Mesh mesh32{1, 2, 4, 4};
  CHECK(h.collective_bandwidth(mesh32, "x") == Approx(45e9));
  CHECK(h.collective_hops(mesh32, "x") == 1);
  CHECK(h.collective_bandwidth(mesh32, "y") == Approx(45e9));
  CHECK(h.collective_hops(mesh32, "y") == 3);
  CHECK(h.collective_traffic_fraction(mesh32, "x") == Approx(0.5));
  // Latency: start-up plus a hop latency per hop.
  CHECK(h.collective_latency(cube, "xyz") == Approx(h.intra_node_latency + 6 * h.hop_latency));
  // A send between pipeline stages uses one link.
  CHECK(h.send_seconds(cube, 0, 1, 45e6) == Approx(h.intra_node_latency + 1e-3));
}

TEST_CASE("unequal axes: the staged rings weigh each axis by the bytes it moves", "[topology]") {
  // A 2x4 group on a slice that does not wrap: 2 (45 GB/s, 1 hop) then 4
  // (45 GB/s, 3 hops). Stage 1 moves 1/8 of the output, stage 2 6/8.
  SliceMapping m{TorusSlice::parse("2x4x1", 4), {'x', 'y', 0}};
  const TorusLinks both = torus_links(m, "xy", 45e9, 2);
  CHECK(both.hops == 4);
  CHECK(both.bandwidth == Approx((7.0 / 8) / ((1.0 / 8) / 45e9 + (6.0 / 8) / 45e9)));
  // Wrapped 4x8: the 8 ring (90 GB/s) goes last.
  SliceMapping w{TorusSlice::parse("4x8x4", 4), {'x', 'y', 0}};
  const TorusLinks wrapped = torus_links(w, "xy", 45e9, 2);
  CHECK(wrapped.hops == 2 + 4);
  CHECK(wrapped.bandwidth == Approx(90e9));
}

// The overlap rule, on one layer priced by hand: peak 1 TFLOP/s, no
// efficiency loss, 1 GB/s links, no latency.
namespace {
struct HandLayer {
  ModelSpec model;
  HardwareSpec hw;
  PhaseCost cost;
  HandLayer() {
    ModelConfig c;
    c.hidden_size = 64;
    c.intermediate_size = 256;
    c.num_layers = 1;
    c.num_heads = c.num_kv_heads = 1;
    c.head_dim = 64;
    c.vocab_size = 16;
    model = ModelSpec::from_config(c, "hand");
    hw.name = "hand";
    hw.peak_flops["bf16"] = 1e12;
    hw.memory_bandwidth = 1e12;
    cost.phase = Phase::kPrefill;
    cost.forward_passes = 1;
    cost.tokens = 1;
    cost.layers_per_stage = 1;
    cost.micro_batches = 1;
    // A 2 ms matmul reading 1 MB of weights (1 us).
    cost.layer.matmuls.push_back({2e9, 1e6, 1e6, WeightRole::kWUp});
  }
  // Adds a collective of `ms` milliseconds; a weight gather feeds the matmul.
  void collective(double ms, bool weight_gather) {
    CollectiveCost c{"layer", weight_gather ? "w_up" : "h", CollectiveKind::kAllGather, "x"};
    c.bytes = ms * 1e6;
    c.bandwidth = 1e9;
    c.consumer = weight_gather ? 0 : -1;
    cost.layer.collectives.push_back(c);
  }
  double latency_ms() {
    reprice(cost, model, hw);
    return cost.layer.latency_s * 1e3;
  }
};
}  // namespace

TEST_CASE("a weight all-gather hides behind the matmul that consumes it, no longer",
          "[topology][overlap]") {
  HandLayer a;
  a.hw.efficiency.weight_gather_overlap = 1;
  a.collective(1, true);  // 1 ms behind a 2 ms matmul: hidden
  CHECK(a.latency_ms() == Approx(2.0));
  HandLayer b;
  b.hw.efficiency.weight_gather_overlap = 1;
  b.collective(3, true);  // 3 ms behind 2 ms: 1 ms shows
  CHECK(b.latency_ms() == Approx(3.0));
  HandLayer c;
  c.hw.efficiency.weight_gather_overlap = 0.5;
  c.collective(1, true);  // half of it hides
  CHECK(c.latency_ms() == Approx(2.5));
  CHECK(c.cost.layer.overlap_s * 1e3 == Approx(0.5));
}

TEST_CASE("activation collectives hide only the stated fraction, behind what is left",
          "[topology][overlap]") {
  HandLayer a;
  a.hw.efficiency.comm_overlap = 0.25;
  a.collective(1, false);
  CHECK(a.latency_ms() == Approx(2.0 + 1.0 - 0.25));
  HandLayer none;
  none.collective(1, false);  // comm_overlap 0: all of it on the critical path
  CHECK(none.latency_ms() == Approx(3.0));
  // A 3 ms gather takes the whole 2 ms behind the matmul; the activation
  // collective has nothing left to hide behind.
  HandLayer both;
  both.hw.efficiency.weight_gather_overlap = 1;
  both.hw.efficiency.comm_overlap = 0.5;
  both.collective(3, true);
  both.collective(1, false);
  CHECK(both.latency_ms() == Approx(2.0 + 4.0 - 2.0));
  // Per-layer overhead adds on top.
  both.hw.efficiency.layer_overhead_s = 1e-3;
  CHECK(both.latency_ms() == Approx(5.0));
}
