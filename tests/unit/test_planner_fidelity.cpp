// The fitted efficiency models against the shipped published results
// (configs/paper): every number in sample and in leave-one-out
// cross-validation, and the planner's free choice against the fastest
// published configuration (docs/planner.md §3 states the targets and the
// exceptions). [refits]: the tests that refit the constants for every
// left-out point, seconds in the Release build and minutes under the
// sanitizers, which skip them (scripts/sanitize.sh).
#include <catch2/catch.hpp>
#include <cmath>

#include "partitioning/paper_fit.hpp"
#include "runtime/errors.hpp"

using namespace shardlm;

namespace {
const std::string kRoot = SHARDLM_SOURCE_DIR;
HardwareSpec hardware(const std::string& name) {
  return HardwareSpec::load(kRoot + "/configs/hardware/" + name + ".yaml");
}
PublishedSet tpu_set() {
  return PublishedSet::load({kRoot + "/configs/paper/pope2022_tables.yaml",
                             kRoot + "/configs/paper/pope2022_appendix_d.yaml"});
}
PublishedSet a100_set() {
  return PublishedSet::load(kRoot + "/configs/paper/fastertransformer_a100.yaml");
}
// Every result within 20% in sample and cross-validated, and above its roofline.
void check_within_20_percent(const FidelityRow& r) {
  INFO(r.published.label << ": published " << r.published.latency_s << " s, predicted "
                         << r.predicted_s << ", cross-validated " << r.cross_validated_s);
  CHECK(std::abs(r.error()) < 0.20);
  CHECK(std::abs(r.cross_validated_error()) < 0.20);
  // The pure roofline is optimistic (PAPER_NOTES §4.3): it stays below.
  CHECK(r.roofline_s < r.published.latency_s);
}
}  // namespace

TEST_CASE("TPU v4: every published latency within 20%, in sample and cross-validated",
          "[planner][fidelity][refits]") {
  const PublishedSet set = tpu_set();
  REQUIRE(set.results.size() == 8 + 72);
  const HardwareSpec hw = hardware("tpu-v4");
  std::vector<FidelityRow> rows = evaluate(set, hw);
  cross_validate(set, hw, rows);
  for (const FidelityRow& r : rows) check_within_20_percent(r);
}

TEST_CASE("A100: FasterTransformer latencies within 20%, in sample and cross-validated",
          "[planner][fidelity][refits]") {
  const PublishedSet set = a100_set();
  REQUIRE(set.results.size() == 52);
  const HardwareSpec hw = hardware("a100-80g-sxm");
  std::vector<FidelityRow> rows = evaluate(set, hw);
  cross_validate(set, hw, rows);
  int pipelined = 0;
  for (const FidelityRow& r : rows) {
    check_within_20_percent(r);
    pipelined += r.published.config.mesh.pp == 3;
  }
  CHECK(pipelined == 18);  // PP3/TP8, with FasterTransformer's micro-batches pinned
}

TEST_CASE("cross-validation refits: a point's own error grows when it is left out",
          "[planner][fidelity]") {
  // Leave-one-out must not reuse the in-sample constants: over a set, the
  // left-out errors are at least as large in total, and some differ.
  const PublishedSet set = PublishedSet::load(kRoot + "/configs/paper/pope2022_tables.yaml");
  const HardwareSpec hw = hardware("tpu-v4");
  std::vector<FidelityRow> rows = evaluate(set, hw);
  cross_validate(set, hw, rows);
  double in = 0, out = 0;
  int differ = 0;
  for (const FidelityRow& r : rows) {
    in += std::pow(std::log(r.predicted_s / r.published.latency_s), 2);
    out += std::pow(std::log(r.cross_validated_s / r.published.latency_s), 2);
    differ += std::abs(r.cross_validated_s / r.predicted_s - 1) > 1e-3;
  }
  CHECK(out >= in);
  CHECK(differ > 0);
}

TEST_CASE("free choices on TPU v4 are not predicted far faster than the fastest published",
          "[planner][fidelity][refits]") {
  const HardwareSpec hw = hardware("tpu-v4");
  for (const FreeChoiceRow& r :
       free_choices(PublishedSet::load(kRoot + "/configs/paper/pope2022_tables.yaml"), hw)) {
    INFO(r.what << ": " << r.free_setup << " " << r.free_s << " s vs " << r.best_label << " "
                << r.best_published_s << " s");
    REQUIRE(r.free_s > 0);
    CHECK(r.speedup() <= 0.20);
  }
  for (const FreeChoiceRow& r :
       free_choices(PublishedSet::load(kRoot + "/configs/paper/pope2022_appendix_d.yaml"), hw)) {
    INFO(r.what << ": " << r.free_setup << " " << r.free_s << " s vs " << r.best_label << " "
                << r.best_published_s << " s, predicted " << r.best_predicted_s);
    if (r.free_s == 0) continue;  // MT-NLG at B = 1024 x 136 fits no setup of 64 chips
    // The search includes the published configuration: never worse than it.
    CHECK(r.free_s <= r.best_predicted_s * (1 + 1e-9));
    // App. D measured 2D layouts only; weight-gathered prefill at 32k-131k
    // tokens is predicted faster (docs/planner.md lists those rows).
    const bool gathers = r.free_setup.find("wg-") != std::string::npos;
    // Where the free choice is no faster than the published configuration's
    // own prediction, the gap is that prediction's error, held to 20% above.
    const bool published_choice = r.free_s >= 0.99 * r.best_predicted_s;
    if (!gathers && !published_choice) CHECK(r.speedup() <= 0.20);
  }
}

TEST_CASE("free choices on A100 against FasterTransformer on 16 and 32 GPUs",
          "[planner][fidelity][refits]") {
  const HardwareSpec hw = hardware("a100-80g-sxm");
  for (const FreeChoiceRow& r : free_choices(a100_set(), hw)) {
    INFO(r.what << ": " << r.free_setup << " " << r.free_s << " s vs " << r.best_label << " "
                << r.best_published_s << " s");
    // 24 GPUs: FasterTransformer's 3 pipeline stages are not among the
    // planner's depths (1, 2, 4, 8), and tensor parallelism over 24 splits
    // MT-NLG's 128 heads unevenly (docs/planner.md).
    if (r.free_s == 0 || r.what.find("on 24 chips") != std::string::npos) continue;
    CHECK(r.free_s <= r.best_predicted_s * (1 + 1e-9));
    // A pipelined free choice on 32 GPUs: FasterTransformer measured
    // pipelining only on 24 GPUs, where PP3/TP8 already beats TP32.
    if (r.free_setup.find("pp=") == std::string::npos) CHECK(r.speedup() <= 0.20);
  }
}

TEST_CASE("published-results files of two machines cannot be fitted together",
          "[planner][fidelity]") {
  try {
    PublishedSet::load({kRoot + "/configs/paper/pope2022_tables.yaml",
                        kRoot + "/configs/paper/fastertransformer_a100.yaml"});
    FAIL("expected DataError");
  } catch (const DataError& e) {
    CHECK_THAT(e.what(), Catch::Contains("fastertransformer_a100.yaml"));
    CHECK_THAT(e.what(), Catch::Contains("a100-80g-sxm"));
    CHECK_THAT(e.what(), Catch::Contains("tpu-v4"));
  }
}

TEST_CASE("FasterTransformer's pipeline micro-batches in the data follow its batching rule",
          "[planner][fidelity]") {
  // getLocalBatchSize: batch / pp when pp divides it, halved while above
  // 2048 tokens and even; the micro-batch count is batch / that.
  auto micro_batches = [](int64_t batch, int64_t tokens_per_sequence) {
    int64_t local = batch % 3 == 0 ? batch / 3 : batch;
    while (local * tokens_per_sequence > 2048 && local % 2 == 0) local /= 2;
    return batch / local;
  };
  int checked = 0;
  for (const PublishedResult& p : a100_set().results) {
    if (p.config.mesh.pp != 3) continue;
    INFO(p.label);
    REQUIRE(p.prefill_config);
    CHECK(p.config.micro_batches == micro_batches(p.workload.batch, 1));
    CHECK(p.prefill_config->micro_batches ==
          micro_batches(p.workload.batch, p.workload.prompt_len));
    // The cost model runs them: decode one micro-batch through 3 stages.
    const ModelSpec m = a100_set().model(p.model);
    const PhaseCost decode =
        estimate_phase(m, hardware("a100-80g-sxm"), p.workload, Phase::kDecode, p.config);
    CHECK(decode.micro_batches == p.config.micro_batches);
    ++checked;
  }
  CHECK(checked == 18);
}
