// Mesh: the documented rank order (x fastest, then y, z, pipeline slowest)
// and the per-axis groups collectives run over.
#include <catch2/catch.hpp>
#include <set>

#include "partitioning/mesh.hpp"

using shardlm::Mesh;
using shardlm::MeshCoord;

TEST_CASE("mesh rank order matches the worked example in mesh.hpp", "[mesh]") {
  const Mesh m{2, 2, 2, 1};  // pp=2, x=2, y=2, z=1
  REQUIRE(m.size() == 8);
  REQUIRE(m.tp_size() == 4);
  const MeshCoord expected[8] = {{0, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 1, 1, 0},
                                 {1, 0, 0, 0}, {1, 1, 0, 0}, {1, 0, 1, 0}, {1, 1, 1, 0}};
  for (int r = 0; r < 8; ++r) {
    CHECK(m.coord(r) == expected[r]);
    CHECK(m.rank(expected[r]) == r);
  }
}

TEST_CASE("rank and coord are inverse and x varies fastest", "[mesh]") {
  const Mesh m{3, 4, 2, 5};
  std::set<int> seen;
  for (int r = 0; r < m.size(); ++r) {
    const MeshCoord c = m.coord(r);
    CHECK(m.rank(c) == r);
    CHECK(c.x == r % 4);
    CHECK(c.y == (r / 4) % 2);
    CHECK(c.z == (r / 8) % 5);
    CHECK(c.pp == r / 40);
    seen.insert(r);
  }
  CHECK(seen.size() == 120u);
  CHECK_THROWS(m.coord(120));
}

TEST_CASE("axis groups hold the ranks that differ only on the named axes", "[mesh]") {
  const Mesh m{1, 2, 3, 4};
  CHECK(m.group(0, "x") == std::vector<int>{0, 1});
  CHECK(m.group(0, "y") == std::vector<int>{0, 2, 4});
  CHECK(m.group(7, "z") == std::vector<int>{1, 7, 13, 19});
  // "zy": z is the most significant index, so y runs fastest within the group.
  CHECK(m.group(1, "zy") == std::vector<int>{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23});
  CHECK(m.group(0, "yz")[1] == 6);  // y most significant: index 1 is z=1
  for (int r = 0; r < m.size(); ++r)
    for (const char* axes : {"x", "yz", "zy", "xyz", "zyx"}) {
      const auto g = m.group(r, axes);
      REQUIRE(static_cast<int>(g.size()) == m.axes_size(axes));
      CHECK(g[m.group_index(r, axes)] == r);
    }
}

TEST_CASE("mesh parsing and factorizations", "[mesh]") {
  CHECK(Mesh::parse("4,2,8") == Mesh{1, 4, 2, 8});
  CHECK_THROWS(Mesh::parse("4,2"));
  CHECK_THROWS(Mesh::parse("4,0,2"));
  CHECK_THROWS(Mesh::parse("4,a,2"));
  const auto f = Mesh::factorizations(64);
  CHECK(f.size() == 28u);  // ordered triples with product 2^6: C(8,2)
  for (const Mesh& m : f) CHECK(m.tp_size() == 64);
  CHECK(Mesh{2, 4, 4, 4}.str() == "pp=2 x=4 y=4 z=4");
}
