#include "kernels/cuda/plugin.hpp"

#include "collectives/nccl/nccl_communicator.hpp"

extern "C" {

int shardlm_cuda_plugin_abi() {
  return kShardlmCudaPluginAbi;
}

int shardlm_cuda_device_count() {
  return shardlm::cuda_device_count();
}

shardlm::Backend* shardlm_make_cuda_backend(const shardlm::CudaBackendOptions* options) {
  return shardlm::make_cuda_backend(*options).release();
}

shardlm::Communicator* shardlm_make_nccl_communicator(shardlm::Communicator* bootstrap,
                                                      shardlm::Backend* backend,
                                                      const shardlm::CollectiveWatch* watch) {
  return shardlm::make_nccl_communicator(*bootstrap, shardlm::cuda_backend_stream(*backend), watch)
      .release();
}
}
