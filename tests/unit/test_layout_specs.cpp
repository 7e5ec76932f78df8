// PartitionSpec notation and the layout tables: the specs of Pope et al.
// §3.2-3.3 (Fig. 2, 4, 5, A.2) for every weight and the residual stream.
#include <catch2/catch.hpp>

#include "partitioning/layouts.hpp"

using namespace shardlm;

TEST_CASE("partition specs print and parse in the paper's notation", "[layout]") {
  for (const char* text :
       {"BLE_xyz", "E_x F_zy", "B_x LE_zy", "BLF_zy (partialsum-x)", "H_zy DE_x", "B_xyz CKD"})
    CHECK(PartitionSpec::parse(text).str() == text);
  const PartitionSpec w = PartitionSpec::parse("E_x F_zy");
  CHECK(w.paper_str() == "E_x F_yz");
  CHECK(w.axes_of('F') == "zy");
  CHECK(w.sharded_axes() == "xyz");
  CHECK(PartitionSpec::parse("BLF_zy (partialsum-x)").partial_sum == "x");
  CHECK_THROWS(PartitionSpec::parse("E_w"));
  const Mesh m{1, 4, 2, 8};
  const DimSizes sizes{{'E', 1024}, {'F', 4096}};
  CHECK(w.local_shape(sizes, m) == std::vector<int64_t>{256, 256});  // the paper's 256x256 chunk
  CHECK(PartitionSpec::parse("E F_xyz").local_elements(sizes, m) == 1024 * 64);
  CHECK(PartitionSpec::parse("E_xyz").uneven_dims({{'E', 100}}, m) == "E");
}

namespace {
const LayoutShape kMqaParallel{64, 1, true, true};
const Mesh k444{1, 4, 4, 4};

std::string used(FfnLayout f, WeightRole r) {
  return make_layout(f, AttnLayout::kHeads, kMqaParallel, k444).weight(r).used.paper_str();
}
std::string stored(FfnLayout f, WeightRole r) {
  return make_layout(f, AttnLayout::kHeads, kMqaParallel, k444).weight(r).stored.paper_str();
}
std::string residual(FfnLayout f) {
  auto l = make_layout(f, AttnLayout::kHeads, kMqaParallel, k444);
  return l.activations.at(l.residual).paper_str();
}
}  // namespace

TEST_CASE("feedforward weight specs of every layout", "[layout]") {
  CHECK(stored(FfnLayout::k1D, WeightRole::kWUp) == "EF_xyz");  // §3.2.1
  CHECK(stored(FfnLayout::k1D, WeightRole::kWDown) == "F_xyz E");
  CHECK(stored(FfnLayout::k2D, WeightRole::kWUp) == "E_x F_yz");  // §3.2.2
  CHECK(stored(FfnLayout::k2D, WeightRole::kWDown) == "F_yz E_x");
  // Weight-gathered layouts store like 2d and gather before use (§3.2.3, Fig. A.2).
  for (FfnLayout f : {FfnLayout::kWgX, FfnLayout::kWgXY, FfnLayout::kWgXYZ})
    CHECK(stored(f, WeightRole::kWGate) == "E_x F_yz");
  CHECK(used(FfnLayout::kWgX, WeightRole::kWGate) == "EF_yz");
  CHECK(used(FfnLayout::kWgXY, WeightRole::kWGate) == "EF_z");
  CHECK(used(FfnLayout::kWgXYZ, WeightRole::kWGate) == "EF");
  CHECK(stored(FfnLayout::k2D, WeightRole::kWq) == "E_x H_yz D");
  CHECK(stored(FfnLayout::k2D, WeightRole::kWk) == "E_x KD");  // one KV head: replicated over yz
}

TEST_CASE("activations at rest of every layout", "[layout]") {
  CHECK(residual(FfnLayout::k1D) == "BLE_xyz");
  CHECK(residual(FfnLayout::k2D) == "BLE_xyz");
  CHECK(residual(FfnLayout::kWgX) == "B_x LE_yz");
  CHECK(residual(FfnLayout::kWgXY) == "B_xy LE_z");
  CHECK(residual(FfnLayout::kWgXYZ) == "B_xyz LE");
}

TEST_CASE("attention layouts: KV cache over heads or over batch (Fig. 4, 5)", "[layout]") {
  // Multiquery over heads: the single KV head is replicated on every chip.
  auto mqa_heads = make_layout(FfnLayout::k2D, AttnLayout::kHeads, kMqaParallel, k444);
  CHECK(mqa_heads.kv_cache.paper_str() == "BCKD");
  // Multiquery over batch: the cache is split n_chips ways over B.
  auto mqa_batch = make_layout(FfnLayout::k2D, AttnLayout::kBatch, kMqaParallel, k444);
  CHECK(mqa_batch.kv_cache.paper_str() == "B_xyz CKD");
  int all_to_all = 0;
  for (const Step& s : mqa_batch.layer)
    all_to_all += s.op == OpKind::kCollective && s.collective == CollectiveKind::kAllToAll;
  CHECK(all_to_all == 2);  // Q in, attention output back (K/V are sliced locally)
  // Multihead over heads: no replication (Fig. 4a); Q/K/V heads end up split xyz.
  auto mha =
      make_layout(FfnLayout::k2D, AttnLayout::kHeads, LayoutShape{128, 128, false, false}, k444);
  CHECK(mha.kv_cache.paper_str() == "BCK_xyz D");
  CHECK(mha.activations.at("q").paper_str() == "BLH_xyz D");
}

TEST_CASE("every step names activations the table defines", "[layout]") {
  for (FfnLayout f : kAllFfnLayouts)
    for (AttnLayout a : kAllAttnLayouts)
      for (const LayoutShape& s :
           {kMqaParallel, LayoutShape{8, 4, false, true}, LayoutShape{8, 2, true, false}}) {
        auto l = make_layout(f, a, s, Mesh{1, 2, 2, 2});
        for (const auto* steps : {&l.prologue, &l.layer, &l.epilogue})
          for (const Step& st : *steps) {
            if (st.op == OpKind::kCollective && st.weight) continue;  // weight gathers name weights
            INFO(name(f) << "/" << name(a) << " step output " << st.output);
            CHECK(l.activations.count(st.output) == 1);
            for (const auto& in : st.inputs) CHECK(l.activations.count(in) == 1);
          }
      }
}

TEST_CASE("the parallel block shares the E-sized collectives (§3.4)", "[layout]") {
  auto count_rs_zy = [](bool parallel) {
    auto l =
        make_layout(FfnLayout::k2D, AttnLayout::kHeads, LayoutShape{64, 64, parallel, true}, k444);
    int n = 0;
    for (const Step& s : l.layer)
      n += s.op == OpKind::kCollective && s.collective == CollectiveKind::kReduceScatter &&
           s.axes == "zy";
    return n;
  };
  CHECK(count_rs_zy(false) == 2);
  CHECK(count_rs_zy(true) == 1);
}
