// Topology in the cost model: a collective is priced by the slowest link any
// of its groups crosses, given where the ranks sit (by slot, by node, or as
// the job found them), and a point-to-point send by the link between its two
// ranks.
#include <catch2/catch.hpp>

#include "partitioning/hardware.hpp"

using namespace shardlm;

namespace {

// 2 nodes x 2 chips, one network card per node: the namespace cluster's shape.
HardwareSpec two_by_two() {
  HardwareSpec h;
  h.name = "test";
  h.topology = "switched";
  h.chips_per_node = 2;
  h.intra_node_bandwidth = 4e9;
  h.intra_node_latency = 5e-6;
  h.inter_node_bandwidth = 125e6;  // 1 Gbit/s
  h.inter_node_latency = 100e-6;
  h.nics_per_node = 1;
  return h;
}

}  // namespace

TEST_CASE("by slot, x stays in a node and y crosses", "[topology]") {
  const HardwareSpec h = two_by_two();
  const Mesh m{1, 2, 2, 1};
  CHECK_FALSE(h.group_spans_nodes(m, "x"));
  CHECK(h.group_spans_nodes(m, "y"));
  CHECK(h.collective_bandwidth(m, "x") == h.intra_node_bandwidth);
  CHECK(h.collective_latency(m, "x") == h.intra_node_latency);
  // The two y-groups (x = 0 and x = 1) share each node's one card.
  CHECK(h.collective_bandwidth(m, "y") == Approx(125e6 / 2));
  CHECK(h.collective_latency(m, "y") == h.inter_node_latency);
  // All four: two members per node carry what crosses over the one card.
  CHECK(h.collective_bandwidth(m, "xy") == Approx(125e6));
}

TEST_CASE("by node, the axes swap roles", "[topology]") {
  HardwareSpec h = two_by_two();
  h.map_by_node = true;  // ranks 0, 2 on node 0; 1, 3 on node 1
  const Mesh m{1, 2, 2, 1};
  CHECK(h.node_of(1, 4) == 1);
  CHECK(h.node_of(2, 4) == 0);
  CHECK(h.group_spans_nodes(m, "x"));
  CHECK_FALSE(h.group_spans_nodes(m, "y"));
  CHECK(h.collective_bandwidth(m, "x") == Approx(125e6 / 2));
  CHECK(h.collective_bandwidth(m, "y") == h.intra_node_bandwidth);
}

TEST_CASE("the job's own placement wins over the spec's nodes", "[topology]") {
  HardwareSpec h = two_by_two();
  h.rank_nodes = {0, 0, 0, 1};  // an uneven hostfile
  const Mesh m{1, 2, 2, 1};
  CHECK(h.group_spans_nodes(m, "x"));  // ranks 2 and 3 are split
  // Only the group {2, 3} crosses; it is the slowest and sets the pace.
  // Node 1 has one rank, member of that group: the whole card.
  // Node 0 has three ranks, one of them in the group: a third of its card.
  CHECK(h.collective_bandwidth(m, "x") == Approx(125e6 / 3));
  // Another size: the placement does not apply, by slot again.
  CHECK(h.node_of(5, 8) == 2);
}

TEST_CASE("a send is priced by the link between its two ranks", "[topology]") {
  const HardwareSpec h = two_by_two();
  const Mesh m{2, 2, 1, 1};  // 2 stages of 2: stage 0 on node 0, stage 1 on node 1
  const double bytes = 1e6;
  CHECK(h.send_seconds(m, 0, 1, bytes) == Approx(5e-6 + bytes / 4e9));
  CHECK(h.send_seconds(m, 1, 3, bytes) == Approx(100e-6 + bytes / 125e6));
  // The slower link costs more, by about the bandwidth ratio.
  CHECK(h.send_seconds(m, 0, 2, bytes) > 30 * h.send_seconds(m, 0, 1, bytes));
}

TEST_CASE("one card per chip by default: the old per-chip network figure", "[topology]") {
  HardwareSpec h = two_by_two();
  h.nics_per_node = 0;
  h.chips_per_node = 8;
  const Mesh m{1, 8, 2, 1};
  CHECK(h.collective_bandwidth(m, "y") == Approx(125e6));
  CHECK(h.collective_bandwidth(m, "xy") == Approx(std::min(4e9, 8 * 125e6)));
}
