// The pure parts of pipeline parallelism: layer splits and micro-batches.
#include <catch2/catch.hpp>
#include <numeric>

#include "runtime/errors.hpp"
#include "runtime/pipeline.hpp"

using namespace shardlm;

TEST_CASE("layer counts of --pp-layers are parsed and checked", "[pipeline]") {
  const StageSplit s = parse_stage_split("7,9", 2, 16);
  CHECK(s.layers == std::vector<int64_t>{7, 9});
  CHECK(s.first_layer(1) == 7);
  CHECK(s.end_layer(1) == 16);
  CHECK(s.str() == "7,9");
  CHECK_THROWS_AS(parse_stage_split("7,8", 2, 16), UsageError);    // sums to 15
  CHECK_THROWS_AS(parse_stage_split("0,16", 2, 16), UsageError);   // an empty stage
  CHECK_THROWS_AS(parse_stage_split("8,4,4", 2, 16), UsageError);  // three stages
  CHECK_THROWS_AS(parse_stage_split("8,x", 2, 16), UsageError);
  CHECK_THROWS_AS(parse_stage_split("8,,8", 3, 16), UsageError);
}

TEST_CASE("the default split balances time, then memory", "[pipeline]") {
  // Equal layers and no edges: as even as it gets.
  CHECK(balanced_stage_split(8, 4, {1, 0, 0}, {1, 0, 0}).layers ==
        std::vector<int64_t>{2, 2, 2, 2});
  CHECK(balanced_stage_split(5, 1, {1, 0, 0}, {1, 0, 0}).layers == std::vector<int64_t>{5});
  // A head worth two layers: the last stage takes two fewer (8 + 0 vs 6 + 2).
  CHECK(balanced_stage_split(14, 2, {1, 2, 0}, {1, 0, 0}).layers == std::vector<int64_t>{8, 6});
  // Within 10% of the fastest split (12 vs 12.5 slowest), the one holding
  // less: 1b-like, a layer of 1, head and embedding tables of 1.5 each.
  CHECK(balanced_stage_split(22, 2, {1, 1.5, 0}, {1, 1.5, 1.5}).layers ==
        std::vector<int64_t>{11, 11});
  CHECK(balanced_stage_split(22, 4, {1, 1.5, 0}, {1, 1.5, 1.5}).layers ==
        std::vector<int64_t>{5, 6, 6, 5});
  // Memory cannot buy more than 10%: with a heavy head the time split wins.
  CHECK(balanced_stage_split(10, 2, {1, 4, 0}, {1, 0, 4}).layers == std::vector<int64_t>{7, 3});
  // As many stages as layers: one each.
  CHECK(balanced_stage_split(3, 3, {1, 9, 9}, {1, 9, 9}).layers == std::vector<int64_t>{1, 1, 1});
}

TEST_CASE("prefill micro-batches cover every prompt token once, in order", "[pipeline]") {
  const std::vector<int64_t> lengths = {10, 3, 7};
  for (int m : {1, 2, 3, 4, 5, 8, 13}) {
    INFO("m = " << m);
    const auto batches = prefill_micro_batches(lengths, m);
    std::vector<int64_t> next(lengths.size(), 0);
    for (const auto& batch : batches) {
      REQUIRE(!batch.empty());
      for (size_t i = 0; i < batch.size(); ++i) {
        const Segment& s = batch[i];
        if (i > 0) CHECK(s.slot > batch[i - 1].slot);  // slot order, as split_rows needs
        CHECK(s.start_pos == next[size_t(s.slot)]);    // chunks follow each other
        CHECK(s.num_tokens > 0);
        next[size_t(s.slot)] += s.num_tokens;
      }
    }
    CHECK(next == lengths);
    // Whole sequences when there are at least m; otherwise m chunks of each
    // prompt, a micro-batch dropped only when every chunk of it is empty
    // (never while the longest prompt, 10 tokens, has a token per chunk).
    if (m <= 10) CHECK(int(batches.size()) == m);
    CHECK(int(batches.size()) <= m);
  }
  // Sequence groups are strided, so each spans the slot range.
  const auto groups = prefill_micro_batches({4, 4, 4, 4, 4}, 2);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].size() == 3);
  CHECK(groups[0][1].slot == 2);
}

TEST_CASE("decode groups hold each sequence once", "[pipeline]") {
  const auto groups = decode_groups(5, 2);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0] == std::vector<int>{0, 2, 4});
  CHECK(groups[1] == std::vector<int>{1, 3});
  CHECK(decode_groups(2, 4).size() == 2);  // no empty groups
  CHECK(decode_groups(3, 1).size() == 1);
}
