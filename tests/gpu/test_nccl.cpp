// NCCL collectives on GPUs, under mpiexec with one rank per GPU. Skipped with
// a message where no GPU is present (the code still compiles and links).
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "collectives/nccl/nccl_communicator.hpp"
#include "collectives/world.hpp"

using namespace shardlm;

int main() {
  World& world = World::get();
  if (!cuda_device_available()) {
    if (world.is_root()) std::printf("SKIPPED: no CUDA device; NCCL tests need a GPU per rank\n");
    world.finalize();
    return 0;
  }
  int devices = 0;
  cudaGetDeviceCount(&devices);
  cudaSetDevice(world.rank() % devices);
  auto comm = make_nccl_communicator(world.all());
  const size_t count = 1024;
  std::vector<float> host(count, float(world.rank() + 1));
  float* device = nullptr;
  cudaMalloc(&device, count * sizeof(float));
  cudaMemcpy(device, host.data(), count * sizeof(float), cudaMemcpyHostToDevice);
  comm->all_reduce(device, count);
  cudaMemcpy(host.data(), device, count * sizeof(float), cudaMemcpyDeviceToHost);
  const float expected = float(world.size() * (world.size() + 1) / 2);
  int failures = 0;
  for (float v : host) failures += v != expected;
  std::vector<float> gathered(count * size_t(world.size()));
  float* device_gathered = nullptr;
  cudaMalloc(&device_gathered, gathered.size() * sizeof(float));
  cudaMemcpy(device, std::vector<float>(count, float(world.rank())).data(), count * sizeof(float),
             cudaMemcpyHostToDevice);
  comm->all_gather(device, device_gathered, count);
  cudaMemcpy(gathered.data(), device_gathered, gathered.size() * sizeof(float),
             cudaMemcpyDeviceToHost);
  for (size_t i = 0; i < gathered.size(); ++i) failures += gathered[i] != float(i / count);
  std::printf("rank %d: NCCL all_reduce and all_gather: %s\n", world.rank(),
              failures ? "FAILED" : "ok");
  cudaFree(device);
  cudaFree(device_gathered);
  comm.reset();
  world.finalize();
  return failures ? 1 : 0;
}
