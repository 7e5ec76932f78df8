// cuda::sample_rows against sample_token_from_draw: the same logits and
// uniforms must give exactly the same ids (the GPU runs the rule's arithmetic
// of kernels/math.hpp in the CPU's order, so no tolerance applies).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/sampling.cuh"
#include "runtime/sampler.hpp"

using namespace shardlm;

namespace {

void require_cuda(cudaError_t status, const char* what) {
  INFO(what << ": " << cudaGetErrorString(status));
  REQUIRE(status == cudaSuccess);
}

// Device memory of `bytes`, freed on scope exit.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) {
    if (bytes) require_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

// Rows of logits of varied shape: spread (peaked or flat), ties (values on a
// grid of 0.5, -0 and +0 among them), and a few -inf (masked candidates).
std::vector<float> make_logits(int64_t rows, int64_t vocab, bool ties, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> logits(size_t(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    const float spread = r % 3 == 0 ? 0.3f : (r % 3 == 1 ? 2.f : 6.f);
    std::normal_distribution<float> normal(0.f, spread);
    float* row = logits.data() + r * vocab;
    for (int64_t i = 0; i < vocab; ++i) {
      float l = normal(rng);
      if (ties) l = std::round(l * 2.f) / 2.f;
      row[i] = l;
    }
    if (ties) {
      row[vocab / 3] = -0.0f;
      row[vocab / 2] = 0.0f;
    }
    if (r % 2 == 1)
      for (int64_t i = 5; i < vocab; i += 97) row[i] = -std::numeric_limits<float>::infinity();
  }
  return logits;
}

// Uniforms of each row: the ends of [0, 1) first, then random draws.
std::vector<double> make_uniforms(int64_t rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> u(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r)
    u[size_t(r)] = r == 0 ? 0.0 : r == 1 ? 1.0 - std::ldexp(1.0, -53) : sampling_draw(rng);
  return u;
}

// The GPU's ids for `params`, compared with the CPU's row by row.
void check_rows(const std::vector<float>& logits, int64_t rows, int64_t vocab,
                const std::vector<double>& uniforms, const SamplingParams& params) {
  DeviceBuffer d_logits(logits.size() * sizeof(float)),
      d_uniforms(uniforms.size() * sizeof(double)), d_ids(size_t(rows) * sizeof(int32_t)),
      d_scratch(cuda::sampling_scratch_bytes(rows, vocab));
  require_cuda(cudaMemcpy(d_logits.ptr, logits.data(), logits.size() * sizeof(float),
                          cudaMemcpyHostToDevice),
               "copying the logits");
  require_cuda(cudaMemcpy(d_uniforms.ptr, uniforms.data(), uniforms.size() * sizeof(double),
                          cudaMemcpyHostToDevice),
               "copying the uniforms");
  cuda::sample_rows(d_logits.as<float>(), rows, vocab, params, d_uniforms.as<double>(),
                    d_ids.as<int32_t>(), d_scratch.ptr, nullptr);
  require_cuda(cudaDeviceSynchronize(), "sample_rows");
  std::vector<int32_t> ids(static_cast<size_t>(rows));
  require_cuda(
      cudaMemcpy(ids.data(), d_ids.ptr, ids.size() * sizeof(int32_t), cudaMemcpyDeviceToHost),
      "copying the ids");
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t want =
        sample_token_from_draw(logits.data() + r * vocab, vocab, params, uniforms[size_t(r)]);
    INFO("vocab " << vocab << ", row " << r << ", temperature " << params.temperature << ", top_k "
                  << params.top_k << ", top_p " << params.top_p << ", uniform "
                  << uniforms[size_t(r)]);
    CHECK(ids[size_t(r)] == want);
  }
}

}  // namespace

TEST_CASE("GPU sampling returns the CPU's ids for the same logits and uniforms",
          "[cuda][sampling]") {
  for (const int64_t vocab : {int64_t(1000), int64_t(151936)}) {
    for (const bool ties : {false, true}) {
      const int64_t rows = 6;
      const std::vector<float> logits = make_logits(rows, vocab, ties, uint64_t(vocab) + ties);
      const std::vector<double> uniforms = make_uniforms(rows, uint64_t(vocab) * 3 + ties);
      for (const float temperature : {0.f, 0.7f, 1.3f})
        for (const int top_k : {0, 1, 40})
          for (const float top_p : {1.f, 0.9f, 0.5f}) {
            if (temperature == 0.f && (top_k != 0 || top_p != 1.f)) continue;  // greedy alike
            check_rows(logits, rows, vocab, uniforms, {temperature, top_k, top_p, 0});
          }
    }
  }
}

TEST_CASE("GPU sampling over more rows than one sort pass holds", "[cuda][sampling]") {
  // 2^23 candidates per pass: 55 rows of 151936; 60 rows take two passes.
  const int64_t rows = 60, vocab = 151936;
  const std::vector<float> logits = make_logits(rows, vocab, true, 99);
  const std::vector<double> uniforms = make_uniforms(rows, 100);
  check_rows(logits, rows, vocab, uniforms, {1.f, 0, 0.9f, 0});
  check_rows(logits, rows, vocab, uniforms, {0.8f, 50, 1.f, 0});
  check_rows(logits, rows, vocab, uniforms, {0.f, 0, 1.f, 0});
}

TEST_CASE("GPU greedy takes the lowest id among equal largest logits", "[cuda][sampling]") {
  const int64_t rows = 3, vocab = 4096;
  std::vector<float> logits(size_t(rows * vocab), -1.f);
  // Row 0: the largest value at 3000 and 17; row 1: at 4095 only; row 2: all equal.
  logits[3000] = logits[17] = 2.f;
  logits[size_t(vocab + 4095)] = 0.5f;
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(2 * vocab + i)] = 1.f;
  const std::vector<double> uniforms(size_t(rows), 0.5);
  check_rows(logits, rows, vocab, uniforms, {0.f, 0, 1.f, 0});
  check_rows(logits, rows, vocab, uniforms, {1.f, 1, 1.f, 0});
  // Also with temperature: all equal gives uniform weights; the draw's
  // position picks the id.
  check_rows(logits, rows, vocab, uniforms, {1.f, 0, 1.f, 0});
}
