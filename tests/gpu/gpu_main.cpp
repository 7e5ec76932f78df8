// The GPU tests' main: Catch2 over tests/gpu/test_cuda_*.cpp when a CUDA
// device is visible; otherwise one line saying they were skipped and why,
// which ctest reads as a skip (SKIP_REGULAR_EXPRESSION "SKIPPED").
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "kernels/cuda/cuda_backend.hpp"

int main(int argc, char** argv) {
  if (shardlm::cuda_device_count() == 0) {
    std::printf(
        "SKIPPED: no CUDA device visible; the GPU tests compare the CUDA backend with "
        "the CPU backend and need one\n");
    return 0;
  }
  return Catch::Session().run(argc, argv);
}
