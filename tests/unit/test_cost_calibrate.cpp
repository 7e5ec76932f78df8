// `shardlm calibrate`'s fits recover known constants from synthetic samples,
// and its measurements return sane numbers on this machine.
#include <catch2/catch.hpp>

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
