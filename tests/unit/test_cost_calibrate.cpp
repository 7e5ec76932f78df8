// `shardlm calibrate`'s fits recover known constants from synthetic samples,
// and its measurements return sane numbers on this machine.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

#include "partitioning/calibrate.hpp"

using namespace shardlm;

TEST_CASE("latency and bandwidth are recovered from t = a + bytes / bw", "[calibrate]") {
  std::vector<CollectiveSample> samples;
  for (double bytes : {4096.0, 65536.0, 1048576.0, 16777216.0})
    samples.push_back({"all-gather", bytes, 3e-6 + bytes / 2e9});
  double latency = 0, bandwidth = 0;
  fit_latency_bandwidth(samples, latency, bandwidth);
  CHECK(latency == Approx(3e-6).epsilon(1e-6));
  CHECK(bandwidth == Approx(2e9).epsilon(1e-6));
}

TEST_CASE("matmul_half_rows is recovered from rows / (rows + h)", "[calibrate]") {
  const double peak = 1e11, h = 40;
  std::vector<MatmulSample> samples;
  for (int64_t rows : {1, 4, 16, 64, 256, 2048})
    samples.push_back({rows, 512, 512, peak * double(rows) / (double(rows) + h)});
  CHECK(fit_half_rows(samples, peak) == Approx(h).epsilon(0.02));
}

TEST_CASE("measurements return plausible numbers", "[calibrate]") {
  const double flops = measure_matmul(128, 128, 128, 1);
  CHECK(flops > 1e8);   // any CPU of this century
  CHECK(flops < 1e14);  // and no CPU at all
  const double bw = measure_memory_read(size_t(16) << 20, 1);
  CHECK(bw > 1e8);
  CHECK(bw < 1e13);
}

TEST_CASE("the streaming crossover is the limit that loses least over the row counts",
          "[calibrate]") {
  // streaming_s, batched_s per row count. The batched path wins from 48 rows on,
  // by more at every count: the limit is 32.
  const std::vector<StreamingSample> monotonic = {{8, 1.0, 3.0},  {16, 1.1, 2.0}, {32, 1.5, 1.6},
                                                  {48, 2.0, 1.9}, {64, 2.6, 2.5}, {96, 4.0, 3.0}};
  CHECK(choose_streaming_max_rows(monotonic) == 32);
  // What calibrate measured with the portable kernels on an AVX2 EPYC: level
  // at 24-48 rows, the panel up to 10 % ahead; streaming ahead by up to 27 %
  // at 64-192. Limits: 16 loses 0.48 (64-192 on the panel), 192 loses 0.21.
  const std::vector<StreamingSample> level = {
      {8, 2.563, 2.971},   {16, 2.735, 4.583}, {24, 4.539, 4.381}, {32, 6.08, 5.726},
      {48, 7.67, 6.906},   {64, 7.493, 7.991}, {96, 10.65, 13.5},  {128, 14.35, 15.97},
      {192, 21.82, 22.55}, {256, 38.33, 36.85}};
  CHECK(choose_streaming_max_rows(level) == 192);
  CHECK(choose_streaming_max_rows({{8, 2.0, 1.0}}) == 1);
  CHECK(choose_streaming_max_rows({{8, 1.0, 2.0}, {256, 1.0, 2.0}}) == 256);
  CHECK(choose_streaming_max_rows({{8, 1.0, 1.0}, {16, 2.0, 2.0}}) == 1);  // ties: the smaller
}

namespace {
// The least a Calibration needs for to_yaml to write a spec that loads.
Calibration minimal_calibration(const std::string& name) {
  Calibration c;
  c.spec.name = name;
  c.spec.peak_flops["f32"] = 1e11;
  c.spec.memory_bytes = 1e10;
  c.spec.memory_bandwidth = 2e10;
  c.spec.intra_node_bandwidth = c.spec.inter_node_bandwidth = 2e10;
  return c;
}
}  // namespace

TEST_CASE("calibrate's spec carries the crossovers to HardwareSpec::load", "[calibrate]") {
  Calibration c = minimal_calibration("roundtrip");
  c.spec.cpu_streaming_max_rows = 48;
  c.spec.cpu_amx_streaming_max_rows = 3;
  const std::string file = "calibrate_roundtrip_test.yaml";
  std::ofstream(file) << to_yaml(c);
  const HardwareSpec loaded = HardwareSpec::load(file);
  std::remove(file.c_str());
  CHECK(loaded.cpu_streaming_max_rows == 48);
  CHECK(loaded.cpu_amx_streaming_max_rows == 3);
}

TEST_CASE("a speed that moved during calibrate is reported in the spec", "[calibrate]") {
  const SpeedProbe start{1e11, 2e10};
  // Within 15% either way: no warning.
  CHECK(speed_drift_warning(start, {0.9e11, 2.2e10}).empty());
  // The matmul 30% slower at the end: the warning names both rates and the change.
  const std::string slower = speed_drift_warning(start, {0.7e11, 2e10});
  CHECK(slower.find("1e+11") != std::string::npos);
  CHECK(slower.find("7e+10") != std::string::npos);
  CHECK(slower.find("-30%") != std::string::npos);
  // The read 40% faster.
  CHECK(speed_drift_warning(start, {1e11, 2.8e10}).find("+40%") != std::string::npos);

  Calibration c = minimal_calibration("drift");
  c.probe_start = start;
  c.probe_end = {0.7e11, 2e10};
  const std::string yaml = to_yaml(c);
  CHECK(yaml.find("# WARNING: the machine's speed moved") != std::string::npos);
  c.probe_end = start;
  CHECK(to_yaml(c).find("WARNING") == std::string::npos);
  CHECK(to_yaml(c).find("# Speed at the start and at the end") != std::string::npos);
}

TEST_CASE("a rate far below its neighbours is found for measuring again", "[calibrate]") {
  using Dips = std::vector<size_t>;
  // The alone matmul table of a calibration on the EPYC guest: 4 rows at
  // 2.65e10 FLOP/s between 7.5e10 and 2.0e11.
  CHECK(rate_dips({4.55e10, 7.51e10, 2.65e10, 2.0e11, 1.94e11}) == Dips{2});
  // Steps that kernels and caches make are not dips: the streaming/panel
  // switch, a working set leaving the last-level cache (the end, 0.3x of
  // its neighbour), a rate half of its slower neighbour's exactly.
  CHECK(rate_dips({4.5e10, 7.5e10, 1.9e11, 2.2e11, 1.7e11, 2.1e11}).empty());
  CHECK(rate_dips({1.9e11, 2.1e11, 9.8e10, 6.7e10, 6.0e10, 1.8e10}).empty());
  CHECK(rate_dips({4.0e10, 2.0e10, 8.0e10}).empty());
  // Just below half of both, and an end below a quarter of its neighbour
  // (a 1-row rate 2.3e10 beside 9.7e10 at 2 rows).
  CHECK(rate_dips({4.0e10, 1.99e10, 8.0e10}) == Dips{1});
  CHECK(rate_dips({2.34e10, 9.7e10, 2.8e11}) == Dips{0});
  CHECK(rate_dips({1.0e11, 4.0e11, 0.9e11}) == Dips{2});
  // One point has no neighbours to compare with.
  CHECK(rate_dips({1.0}).empty());
  CHECK(rate_dips({}).empty());
}

TEST_CASE("a table measured several times keeps each size's median rate", "[calibrate]") {
  using Table = std::vector<std::pair<double, double>>;
  // The slow 512 MiB read of one pass (2.86e10) is outvoted by the other two.
  const Table a = {{8, 8e10}, {512, 2.86e10}}, b = {{8, 7e10}, {512, 4.3e10}},
              c = {{8, 9e10}, {512, 4.5e10}};
  CHECK(median_rates({a, b, c}) == Table{{8, 8e10}, {512, 4.3e10}});
  CHECK(median_rates({a, b}) == Table{{8, 7.5e10}, {512, (2.86e10 + 4.3e10) / 2}});
  CHECK(median_rates({}).empty());
  CHECK(median({3, 1, 2}) == 2.0);
  CHECK(median({4, 1}) == 2.5);
  CHECK(median({}) == 0.0);
}

TEST_CASE("the weights' read fraction is the median of the runs' ratios, written to the spec",
          "[calibrate]") {
  // Ratios 0.75, 0.5 and (clamped) 1: the median, 0.75; of two runs their mean.
  CHECK(weight_read_fraction({{30, 40}, {20, 40}, {45, 40}}) == Approx(0.75));
  CHECK(weight_read_fraction({{30, 40}, {20, 40}}) == Approx(0.625));
  CHECK(weight_read_fraction({}) == 0.0);
  Calibration c = minimal_calibration("weights");
  c.weight_streams = {{30e9, 40e9}, {20e9, 40e9}, {45e9, 40e9}};
  c.spec.measured.weight_read_fraction = weight_read_fraction(c.weight_streams);
  const std::string yaml = to_yaml(c);
  CHECK_THAT(yaml, Catch::Contains("#   3e+10, 4e+10"));
  const std::string file = "calibrate_weights_test.yaml";
  std::ofstream(file) << yaml;
  const HardwareSpec loaded = HardwareSpec::load(file);
  std::remove(file.c_str());
  CHECK(loaded.measured.weight_read_fraction == Approx(0.75));
}

TEST_CASE("decode attention's read overlap is the fraction of the shorter part hidden",
          "[calibrate]") {
  // Arithmetic 2 s, read 3 s: measured 5 s hides nothing, 3 s hides all of
  // the arithmetic, 4 s half of it; faster than either part or slower than
  // both added still gives a fraction.
  CHECK(attention_read_overlap(2, 3, 5) == Approx(0.0));
  CHECK(attention_read_overlap(2, 3, 3) == Approx(1.0));
  CHECK(attention_read_overlap(2, 3, 4) == Approx(0.5));
  CHECK(attention_read_overlap(3, 2, 4) == Approx(0.5));
  CHECK(attention_read_overlap(2, 3, 2.5) == Approx(1.0));
  CHECK(attention_read_overlap(2, 3, 6) == Approx(0.0));
  CHECK(attention_read_overlap(0, 3, 3) == Approx(0.0));
  // Written into the spec where calibrate measured one, read back by the planner.
  Calibration c = minimal_calibration("overlap");
  c.spec.measured.attention_read_overlap = 0.4;
  c.attention_from_memory.push_back({3, 2, 3, 4.2, 0.4});
  const std::string file = "calibrate_overlap_test.yaml";
  std::ofstream(file) << to_yaml(c);
  const HardwareSpec loaded = HardwareSpec::load(file);
  std::remove(file.c_str());
  CHECK(loaded.measured.attention_read_overlap == Approx(0.4));
}
