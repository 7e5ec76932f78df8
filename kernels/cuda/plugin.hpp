#pragma once
// The C entry points of libshardlm_cuda.so, which launch/backend_choice.cpp
// loads with dlopen for `--backend cuda`. Plain C++ types cross the
// boundary: both sides are built from this tree by one compiler.
#include "collectives/communicator.hpp"
#include "collectives/world.hpp"
#include "kernels/cuda/cuda_backend.hpp"

extern "C" {
// Version of this table and of the types that cross it (3: activation
// dtypes in CudaBackendOptions and Backend, typed element collectives); the
// loader refuses a plugin of another.
inline constexpr int kShardlmCudaPluginAbi = 3;
int shardlm_cuda_plugin_abi();
int shardlm_cuda_device_count();
// Owned by the caller (delete). Throws as make_cuda_backend does.
shardlm::Backend* shardlm_make_cuda_backend(const shardlm::CudaBackendOptions* options);
// A NCCL communicator over `bootstrap`'s members on `backend`'s device and
// stream, reporting its waits to `watch` (World::device_group's; may be
// null); owned by the caller.
shardlm::Communicator* shardlm_make_nccl_communicator(shardlm::Communicator* bootstrap,
                                                      shardlm::Backend* backend,
                                                      const shardlm::CollectiveWatch* watch);
}
