// Every collective on every subset of mesh axes, on every mesh shape the
// world size allows, against results each rank computes on its own.
#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "collectives/world.hpp"
#include "partitioning/mesh.hpp"
#include "runtime/dtype.hpp"

using namespace shardlm;

namespace {

// The value rank `rank` holds at index i before a collective.
float value(int rank, size_t i) {
  return float(rank * 1000 + int(i));
}

std::vector<float> values(int rank, size_t count, size_t offset = 0) {
  std::vector<float> v(count);
  for (size_t i = 0; i < count; ++i) v[i] = value(rank, offset + i);
  return v;
}

const std::vector<std::string> kAxisSubsets = {"x", "y", "z", "xy", "yz", "xz", "zy", "xyz", "zyx"};

template <typename Body>
void for_each_mesh_and_group(Body body) {
  World& world = World::get();
  for (const Mesh& mesh : Mesh::factorizations(world.size()))
    for (const std::string& axes : kAxisSubsets) {
      const std::vector<int> members = mesh.group(world.rank(), axes);
      Communicator& comm = world.group(members);
      INFO("mesh " << mesh.str() << ", axes " << axes << ", rank " << world.rank());
      CHECK(comm.size() == int(members.size()));
      CHECK(members[size_t(comm.rank())] == world.rank());
      body(comm, members);
    }
}

}  // namespace

TEST_CASE("all_gather concatenates every member's block in group order") {
  for_each_mesh_and_group([](Communicator& comm, const std::vector<int>& members) {
    const size_t count = 5;
    const std::vector<float> send = values(World::get().rank(), count);
    std::vector<float> recv(count * members.size());
    comm.all_gather(send.data(), recv.data(), count);
    std::vector<float> expected;
    for (int m : members) {
      const auto v = values(m, count);
      expected.insert(expected.end(), v.begin(), v.end());
    }
    CHECK(recv == expected);

    // Uneven blocks: member j contributes j + 1 values.
    std::vector<size_t> counts;
    for (size_t j = 0; j < members.size(); ++j) counts.push_back(j + 1);
    const auto mine = values(World::get().rank(), counts[size_t(comm.rank())]);
    std::vector<float> recv_v(std::accumulate(counts.begin(), counts.end(), size_t{0}));
    comm.all_gatherv(mine.data(), recv_v.data(), counts);
    std::vector<float> expected_v;
    for (size_t j = 0; j < members.size(); ++j) {
      const auto v = values(members[j], counts[j]);
      expected_v.insert(expected_v.end(), v.begin(), v.end());
    }
    CHECK(recv_v == expected_v);
  });
}

TEST_CASE("reduce_scatter and all_reduce sum over the members") {
  for_each_mesh_and_group([](Communicator& comm, const std::vector<int>& members) {
    const size_t count = 3, n = members.size();
    const int me = World::get().rank();
    const std::vector<float> send = values(me, count * n);
    std::vector<float> recv(count);
    comm.reduce_scatter(send.data(), recv.data(), count);
    std::vector<float> expected(count, 0.f);
    for (int m : members)
      for (size_t i = 0; i < count; ++i) expected[i] += value(m, size_t(comm.rank()) * count + i);
    CHECK(recv == expected);

    std::vector<size_t> counts;
    for (size_t j = 0; j < n; ++j) counts.push_back(2 * j + 1);
    const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
    const size_t offset = std::accumulate(counts.begin(), counts.begin() + comm.rank(), size_t{0});
    const std::vector<float> send_v = values(me, total);
    std::vector<float> recv_v(counts[size_t(comm.rank())]);
    comm.reduce_scatterv(send_v.data(), recv_v.data(), counts);
    std::vector<float> expected_v(recv_v.size(), 0.f);
    for (int m : members)
      for (size_t i = 0; i < recv_v.size(); ++i) expected_v[i] += value(m, offset + i);
    CHECK(recv_v == expected_v);

    std::vector<float> data = values(me, count);
    comm.all_reduce(data.data(), count);
    std::vector<float> expected_sum(count, 0.f);
    for (int m : members)
      for (size_t i = 0; i < count; ++i) expected_sum[i] += value(m, i);
    CHECK(data == expected_sum);
  });
}

TEST_CASE("all_to_all delivers block j of member i to member j at place i") {
  for_each_mesh_and_group([](Communicator& comm, const std::vector<int>& members) {
    const size_t count = 4, n = members.size();
    const int me = World::get().rank();
    const std::vector<float> send = values(me, count * n);
    std::vector<float> recv(count * n);
    comm.all_to_all(send.data(), recv.data(), count);
    std::vector<float> expected;
    for (int m : members) {
      const auto v = values(m, count, size_t(comm.rank()) * count);
      expected.insert(expected.end(), v.begin(), v.end());
    }
    CHECK(recv == expected);

    // Member i sends i + j + 1 values to member j.
    auto amount = [](size_t from, size_t to) { return from + to + 1; };
    const size_t self = size_t(comm.rank());
    std::vector<size_t> send_counts, recv_counts;
    for (size_t j = 0; j < n; ++j) {
      send_counts.push_back(amount(self, j));
      recv_counts.push_back(amount(j, self));
    }
    const std::vector<float> send_v =
        values(me, std::accumulate(send_counts.begin(), send_counts.end(), size_t{0}));
    std::vector<float> recv_v(std::accumulate(recv_counts.begin(), recv_counts.end(), size_t{0}));
    comm.all_to_allv(send_v.data(), send_counts, recv_v.data(), recv_counts);
    std::vector<float> expected_v;
    for (size_t i = 0; i < n; ++i) {
      size_t offset = 0;
      for (size_t j = 0; j < self; ++j) offset += amount(i, j);
      const auto v = values(members[i], amount(i, self), offset);
      expected_v.insert(expected_v.end(), v.begin(), v.end());
    }
    CHECK(recv_v == expected_v);
  });
}

TEST_CASE("broadcast, send/recv and barrier") {
  for_each_mesh_and_group([](Communicator& comm, const std::vector<int>& members) {
    const int root = int(members.size()) - 1;
    std::vector<float> data = values(World::get().rank(), 6);
    comm.broadcast(data.data(), data.size() * sizeof(float), root);
    CHECK(data == values(members[size_t(root)], 6));
    if (members.size() > 1) {
      // A ring: each member sends its rank to the next and hears from the previous.
      const int n = comm.size(), next = (comm.rank() + 1) % n, prev = (comm.rank() + n - 1) % n;
      int out = World::get().rank(), in = -1;
      if (comm.rank() % 2 == 0) {
        comm.send(&out, sizeof out, next);
        comm.recv(&in, sizeof in, prev);
      } else {
        comm.recv(&in, sizeof in, prev);
        comm.send(&out, sizeof out, next);
      }
      CHECK(in == members[size_t(prev)]);
    }
    comm.barrier();
  });
}

TEST_CASE("16-bit collectives move and sum BF16 and F16 elements") {
  for (const DType type : {DType::BF16, DType::F16}) {
    INFO("dtype " << dtype_name(type));
    // Small integers: exact in both types, and so are their sums here.
    auto encode = [type](const std::vector<float>& v) {
      std::vector<uint16_t> bits(v.size());
      convert_from_f32(v.data(), bits.data(), type, v.size());
      return bits;
    };
    auto small = [](int rank, size_t count, size_t offset = 0) {
      std::vector<float> v(count);
      for (size_t i = 0; i < count; ++i) v[i] = float(rank * 8 + int((offset + i) % 8));
      return v;
    };
    for_each_mesh_and_group([&](Communicator& comm, const std::vector<int>& members) {
      const int me = World::get().rank();
      const size_t n = members.size(), count = 5;

      std::vector<uint16_t> gathered(count * n);
      comm.all_gather(encode(small(me, count)).data(), gathered.data(), count, type);
      std::vector<float> expected;
      for (int m : members) {
        const auto v = small(m, count);
        expected.insert(expected.end(), v.begin(), v.end());
      }
      CHECK(gathered == encode(expected));

      // Uneven blocks: 16-bit displacements.
      std::vector<size_t> counts;
      for (size_t j = 0; j < n; ++j) counts.push_back(j + 1);
      std::vector<uint16_t> gathered_v(std::accumulate(counts.begin(), counts.end(), size_t{0}));
      comm.all_gatherv(encode(small(me, counts[size_t(comm.rank())])).data(), gathered_v.data(),
                       counts, type);
      std::vector<float> expected_v;
      for (size_t j = 0; j < n; ++j) {
        const auto v = small(members[j], counts[j]);
        expected_v.insert(expected_v.end(), v.begin(), v.end());
      }
      CHECK(gathered_v == encode(expected_v));

      std::vector<uint16_t> summed(count);
      comm.reduce_scatter(encode(small(me, count * n)).data(), summed.data(), count, type);
      std::vector<float> expected_sum(count, 0.f);
      for (int m : members)
        for (size_t i = 0; i < count; ++i)
          expected_sum[i] += small(m, 1, size_t(comm.rank()) * count + i)[0];
      CHECK(summed == encode(expected_sum));

      std::vector<uint16_t> reduced = encode(small(me, count));
      comm.all_reduce(reduced.data(), count, type);
      std::fill(expected_sum.begin(), expected_sum.end(), 0.f);
      for (int m : members)
        for (size_t i = 0; i < count; ++i) expected_sum[i] += small(m, count)[i];
      CHECK(reduced == encode(expected_sum));

      std::vector<uint16_t> exchanged(count * n);
      comm.all_to_all(encode(small(me, count * n)).data(), exchanged.data(), count, type);
      expected.clear();
      for (int m : members) {
        const auto v = small(m, count, size_t(comm.rank()) * count);
        expected.insert(expected.end(), v.begin(), v.end());
      }
      CHECK(exchanged == encode(expected));

      // Other dtypes move as they are (int8 weights of the weight-gathered
      // layouts); only F32, BF16 and F16 are summed.
      const std::vector<int8_t> mine8 = {int8_t(me), int8_t(-me - 1)};
      std::vector<int8_t> gathered8(2 * n);
      comm.all_gather(mine8.data(), gathered8.data(), 2, DType::I8);
      for (size_t j = 0; j < n; ++j) {
        CHECK(gathered8[2 * j] == int8_t(members[j]));
        CHECK(gathered8[2 * j + 1] == int8_t(-members[j] - 1));
      }
      if (n > 1) {
        std::vector<int8_t> summed8 = mine8;
        CHECK_THROWS_WITH(comm.all_reduce(summed8.data(), 2, DType::I8),
                          Catch::Contains("F32, BF16 or F16 expected"));
      }

      // Two members: the sum is formed in F32 and rounded once (1 + 3/256
      // lies halfway between two BF16 values and rounds to the even one).
      if (n == 2) {
        const std::vector<float> mine = {comm.rank() == 0 ? 1.0f : 3.0f / 256};
        std::vector<uint16_t> pair = encode(mine);
        comm.all_reduce(pair.data(), 1, type);
        CHECK(pair == encode({1.0f + 3.0f / 256}));
        if (type == DType::BF16) CHECK(pair == encode({1.015625f}));
      }
    });
  }
}
