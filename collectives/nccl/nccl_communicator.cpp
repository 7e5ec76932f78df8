#include "collectives/nccl/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <numeric>
#include <stdexcept>
#include <thread>

namespace shardlm {
namespace {

void check_nccl(ncclResult_t status, const char* call) {
  if (status != ncclSuccess)
    throw std::runtime_error(fmt::format("{} failed: {}", call, ncclGetErrorString(status)));
}

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw std::runtime_error(fmt::format("{} failed: {}", call, cudaGetErrorString(status)));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, cudaStream_t stream)
      : stream_(stream), own_stream_(stream == nullptr), rank_(bootstrap.rank()),
        size_(bootstrap.size()) {
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bootstrap.broadcast(&id, sizeof id, 0);
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    if (own_stream_) check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~NcclCommunicator() override {
    if (own_stream_) cudaStreamDestroy(stream_);
    ncclCommDestroy(comm_);
  }
  int size() const override { return size_; }
  int rank() const override { return rank_; }

  void all_gather(const float* send, float* recv, size_t count) override {
    check_nccl(ncclAllGather(send, recv, count, ncclFloat, comm_, stream_), "ncclAllGather");
    wait();
  }
  void all_gather_bytes(const void* send, void* recv, size_t bytes) override {
    check_nccl(ncclAllGather(send, recv, bytes, ncclInt8, comm_, stream_), "ncclAllGather");
    wait();
  }
  void all_gatherv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    // NCCL has no v-collectives: every member broadcasts its block in turn.
    size_t offset = 0;
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int root = 0; root < size_; ++root) {
      check_nccl(ncclBroadcast(root == rank_ ? send : recv + offset, recv + offset,
                               counts[size_t(root)], ncclFloat, root, comm_, stream_),
                 "ncclBroadcast");
      offset += counts[size_t(root)];
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    wait();
  }
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    check_nccl(ncclReduceScatter(send, recv, count, ncclFloat, ncclSum, comm_, stream_),
               "ncclReduceScatter");
    wait();
  }
  void reduce_scatterv(const float* send, float* recv, const std::vector<size_t>& counts) override {
    // Uneven blocks: one reduce per member to that member.
    size_t offset = 0;
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int root = 0; root < size_; ++root) {
      check_nccl(ncclReduce(send + offset, recv, counts[size_t(root)], ncclFloat, ncclSum, root,
                            comm_, stream_),
                 "ncclReduce");
      offset += counts[size_t(root)];
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    wait();
  }
  void all_reduce(float* data, size_t count) override {
    check_nccl(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_),
               "ncclAllReduce");
    wait();
  }
  void all_to_all(const float* send, float* recv, size_t count) override {
    all_to_allv(send, std::vector<size_t>(size_t(size_), count), recv,
                std::vector<size_t>(size_t(size_), count));
  }
  void all_to_allv(const float* send, const std::vector<size_t>& send_counts, float* recv,
                   const std::vector<size_t>& recv_counts) override {
    size_t send_offset = 0, recv_offset = 0;
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int peer = 0; peer < size_; ++peer) {
      check_nccl(
          ncclSend(send + send_offset, send_counts[size_t(peer)], ncclFloat, peer, comm_, stream_),
          "ncclSend");
      check_nccl(
          ncclRecv(recv + recv_offset, recv_counts[size_t(peer)], ncclFloat, peer, comm_, stream_),
          "ncclRecv");
      send_offset += send_counts[size_t(peer)];
      recv_offset += recv_counts[size_t(peer)];
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    wait();
  }
  void broadcast(void* data, size_t bytes, int root) override {
    check_nccl(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    wait();
  }
  void send(const void* data, size_t bytes, int to) override {
    check_nccl(ncclSend(data, bytes, ncclUint8, to, comm_, stream_), "ncclSend");
    wait();
  }
  void recv(void* data, size_t bytes, int from) override {
    check_nccl(ncclRecv(data, bytes, ncclUint8, from, comm_, stream_), "ncclRecv");
    wait();
  }
  std::function<void()> isend(const void* data, size_t bytes, int to) override {
    // Enqueued on the communicator's stream; waiting is synchronising it.
    check_nccl(ncclSend(data, bytes, ncclUint8, to, comm_, stream_), "ncclSend");
    return [this] { wait(); };
  }
  void barrier() override {
    float* scratch = nullptr;
    check_cuda(cudaMalloc(&scratch, sizeof(float)), "cudaMalloc");
    all_reduce(scratch, 1);
    cudaFree(scratch);
  }

 private:
  // Waits for the stream while polling NCCL's asynchronous error, so that a
  // failed peer turns into an exception here instead of an endless wait.
  void wait() {
    while (true) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady) check_cuda(state, "cudaStreamQuery");
      ncclResult_t async_error = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async_error), "ncclCommGetAsyncError");
      if (async_error != ncclSuccess) {
        ncclCommAbort(comm_);
        check_nccl(async_error, "NCCL collective");
      }
      std::this_thread::yield();
    }
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool own_stream_;
  int rank_, size_;
};

}  // namespace

bool cuda_device_available() {
  int count = 0;  // cudaGetDeviceCount leaves it unwritten on error
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, void* stream) {
  return std::make_unique<NcclCommunicator>(bootstrap, static_cast<cudaStream_t>(stream));
}

}  // namespace shardlm
