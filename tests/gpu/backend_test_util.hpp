#pragma once
// Helpers the tests comparing the CUDA backend with the CPU backend share:
// random inputs, host copies through a backend, raw bytes, exact equality.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/backend.hpp"

namespace shardlm::test {

inline std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Host floats as a tensor of `dtype` (F32, or BF16: rounded on the way in).
inline Tensor upload(Backend& backend, const std::vector<float>& values, const Shape& shape,
                     DType dtype = DType::F32) {
  Tensor t = backend.alloc(shape, dtype);
  backend.copy_from_host(values.data(), t);
  return t;
}

inline std::vector<float> download(Backend& backend, const Tensor& t) {
  std::vector<float> values(size_t(t.numel()));
  backend.copy_to_host(t, values.data());
  return values;
}

// The bytes a tensor holds, device or host (the backend's stream is
// non-blocking: the device is synchronised before the plain copy).
inline std::vector<char> bytes_of(const Tensor& t) {
  std::vector<char> bytes(t.nbytes());
  if (t.device() == Device::CPU) {
    std::memcpy(bytes.data(), t.raw(), bytes.size());
  } else {
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    REQUIRE(cudaMemcpy(bytes.data(), t.raw(), bytes.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  }
  return bytes;
}

inline void check_equal(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i]) && mismatches++ == 0) first = i;
  INFO("first mismatch at " << first << ": " << a[first] << " vs " << b[first]);
  CHECK(mismatches == 0);
}

}  // namespace shardlm::test
