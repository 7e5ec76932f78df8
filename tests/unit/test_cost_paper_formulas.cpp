// The cost model's communication volumes, priced from the layout tables,
// against the closed forms of Pope et al. App. A, and the KV-cache formulas.
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>

#include "partitioning/cost_model.hpp"

using namespace shardlm;

namespace {

// A GELU feedforward (W_in, W_out) as Fig. 2 draws it, serial block.
ModelSpec ffn_model(int64_t e, int64_t f) {
  ModelConfig c;
  c.hidden_size = e;
  c.intermediate_size = f;
  c.num_layers = 1;
  c.num_heads = c.num_kv_heads = 64;
  c.head_dim = e / 64;
  c.vocab_size = 1024;
  c.max_position_embeddings = 1 << 20;
  ModelSpec m = ModelSpec::from_config(c, "ffn");
  m.gated_ffn = false;
  return m;
}

HardwareSpec unit_hardware() {
  HardwareSpec h;
  h.name = "unit";
  h.peak_flops["bf16"] = 1e12;
  h.memory_bytes = 1e30;
  h.memory_bandwidth = 1e12;
  h.topology = "torus";
  h.link_bandwidth = 1e9;
  return h;
}

// Elements per chip moved by the feedforward's collectives in one layer
// (bf16: bytes / 2), split into weight and activation traffic.
struct Volume {
  double weights = 0, activations = 0;
  double total() const { return weights + activations; }
};

Volume ffn_volume(FfnLayout layout, const Mesh& mesh, int64_t e, int64_t f, int64_t tokens) {
  static const std::set<std::string> ffn_tensors = {"ffn_norm",        "up_partial", "h",
                                                    "ffn_out_partial", "w_up",       "w_down"};
  PhaseCost c =
      estimate_phase(ffn_model(e, f), unit_hardware(), Workload{tokens, 1, 1}, Phase::kDecode,
                     PhaseConfig{layout, AttnLayout::kHeads, "bf16", mesh});
  Volume v;
  for (const auto& col : c.layer.collectives) {
    if (!ffn_tensors.count(col.tensor)) continue;
    (col.tensor[0] == 'w' ? v.weights : v.activations) += col.bytes / 2;
  }
  return v;
}

Mesh best_2d_mesh(int n, int64_t e, int64_t f, int64_t tokens) {
  Mesh best;
  double lowest = INFINITY;
  for (const Mesh& m : Mesh::factorizations(n)) {
    double v = ffn_volume(FfnLayout::k2D, m, e, f, tokens).total();
    if (v < lowest) lowest = v, best = m;
  }
  return best;
}

}  // namespace

TEST_CASE("1D weight-stationary moves 2BLE per chip, whatever the chip count (§3.2.1)", "[cost]") {
  const int64_t e = 1024, f = 4096, bl = 256;
  for (Mesh m : {Mesh{1, 4, 1, 1}, Mesh{1, 4, 4, 4}, Mesh{1, 8, 8, 4}})
    CHECK(ffn_volume(FfnLayout::k1D, m, e, f, bl).total() == Approx(2.0 * bl * e));
}

TEST_CASE("activation collectives move the runtime's activation dtype", "[cost]") {
  // The hardware's dtype (bf16 here) unless the config names another: f32
  // activations move twice the bytes.
  const int64_t e = 1024, f = 4096, bl = 256;
  const Mesh mesh{1, 4, 1, 1};
  for (FfnLayout layout : {FfnLayout::k1D, FfnLayout::kWgXYZ}) {
    PhaseConfig config{layout, AttnLayout::kHeads, "bf16", mesh};
    const PhaseCost hw_dtype = estimate_phase(ffn_model(e, f), unit_hardware(), Workload{bl, 1, 1},
                                              Phase::kDecode, config);
    config.activation_dtype = "f32";
    const PhaseCost f32 = estimate_phase(ffn_model(e, f), unit_hardware(), Workload{bl, 1, 1},
                                         Phase::kDecode, config);
    REQUIRE(hw_dtype.layer.collectives.size() == f32.layer.collectives.size());
    for (size_t i = 0; i < f32.layer.collectives.size(); ++i) {
      const auto& a = hw_dtype.layer.collectives[i];
      const auto& b = f32.layer.collectives[i];
      INFO(a.tensor);
      // Weights move as stored, the norms' sums of squares in f32 always.
      const bool fixed = a.tensor[0] == 'w' || a.tensor.find("sumsq") != std::string::npos;
      CHECK(b.bytes == Approx(fixed ? a.bytes : 2 * a.bytes));
    }
    // The KV cache follows the activations unless it has a dtype of its own.
    CHECK(f32.memory.kv_cache == Approx(2 * hw_dtype.memory.kv_cache));
    config.kv_dtype = "bf16";
    CHECK(
        estimate_phase(ffn_model(e, f), unit_hardware(), Workload{bl, 1, 1}, Phase::kDecode, config)
            .memory.kv_cache == Approx(hw_dtype.memory.kv_cache));
  }
}

TEST_CASE("2D weight-stationary moves 2BL(E/X + F/YZ) (App. A.2.1)", "[cost]") {
  const int64_t e = 1024, f = 4096, bl = 256;
  for (Mesh m : {Mesh{1, 4, 4, 4}, Mesh{1, 2, 4, 2}, Mesh{1, 8, 2, 4}}) {
    const double yz = m.y * m.z;
    CHECK(ffn_volume(FfnLayout::k2D, m, e, f, bl).total() ==
          Approx(2.0 * bl * (e / double(m.x) + f / yz)));
  }
}

TEST_CASE("the optimal 2D split is X = sqrt(n)/2 with T = 8BLE/sqrt(n) when F = 4E", "[cost]") {
  const int64_t e = 2048, f = 4 * e, bl = 128;
  for (int n : {64, 256}) {
    const Mesh m = best_2d_mesh(n, e, f, bl);
    CHECK(m.x == Approx(0.5 * std::sqrt(n)));
    CHECK(ffn_volume(FfnLayout::k2D, m, e, f, bl).total() == Approx(8.0 * bl * e / std::sqrt(n)));
  }
  // General F/E: X* = sqrt(n E / F) [PAPER_NOTES §2.2, derived]: F = 16E on 256 chips gives 4.
  // (With X = 1 the x collectives vanish and 2d is 1d: a group of one moves nothing.)
  CHECK(best_2d_mesh(256, 4096, 16 * 4096, 64).x == 4);
}

TEST_CASE("2D beats 1D exactly when n_chips > 16 for F = 4E (§3.2.2)", "[cost]") {
  const int64_t e = 1024, f = 4 * e, bl = 64;
  for (int n : {4, 8, 16, 32, 64, 128, 256}) {
    const double one_d = ffn_volume(FfnLayout::k1D, Mesh{1, n, 1, 1}, e, f, bl).total();
    const double two_d = ffn_volume(FfnLayout::k2D, best_2d_mesh(n, e, f, bl), e, f, bl).total();
    INFO("n_chips " << n);
    if (n > 16)
      CHECK(two_d < one_d);
    else
      CHECK(two_d >= one_d);
  }
}

TEST_CASE("weight-gathered: 2EFN/n weight and 2BLE/N activation traffic (App. A.2.2)", "[cost]") {
  const int64_t e = 1024, f = 4096;
  const Mesh m{1, 4, 4, 4};
  const double n = 64;
  for (int64_t bl : {512, 16384, 262144})
    for (auto [layout, gathered] :
         {std::pair{FfnLayout::kWgX, 4.0}, {FfnLayout::kWgXY, 16.0}, {FfnLayout::kWgXYZ, 64.0}}) {
      const Volume v = ffn_volume(layout, m, e, f, bl);
      CHECK(v.weights == Approx(2.0 * e * f * gathered / n));
      const double acts = gathered == n ? 0.0 : 2.0 * bl * e / gathered;  // XYZ needs none
      CHECK(v.activations == Approx(acts));
    }
}

TEST_CASE("the weight-gathered optimum N = sqrt(BL n / F) and T = 4E sqrt(BLF)/sqrt(n)", "[cost]") {
  const int64_t e = 1024, f = 4096;
  const Mesh m{1, 4, 4, 4};
  // BL = 4F puts the optimum at N = 16, i.e. XY-weight-gathered.
  const int64_t bl = 4 * f;
  const double n_star = std::sqrt(bl * 64.0 / f);
  REQUIRE(n_star == 16);
  const double x = ffn_volume(FfnLayout::kWgX, m, e, f, bl).total();
  const double xy = ffn_volume(FfnLayout::kWgXY, m, e, f, bl).total();
  const double xyz = ffn_volume(FfnLayout::kWgXYZ, m, e, f, bl).total();
  CHECK(xy < x);
  CHECK(xy < xyz);
  CHECK(xy == Approx(4.0 * e * std::sqrt(double(bl) * f) / std::sqrt(64.0)));
  // As tokens grow the best layout moves WS -> X -> XY -> XYZ (Fig. 3).
  auto best = [&](int64_t tokens) {
    FfnLayout top = FfnLayout::k2D;
    double lowest = INFINITY;
    for (FfnLayout l : kAllFfnLayouts)
      if (double v = ffn_volume(l, m, e, f, tokens).total(); v < lowest) lowest = v, top = l;
    return top;
  };
  CHECK(best(16) == FfnLayout::k2D);
  CHECK(best(bl) == FfnLayout::kWgXY);
  CHECK(best(64 * bl) == FfnLayout::kWgXYZ);
}

namespace {
ModelSpec palm540() {
  return ModelSpec::load_yaml(std::string(SHARDLM_SOURCE_DIR) + "/configs/models/palm-540b.yaml");
}
HardwareSpec tpu() {
  return HardwareSpec::load(std::string(SHARDLM_SOURCE_DIR) + "/configs/hardware/tpu-v4.yaml");
}
}  // namespace

TEST_CASE("KV-cache bytes: B * C * layers * 2 * K * D * bytes, split per attention layout",
          "[cost]") {
  const ModelSpec m = palm540();
  // §2.1 [D]: PaLM 540B, batch 512, context 2048, bf16: 127 GB (multiquery).
  CHECK(kv_cache_bytes(m, 512, 2048, 2) == Approx(512.0 * 2048 * 118 * 2 * 256 * 2));
  CHECK(kv_cache_bytes(m, 512, 2048, 2) / 1e9 == Approx(126.7).epsilon(0.001));
  const HardwareSpec hw = tpu();
  const Workload w{512, 2000, 48};
  auto kv_per_chip = [&](AttnLayout a) {
    // The per-chip cache of the layout itself (no choice of the smaller one).
    auto l = make_layout(FfnLayout::k2D, a, layout_shape(m), Mesh{1, 4, 4, 4});
    DimSizes d = phase_dims(m, w, Phase::kDecode, 512);
    d['C'] = 2048;
    return 118.0 * 2 * 2 * static_cast<double>(l.kv_cache.local_elements(d, Mesh{1, 4, 4, 4}));
  };
  CHECK(kv_per_chip(AttnLayout::kHeads) == Approx(kv_cache_bytes(m, 512, 2048, 2)));  // replicated
  CHECK(kv_per_chip(AttnLayout::kBatch) ==
        Approx(kv_cache_bytes(m, 512, 2048, 2) / 64));  // split over batch
  // Decode reads the cache each step: batch sharding cuts that time 64-fold (§3.3).
  PhaseConfig heads{FfnLayout::k2D, AttnLayout::kHeads, "bf16", Mesh{1, 4, 4, 4}};
  PhaseConfig batch = heads;
  batch.attn = AttnLayout::kBatch;
  const double t_heads = estimate_phase(m, hw, w, Phase::kDecode, heads).layer.kv_mem_s;
  const double t_batch = estimate_phase(m, hw, w, Phase::kDecode, batch).layer.kv_mem_s;
  CHECK(t_heads / t_batch == Approx(64));
}

TEST_CASE("the longest context that fits, per attention layout", "[cost]") {
  const ModelSpec m = palm540();
  const HardwareSpec hw = tpu();
  const Mesh mesh{1, 4, 4, 4};
  for (int64_t batch : {64, 512}) {
    PhaseConfig cfg{FfnLayout::k2D, AttnLayout::kBatch, "bf16", mesh};
    PhaseCost base = estimate_phase(m, hw, Workload{batch, 1, 1}, Phase::kDecode, cfg);
    const double room = base.memory.available - base.memory.weights - base.memory.activations;
    const double per_token_batch = batch / 64.0 * 118 * 2 * 256 * 2;  // B/n sequences per chip
    const double per_token_heads = batch * 118.0 * 2 * 256 * 2;  // every sequence on every chip
    CHECK(max_context(m, hw, batch, cfg) == static_cast<int64_t>(room / per_token_batch));
    cfg.attn = AttnLayout::kHeads;
    CHECK(max_context(m, hw, batch, cfg) == static_cast<int64_t>(room / per_token_heads));
  }
}

TEST_CASE("MFU and cost follow their definitions (§2, §4.4)", "[cost]") {
  const ModelSpec m = palm540();
  const HardwareSpec hw = tpu();
  PhaseCost c =
      estimate_phase(m, hw, Workload{64, 2048, 64}, Phase::kDecode,
                     PhaseConfig{FfnLayout::k2D, AttnLayout::kBatch, "int8", Mesh{1, 4, 4, 4}});
  CHECK(c.tokens == 64 * 64);
  CHECK(c.mfu == Approx(2.0 * m.mfu_params() * c.tokens / (64 * 275e12 * c.latency_s)));
  CHECK(c.cost_chip_ms_per_token == Approx(64 * c.latency_s * 1e3 / c.tokens));
  // Weight matmuls cost 2 * params * tokens over all chips, except the single
  // K/V head, which 2d replicates over the Y*Z = 16 chips of each x-row.
  const double kv_params = 2.0 * 18432 * 256;
  const double weight_flops =
      2.0 * 64 * (m.params_per_layer(64) - 18432 - kv_params) + 2.0 * 64 * kv_params * 16;
  const double attn_flops = 4.0 * 64 * 64 * 256 * (2048 + 32);
  CHECK(c.layer.flops * 64 == Approx(weight_flops + attn_flops).epsilon(1e-6));
}

TEST_CASE("a batch whose activations do not fit runs in micro-batches", "[cost]") {
  const ModelSpec m =
      ModelSpec::load_yaml(std::string(SHARDLM_SOURCE_DIR) + "/configs/models/palm-62b.yaml");
  const HardwareSpec hw = tpu();
  const PhaseConfig cfg{FfnLayout::k2D, AttnLayout::kHeads, "bf16", Mesh{1, 2, 2, 2}};
  const PhaseCost c = estimate_phase(m, hw, Workload{512, 2048, 64}, Phase::kPrefill, cfg);
  REQUIRE(c.problem.empty());
  CHECK(c.micro_batches > 1);
  CHECK(c.memory.fits());
  // One pipeline stage: every micro-batch runs all layers, then the embedding and head.
  const double m_batches = static_cast<double>(c.micro_batches);
  CHECK(c.latency_s == Approx(m_batches * (64 * c.layer.latency_s + c.edges.latency_s)));
  // The same batch at a size that fits needs no chunks.
  CHECK(estimate_phase(m, hw, Workload{8, 2048, 64}, Phase::kPrefill, cfg).micro_batches == 1);
}
