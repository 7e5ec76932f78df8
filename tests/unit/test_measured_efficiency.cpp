// The measured section of a hardware spec (what `shardlm calibrate` wrote):
// interpolation of the matmul and memory tables, its YAML errors, the cost
// model pricing with it, and the fit of the per-layer, per-token and
// per-collective overheads.
#include <fmt/core.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "models/presets.hpp"
#include "partitioning/calibrate.hpp"
#include "partitioning/cost_model.hpp"
#include "partitioning/hardware.hpp"
#include "runtime/errors.hpp"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {

const char* kBase = R"(name: measured-test
peak_flops:
  f32: 1.0e11
memory:
  capacity_bytes: 1.0e10
  bandwidth_Bps: 1.0e10
chips_per_node: 2
activation_dtype: f32
interconnect:
  topology: switched
  intra_node_bandwidth_Bps: 2.0e9
  inter_node_bandwidth_Bps: 2.0e9
  latency_s: 3.0e-6
)";

HardwareSpec load_spec(const std::string& name, const std::string& measured) {
  const fs::path p = fs::temp_directory_path() / ("shardlm_test_measured_" + name + ".yaml");
  std::ofstream(p) << kBase << measured;
  return HardwareSpec::load(p.string());
}

std::string load_error(const std::string& name, const std::string& measured) {
  try {
    load_spec(name, measured);
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("measured tables interpolate in log rows and log bytes, flat beyond", "[measured]") {
  MeasuredEfficiency m;
  m.matmul_flops_by_rows = {{1, 1e10}, {16, 5e10}, {256, 1.5e11}};
  m.memory_Bps_by_bytes = {{1e6, 4e10}, {1e9, 1e10}};
  CHECK(m.matmul_flops(0.5) == 1e10);
  CHECK(m.matmul_flops(1) == 1e10);
  CHECK(m.matmul_flops(4) == Approx(3e10));   // half way from 1 to 16 in log
  CHECK(m.matmul_flops(64) == Approx(1e11));  // half way from 16 to 256
  CHECK(m.matmul_flops(1e6) == 1.5e11);
  CHECK(m.memory_Bps(std::sqrt(1e15)) == Approx(2.5e10));
  CHECK(m.memory_Bps(1e12) == 1e10);
  // A rank alone on its node has its own table; without one, the shared one serves.
  CHECK(m.matmul_flops(4, true) == Approx(3e10));
  m.matmul_flops_by_rows_alone = {{1, 2e10}, {256, 2e11}};
  CHECK(m.matmul_flops(16, true) == Approx(1.1e11));
  CHECK(m.matmul_flops(16, false) == Approx(5e10));
  m.layer_overhead_s = 1e-4;
  m.token_overhead_s = 1e-6;
  CHECK(m.overhead_s(16) == Approx(1.16e-4));
  // Fitted on a model of width 2816: a model 2.5x as wide pays 2.5x per token.
  CHECK(m.overhead_s(16, 7040) == Approx(1.16e-4));  // no width recorded: unscaled
  m.overhead_width = 2816;
  CHECK(m.overhead_s(16, 7040) == Approx(1e-4 + 2.5 * 1.6e-5));
  CHECK(m.overhead_s(16) == Approx(1.16e-4));
}

TEST_CASE("the measured section loads, and bad tables name the key", "[measured]") {
  const HardwareSpec h = load_spec("good",
                                   "measured:\n"
                                   "  matmul_flops_by_rows: [[1, 2.0e10], [64, 8.0e10]]\n"
                                   "  memory_Bps_by_bytes: [[1.0e6, 3.0e10], [1.0e9, 1.0e10]]\n"
                                   "  layer_overhead_s: 2.0e-5\n"
                                   "  token_overhead_s: 1.0e-7\n"
                                   "  collective_overhead_s: 5.0e-6\n");
  CHECK(h.measured.matmul_flops(8) == Approx(5e10));
  CHECK(h.measured.layer_overhead_s == 2e-5);
  CHECK(h.measured.collective_overhead_s == 5e-6);
  // What calibrate writes reads back the same.
  const HardwareSpec again = load_spec("again", h.measured.to_yaml());
  CHECK(again.measured.matmul_flops_by_rows == h.measured.matmul_flops_by_rows);
  CHECK(again.measured.token_overhead_s == h.measured.token_overhead_s);

  CHECK_THAT(load_error("decreasing", "measured:\n  matmul_flops_by_rows: [[4, 1.0], [2, 1.0]]\n"),
             Catch::Contains("measured.matmul_flops_by_rows") && Catch::Contains("increasing"));
  CHECK_THAT(load_error("scalar", "measured:\n  memory_Bps_by_bytes: 3\n"),
             Catch::Contains("measured.memory_Bps_by_bytes"));
  CHECK_THAT(load_error("negative", "measured:\n  layer_overhead_s: -1\n"),
             Catch::Contains("measured.layer_overhead_s"));
  CHECK_THAT(load_error("unknown", "measured:\n  layer_overhead: 1\n"),
             Catch::Contains("measured.layer_overhead"));
}

TEST_CASE("the cost model prices matmuls, memory and overheads by the measured tables",
          "[measured]") {
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  // One rate for every row count, so the compute time has a closed form;
  // the memory rate depends on the working set.
  const HardwareSpec h = load_spec("pricing",
                                   "measured:\n"
                                   "  matmul_flops_by_rows: [[1, 4.0e10], [4096, 4.0e10]]\n"
                                   "  matmul_flops_by_rows_alone: [[1, 8.0e10], [4096, 8.0e10]]\n"
                                   "  memory_Bps_by_bytes: [[1.0e6, 4.0e10], [1.0e10, 5.0e9]]\n"
                                   "  layer_overhead_s: 2.0e-5\n"
                                   "  token_overhead_s: 1.0e-7\n"
                                   "  collective_overhead_s: 5.0e-6\n");
  // The same fitted on a model twice tiny's width (hidden + intermediate).
  const double tiny_width = double(model.config.hidden_size + model.config.intermediate_size);
  const HardwareSpec wider = load_spec(
      "pricing-width", fmt::format("measured:\n"
                                   "  matmul_flops_by_rows: [[1, 4.0e10], [4096, 4.0e10]]\n"
                                   "  memory_Bps_by_bytes: [[1.0e6, 4.0e10], [1.0e10, 5.0e9]]\n"
                                   "  layer_overhead_s: 2.0e-5\n"
                                   "  token_overhead_s: 1.0e-7\n"
                                   "  overhead_width: {}\n",
                                   2 * tiny_width));
  CHECK(load_spec("width-again", wider.measured.to_yaml()).measured.overhead_width ==
        2 * tiny_width);
  const Workload w{4, 32, 8};
  const PhaseCost half = estimate_phase(model, wider, w, Phase::kPrefill,
                                        {FfnLayout::k1D, AttnLayout::kHeads, "bf16", Mesh{}, 0});
  CHECK(half.layer.overhead_s == Approx(2e-5 + 0.5 * 1e-7 * 4 * 32));
  for (int chips : {1, 2}) {
    const Mesh mesh{1, chips, 1, 1};
    for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
      const PhaseCost c =
          estimate_phase(model, h, w, phase, {FfnLayout::k1D, AttnLayout::kHeads, "bf16", mesh, 0});
      INFO("chips " << chips << ", " << name(phase));
      // One chip is alone on its node (2 chips per node): its own rate.
      CHECK(c.layer.compute_eff_s == Approx(c.layer.flops / (chips == 1 ? 8e10 : 4e10)));
      const double rows = phase == Phase::kPrefill ? 4.0 * 32 : 4.0;
      CHECK(c.layer.rows() == rows);
      CHECK(c.layer.overhead_s == Approx(2e-5 + 1e-7 * rows));
      const double working_set =
          double(c.layers_per_stage) * (c.layer.weight_bytes + c.layer.kv_bytes) +
          c.edges.weight_bytes + c.edges.kv_bytes;
      const double t = std::log(working_set / 1e6) / std::log(1e10 / 1e6);
      const double bandwidth = 4e10 + t * (5e9 - 4e10);
      CHECK(c.layer.memory_eff_s == Approx((c.layer.weight_bytes + c.layer.kv_bytes) / bandwidth));
      // Each collective (none on one chip) pays its latency and the measured wait.
      double expected_comm = 0;
      for (const auto& coll : c.layer.collectives) expected_comm += coll.seconds + 5e-6;
      CHECK(c.layer.comm_eff_s == Approx(expected_comm));
      CHECK(c.layer.collectives.empty() == (chips == 1));
    }
  }
}

TEST_CASE("collectives are priced by the table of their kind, at the bytes that move",
          "[measured]") {
  const HardwareSpec h = load_spec("kinds",
                                   "measured:\n"
                                   "  collective_members: 2\n"
                                   "  collective_s_by_bytes:\n"
                                   "    all-gather: [[1.0e3, 1.0e-5], [1.001e6, 1.1e-4]]\n"
                                   "    all-reduce: [[1.0e3, 2.0e-5], [1.001e6, 3.2e-4]]\n"
                                   "  collective_overhead_s: 5.0e-6\n");
  const MeasuredEfficiency& m = h.measured;
  // Between two sizes linear in bytes; below the first its time; beyond the
  // last the last segment's slope.
  CHECK(m.collective_s("all-gather", 501e3, 2, false, true) == Approx(6e-5));
  CHECK(m.collective_s("all-gather", 10, 2, false, true) == Approx(1e-5));
  CHECK(m.collective_s("all-reduce", 2.001e6, 2, false, true) == Approx(6.2e-4));
  // Fused behind another: no start-up (the smallest size's time).
  CHECK(m.collective_s("all-reduce", 1.001e6, 2, false, false) == Approx(3e-4));
  // A group of 4 moves 3/4 of the counted bytes, a group of 2 half of them.
  CHECK(m.collective_s("all-gather", 400e3, 4, false, true) ==
        Approx(m.collective_s("all-gather", 600e3, 2, false, true)));
  // No table: the kind, or across nodes.
  CHECK(m.collective_s("all-to-all", 1e6, 2, false, true) == 0);
  CHECK(m.collective_s("all-gather", 1e6, 2, true, true) == 0);
  // What calibrate writes reads back the same.
  const HardwareSpec again = load_spec("kinds-again", m.to_yaml());
  CHECK(again.measured.collective_s_by_bytes == m.collective_s_by_bytes);
  CHECK(again.measured.collective_members == 2);

  // The cost model takes them: a 2-chip layout's collectives cost the table
  // of their kind plus the measured wait.
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  const PhaseCost c =
      estimate_phase(model, h, Workload{4, 32, 8}, Phase::kPrefill,
                     {FfnLayout::k1D, AttnLayout::kHeads, "bf16", Mesh{1, 2, 1, 1}, 0});
  REQUIRE_FALSE(c.layer.collectives.empty());
  double expected = 0;
  for (const auto& coll : c.layer.collectives) {
    const double table =
        m.collective_s(std::string(name(coll.kind)), coll.bytes, 2, false, coll.first_of_group);
    const double moving = table > 0 ? table : coll.seconds;
    CHECK(coll.priced_s == Approx(moving + (coll.first_of_group ? 5e-6 : 0)));
    expected += coll.priced_s;
  }
  CHECK(c.layer.comm_eff_s == Approx(expected));

  CHECK_THAT(load_error("kinds-unknown",
                        "measured:\n  collective_members: 2\n"
                        "  collective_s_by_bytes:\n    all-scatter: [[1, 1]]\n"),
             Catch::Contains("measured.collective_s_by_bytes.all-scatter"));
  CHECK_THAT(load_error("kinds-members",
                        "measured:\n  collective_s_by_bytes:\n"
                        "    all-gather: [[1, 1]]\n"),
             Catch::Contains("measured.collective_members"));
}

TEST_CASE("decode attention is priced at its measured rate for the model's group", "[measured]") {
  // tiny: 2 query heads per KV head. The table's rate at 2 (interpolated in
  // log group between 1 and 4, linear in the rate) must price the decode attention, the rest of
  // the layer at the matmul rate; an older spec's single rate still serves.
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  const double group = double(model.config.num_heads) / double(model.config.num_kv_heads);
  REQUIRE(group == 2);
  const std::string base =
      "measured:\n"
      "  matmul_flops_by_rows: [[1, 4.0e10], [4096, 4.0e10]]\n"
      "  memory_Bps_by_bytes: [[1.0e6, 4.0e10], [1.0e10, 4.0e10]]\n";
  const HardwareSpec by_group =
      load_spec("by-group", base +
                                "  attention_decode_flops: 1.0e12\n"
                                "  attention_decode_flops_by_group: [[1, 1.0e9], [4, 4.0e9]]\n");
  CHECK(by_group.measured.attention_decode_rate(false, 2) == Approx(2.5e9));
  const HardwareSpec single = load_spec("single", base + "  attention_decode_flops: 2.5e9\n");
  const HardwareSpec none = load_spec("none", base);
  const Workload w{2, 64, 4};
  const PhaseConfig config{FfnLayout::k1D, AttnLayout::kHeads, "bf16", Mesh{1, 1, 1, 1}, 0};
  const PhaseCost plain = estimate_phase(model, none, w, Phase::kDecode, config);
  double attention_flops = 0;
  for (const MatmulCost& m : plain.layer.matmuls)
    if (m.decode_attention) {
      CHECK(m.group == group);
      attention_flops += m.flops;
    }
  REQUIRE(attention_flops > 0);
  const double others_s = (plain.layer.flops - attention_flops) / 4e10;
  for (const HardwareSpec* h : {&by_group, &single}) {
    const PhaseCost c = estimate_phase(model, *h, w, Phase::kDecode, config);
    CHECK(c.layer.compute_eff_s == Approx(others_s + attention_flops / 2.5e9));
    // The attention's arithmetic and its read of the cache add up, after the
    // weight-streaming matmuls (the larger of their compute and weight read).
    const double weights_s = std::max(others_s, c.layer.weight_bytes / 4e10);
    REQUIRE(c.layer.kv_bytes > 0);
    CHECK(c.layer.latency_s == Approx(weights_s + attention_flops / 2.5e9 +
                                      c.layer.kv_bytes / 4e10 + c.layer.overhead_s));
  }
  // A measured overlap hides that fraction of the shorter of the attention's
  // arithmetic and its read; read back as written.
  const HardwareSpec overlapping =
      load_spec("overlap", base +
                               "  attention_decode_flops_by_group: [[1, 1.0e9], [4, 4.0e9]]\n"
                               "  attention_read_overlap: 0.75\n");
  {
    const PhaseCost c = estimate_phase(model, overlapping, w, Phase::kDecode, config);
    const double weights_s = std::max(others_s, c.layer.weight_bytes / 4e10);
    const double attention_s = attention_flops / 2.5e9, read_s = c.layer.kv_bytes / 4e10;
    CHECK(c.layer.latency_s == Approx(weights_s + attention_s + read_s -
                                      0.75 * std::min(attention_s, read_s) + c.layer.overhead_s));
    CHECK(load_spec("overlap again", overlapping.measured.to_yaml())
              .measured.attention_read_overlap == Approx(0.75));
  }
  CHECK_THAT(load_error("overlap above 1", base + "  attention_read_overlap: 1.5\n"),
             Catch::Contains("attention_read_overlap"));
  // The weights stream at the measured fraction of the read bandwidth, the
  // KV cache at the whole of it; read back as written.
  const HardwareSpec streaming_half =
      load_spec("weight read", base +
                                   "  attention_decode_flops_by_group: [[1, 1.0e9], [4, 4.0e9]]\n"
                                   "  weight_read_fraction: 0.5\n");
  {
    const PhaseCost c = estimate_phase(model, streaming_half, w, Phase::kDecode, config);
    CHECK(c.layer.memory_eff_s == Approx(c.layer.weight_bytes / 2e10 + c.layer.kv_bytes / 4e10));
    const double weights_s = std::max(others_s, c.layer.weight_bytes / 2e10);
    CHECK(c.layer.latency_s == Approx(weights_s + attention_flops / 2.5e9 +
                                      c.layer.kv_bytes / 4e10 + c.layer.overhead_s));
    CHECK(load_spec("weight read again", streaming_half.measured.to_yaml())
              .measured.weight_read_fraction == Approx(0.5));
  }
  CHECK_THAT(load_error("weight read above 1", base + "  weight_read_fraction: 1.2\n"),
             Catch::Contains("weight_read_fraction"));
  CHECK_THAT(load_error("weight read of 0", base + "  weight_read_fraction: 0\n"),
             Catch::Contains("weight_read_fraction"));
  // Without a measured attention rate everything overlaps: the larger of all
  // compute and all memory time.
  CHECK(plain.layer.latency_s ==
        Approx(std::max(plain.layer.compute_eff_s, plain.layer.memory_eff_s) +
               plain.layer.overhead_s));
  // Read back as written.
  const HardwareSpec again = load_spec("again", by_group.measured.to_yaml());
  CHECK(again.measured.attention_decode_flops_by_group ==
        by_group.measured.attention_decode_flops_by_group);
  CHECK_THAT(
      load_error("alone only", base + "  attention_decode_flops_by_group_alone: [[1, 1.0]]\n"),
      Catch::Contains("_alone table"));
}

TEST_CASE("BF16 activations are priced on the _bf16 matmul tables where the spec has them",
          "[measured]") {
  // Compute-bound prefill (weights and memory far faster than the matmuls):
  // the layer's compute time is its FLOP over the rate of the table that
  // applies, F32 activations on the plain table, BF16 on the _bf16 one (the
  // _alone variants: a job of one rank per node), and BF16 on the plain
  // table when the spec has no _bf16 one (older specs).
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  const std::string base =
      "measured:\n"
      "  matmul_flops_by_rows: [[1, 1.0e10], [4096, 1.0e10]]\n"
      "  matmul_flops_by_rows_alone: [[1, 2.0e10], [4096, 2.0e10]]\n"
      "  memory_Bps_by_bytes: [[1.0e6, 1.0e14], [1.0e10, 1.0e14]]\n";
  const HardwareSpec with_bf16 = load_spec(
      "bf16-tables", base +
                         "  matmul_flops_by_rows_bf16: [[1, 4.0e10], [4096, 4.0e10]]\n"
                         "  matmul_flops_by_rows_bf16_alone: [[1, 8.0e10], [4096, 8.0e10]]\n");
  const HardwareSpec without = load_spec("no-bf16-tables", base);
  CHECK(with_bf16.measured.matmul_flops(8, false, true) == 4e10);
  CHECK(with_bf16.measured.matmul_flops(8, true, true) == 8e10);
  CHECK(with_bf16.measured.matmul_flops(8, true, false) == 2e10);
  CHECK(without.measured.matmul_flops(8, false, true) == 1e10);
  const Workload w{2, 64, 4};
  PhaseConfig config{FfnLayout::k1D, AttnLayout::kHeads, "bf16", Mesh{2, 1, 1, 1}, 0};
  auto compute_s = [&](const HardwareSpec& hw, const std::string& activations) {
    config.activation_dtype = activations;
    return estimate_phase(model, hw, w, Phase::kPrefill, config).layer.compute_eff_s;
  };
  const double flops = estimate_phase(model, without, w, Phase::kPrefill, config).layer.flops;
  // Two chips on one node of two: the in-step tables.
  CHECK(compute_s(with_bf16, "f32") == Approx(flops / 1e10));
  CHECK(compute_s(with_bf16, "bf16") == Approx(flops / 4e10));
  CHECK(compute_s(without, "bf16") == Approx(flops / 1e10));
  // Read back as written; an _alone table needs its in-step one.
  const HardwareSpec again = load_spec("bf16-again", with_bf16.measured.to_yaml());
  CHECK(again.measured.matmul_flops_by_rows_bf16 == with_bf16.measured.matmul_flops_by_rows_bf16);
  CHECK(again.measured.matmul_flops_by_rows_bf16_alone ==
        with_bf16.measured.matmul_flops_by_rows_bf16_alone);
  CHECK_THAT(
      load_error("bf16 alone only", base + "  matmul_flops_by_rows_bf16_alone: [[1, 1.0e10]]\n"),
      Catch::Contains("_alone table"));
}

TEST_CASE("the overheads are recovered from the engine's unexplained time", "[measured]") {
  const double layer = 3e-5, token = 2e-7, collective = 4e-6;
  std::vector<OverheadSample> samples;
  for (double rows : {1.0, 8.0, 16.0, 512.0})
    for (double colls : {6.0, 9.0}) {
      OverheadSample s;
      s.rows = rows;
      s.collectives = colls;
      s.per_layer_pass_s = layer + token * rows + collective * colls;
      samples.push_back(s);
    }
  auto coef = fit_overheads(samples, true);
  CHECK(coef[0] == Approx(layer).epsilon(1e-6));
  CHECK(coef[1] == Approx(token).epsilon(1e-6));
  CHECK(coef[2] == Approx(collective).epsilon(1e-6));
  CHECK(coef[3] == 0);  // no collective crossed nodes
  // Across nodes: those that cross cost more, and the fit tells them apart.
  const double inter = 9e-5;
  for (size_t i = 0; i < samples.size(); ++i) {
    OverheadSample& s = samples[i];
    s.inter_node_collectives = double(i % 3);
    s.per_layer_pass_s = layer + token * s.rows +
                         collective * (s.collectives - s.inter_node_collectives) +
                         inter * s.inter_node_collectives;
  }
  coef = fit_overheads(samples, true);
  CHECK(coef[2] == Approx(collective).epsilon(1e-6));
  CHECK(coef[3] == Approx(inter).epsilon(1e-6));
  for (auto& s : samples) s.inter_node_collectives = 0;
  // Without collectives (one rank) the collective term stays out.
  for (auto& s : samples) s.per_layer_pass_s = layer + token * s.rows;
  coef = fit_overheads(samples, false);
  CHECK(coef[0] == Approx(layer).epsilon(1e-6));
  CHECK(coef[1] == Approx(token).epsilon(1e-6));
  CHECK(coef[2] == 0);
  // A term the data make negative is dropped, not written as negative.
  for (auto& s : samples) s.per_layer_pass_s = 1e-4 - 1e-7 * s.rows;
  coef = fit_overheads(samples, false);
  CHECK(coef[1] == 0);
  CHECK(coef[0] > 0);
}

TEST_CASE("the overhead fit is the non-negative least-squares optimum", "[measured]") {
  // Noisy per-layer times (three significant digits) of four row counts
  // and four collective mixes, weighted by relative error as calibrate
  // weighs them. Unconstrained, the fit makes the inter-node term negative;
  // dropping it and then the first term that comes out negative (the layer
  // term) leaves a residual 6 % above the optimum, which keeps the layer
  // term out and the collective term in. The answer must meet the
  // optimality (KKT) conditions of min sum w (y - x.c)^2 over c >= 0: zero
  // gradient on every positive term, a gradient that does not point into
  // c < 0 on every zero one.
  const double measured[16] = {5.85e-05, 5.48e-05, 3.92e-05, 8.5e-05,  7.71e-05, 7.06e-05,
                               1.85e-05, 9.4e-05,  6.49e-05, 6.78e-05, 4.06e-05, 9.34e-05,
                               0.000124, 0.000133, 0.000104, 0.000172};
  struct Mix {
    double collectives, inter_node, gathered_bytes;
  };
  const Mix mixes[4] = {{6, 0, 0}, {9, 0, 0}, {13, 6, 0}, {7, 0, 3e6}};
  std::vector<OverheadSample> samples;
  for (double rows : {1.0, 8.0, 16.0, 512.0})
    for (const Mix& mix : mixes) {
      OverheadSample s;
      s.rows = rows;
      s.collectives = mix.collectives;
      s.inter_node_collectives = mix.inter_node;
      s.gathered_weight_bytes = mix.gathered_bytes;
      s.per_layer_pass_s = measured[samples.size()];
      s.weight = 1 / (s.per_layer_pass_s * s.per_layer_pass_s);
      samples.push_back(s);
    }
  const auto coef = fit_overheads(samples, true);
  auto features = [](const OverheadSample& p) {
    return std::array<double, 6>{1.0,
                                 p.rows,
                                 p.collectives - p.inter_node_collectives,
                                 p.inter_node_collectives,
                                 p.gathered_weight_bytes,
                                 p.inter_node_bytes};
  };
  std::array<double, 6> gradient{}, scale{};
  for (const auto& p : samples) {
    const auto x = features(p);
    double fitted = 0;
    for (size_t i = 0; i < 6; ++i) fitted += coef[i] * x[i];
    for (size_t i = 0; i < 6; ++i) {
      gradient[i] += p.weight * x[i] * (fitted - p.per_layer_pass_s);
      scale[i] += p.weight * std::abs(x[i] * p.per_layer_pass_s);
    }
  }
  int positive = 0;
  for (size_t i = 0; i < 6; ++i) {
    INFO("term " << i << ": " << coef[i] << ", gradient " << gradient[i]);
    CHECK(coef[i] >= 0);
    if (coef[i] > 0) {
      ++positive;
      CHECK(std::abs(gradient[i]) <= 1e-9 * scale[i]);
    } else {
      CHECK(gradient[i] >= -1e-9 * scale[i]);
    }
  }
  CHECK(coef[0] == 0);  // the layer term
  CHECK(coef[2] > 0);   // the collective term
  CHECK(positive == 3);
}

TEST_CASE("reprice prices a measured spec as estimate_phase does", "[measured]") {
  // Fitting reprices stored estimates for changed constants: with a measured
  // section that must land where pricing afresh on the changed spec lands.
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  const std::string measured =
      "measured:\n"
      "  matmul_flops_by_rows: [[1, 2.0e9], [64, 3.0e10], [4096, 4.0e10]]\n"
      "  memory_Bps_by_bytes: [[1.0e6, 4.0e10], [1.0e10, 5.0e9]]\n"
      "  attention_decode_flops: 1.0e9\n"
      "  layer_overhead_s: 2.0e-5\n"
      "  token_overhead_s: 1.0e-7\n"
      "  collective_overhead_s: 5.0e-6\n"
      "  weight_gather_s_per_byte: 1.0e-10\n";
  const HardwareSpec before = load_spec("reprice", measured);
  HardwareSpec after = before;
  after.efficiency.collective_bandwidth_fraction = 0.5;
  after.efficiency.comm_overlap = 0.3;
  after.efficiency.weight_gather_overlap = 0.5;
  after.efficiency.layer_overhead_s = 1e-4;
  const Workload w{4, 32, 8};
  for (FfnLayout ffn : {FfnLayout::k1D, FfnLayout::k2D, FfnLayout::kWgXY})
    for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
      const PhaseConfig config{ffn, AttnLayout::kHeads, "bf16", Mesh{1, 2, 2, 1}, 0};
      PhaseCost repriced = estimate_phase(model, before, w, phase, config);
      reprice(repriced, model, after);
      const PhaseCost fresh = estimate_phase(model, after, w, phase, config);
      INFO(name(ffn) << " " << name(phase));
      CHECK(repriced.latency_s == Approx(fresh.latency_s).epsilon(1e-12));
      CHECK(repriced.layer.comm_eff_s == Approx(fresh.layer.comm_eff_s).epsilon(1e-12));
      CHECK(repriced.layer.overhead_s == Approx(fresh.layer.overhead_s).epsilon(1e-12));
      // The measured terms are in both: not the price without them.
      CHECK(fresh.layer.overhead_s > after.efficiency.layer_overhead_s);
    }
}

TEST_CASE(
    "on nodes that share a host's cores, pipeline slots with idle stages run at the alone "
    "rates",
    "[measured]") {
  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  // In step every rank gets a quarter of the alone rate.
  auto tables = [](const char* in_step) {
    return fmt::format(
        "measured:\n"
        "  matmul_flops_by_rows: [[1, {0}], [4096, {0}]]\n"
        "  matmul_flops_by_rows_alone: [[1, 4.0e9], [4096, 4.0e9]]\n"
        "  memory_Bps_by_bytes: [[1.0e6, 1.0e10], [1.0e10, 1.0e10]]\n",
        in_step);
  };
  const HardwareSpec separate = load_spec("pp-separate", tables("1.0e9"));
  const HardwareSpec shared = load_spec("pp-shared", "nodes_share_cores: true\n" + tables("1.0e9"));
  // The same stage priced at the alone rates: in step as fast as alone.
  const HardwareSpec fast = load_spec("pp-fast", tables("4.0e9"));
  REQUIRE(shared.nodes_share_cores);
  REQUIRE_FALSE(separate.nodes_share_cores);
  // Two stages, one per node of two ranks.
  const Mesh mesh{2, 2, 1, 1};
  for (int64_t batch : {int64_t(1), int64_t(2)})
    for (Phase phase : {Phase::kPrefill, Phase::kDecode}) {
      const PhaseConfig config{FfnLayout::k1D, AttnLayout::kHeads, "bf16", mesh, 0};
      const Workload w{batch, 32, 8};
      const PhaseCost a = estimate_phase(model, separate, w, phase, config);
      const PhaseCost b = estimate_phase(model, shared, w, phase, config);
      const PhaseCost c = estimate_phase(model, fast, w, phase, config);
      REQUIRE(a.micro_batches == batch);
      auto stage = [](const PhaseCost& p) {
        return double(p.layers_per_stage) * p.layer.latency_s + p.pipeline_hop_s;
      };
      REQUIRE(stage(c) < stage(a));
      // Prefill of m micro-batches: m + 1 slots, m - 1 of them with both
      // stages busy. Decode: 2 slots a step, both busy only with 2
      // micro-batches, and one drain slot.
      const double m = double(batch), passes = phase == Phase::kPrefill ? 1 : 8;
      const double full = phase == Phase::kPrefill ? m - 1 : (m >= 2 ? passes * m : 0);
      const double slots = phase == Phase::kPrefill ? m + 1 : passes * 2 + 1;
      INFO("batch " << batch << ", " << name(phase));
      CHECK(b.latency_s - a.latency_s == Approx((slots - full) * (stage(c) - stage(a))));
    }
}

TEST_CASE("across nodes the table prices groups of one member per node, as it was timed",
          "[measured]") {
  const HardwareSpec h = load_spec("kinds-nodes",
                                   "measured:\n"
                                   "  inter_node_collective_members: 2\n"
                                   "  inter_node_collective_s_by_bytes:\n"
                                   "    all-gather: [[1.0e3, 1.0e-3], [1.0e7, 1.0e-1]]\n"
                                   "    all-reduce: [[1.0e3, 2.0e-3], [1.0e7, 2.0e-1]]\n"
                                   "    reduce-scatter: [[1.0e3, 3.0e-3], [1.0e7, 3.0e-1]]\n"
                                   "    all-to-all: [[1.0e3, 4.0e-3], [1.0e7, 4.0e-1]]\n");
  // 2 chips per node, 4 chips: the groups of one axis stay inside a node,
  // those of the other have one member on each node, those of both two.
  const Mesh mesh{1, 2, 2, 1};
  int inside = 0, one_per_node = 0, mixed = 0;
  for (const std::string axes : {"x", "y", "xy"}) {
    const bool spans = h.group_spans_nodes(mesh, axes);
    const int most = h.group_members_per_node(mesh, axes);
    inside += !spans;
    one_per_node += spans && most == 1;
    mixed += spans && most == 2;
  }
  CHECK((inside == 1 && one_per_node == 1 && mixed == 1));

  const ModelSpec model = ModelSpec::from_config(*find_preset("tiny"), "tiny");
  int checked_table = 0, checked_fit = 0;
  for (FfnLayout ffn : {FfnLayout::k1D, FfnLayout::k2D}) {
    const PhaseCost c = estimate_phase(model, h, Workload{4, 32, 8}, Phase::kPrefill,
                                       {ffn, AttnLayout::kHeads, "bf16", mesh, 0});
    for (const auto& coll : c.layer.collectives) {
      INFO(name(coll.kind) << " over " << coll.axes);
      if (!coll.spans_nodes) continue;
      const double table = h.measured.collective_s(std::string(name(coll.kind)), coll.bytes,
                                                   coll.members, true, coll.first_of_group);
      if (coll.one_per_node) {
        CHECK(coll.priced_s == Approx(table));
        ++checked_table;
      } else {
        CHECK(coll.priced_s == Approx(coll.latency_s + coll.bytes / coll.bandwidth));
        ++checked_fit;
      }
    }
  }
  CHECK(checked_table > 0);
  CHECK(checked_fit > 0);
}
