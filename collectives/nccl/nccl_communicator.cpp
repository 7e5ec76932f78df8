#include "collectives/nccl/nccl_communicator.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nccl.h>

#include <chrono>
#include <exception>
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

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DType type) {
  switch (type) {
    case DType::F32: return ncclFloat;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclHalf;
    case DType::I8: return ncclInt8;
    case DType::I32: return ncclInt32;
  }
  throw std::logic_error("collective of an unknown element type");
}

// The element type of a sum: F32, BF16 and F16 only.
ncclDataType_t nccl_summed(DType type) {
  if (type != DType::F32 && type != DType::BF16 && type != DType::F16)
    throw std::logic_error(
        fmt::format("sum of {} elements: F32, BF16 or F16 expected", dtype_name(type)));
  return nccl_type(type);
}

// Marks one set-up or collective for World's watchdog, as the MPI
// communicator does, when the communicator was given a watch.
class Watched {
 public:
  Watched(const CollectiveWatch& watch, const char* what) : watch_(watch) {
    if (watch_.enter) watch_.enter(what);
  }
  ~Watched() {
    if (watch_.leave) watch_.leave();
  }
  Watched(const Watched&) = delete;
  Watched& operator=(const Watched&) = delete;

 private:
  const CollectiveWatch& watch_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, cudaStream_t stream, const CollectiveWatch* watch)
      : stream_(stream),
        own_stream_(stream == nullptr),
        rank_(bootstrap.rank()),
        size_(bootstrap.size()) {
    if (watch) watch_ = *watch;
    if (watch_.group.empty()) watch_.group = fmt::format("a group of {} ranks", size_);
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bootstrap.broadcast(&id, sizeof id, 0);
    {
      // Blocks until every member has joined: a member that never comes is
      // the watchdog's to report (nothing here can poll).
      const Watched watched(watch_, "NCCL communicator set-up");
      check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    }
    if (own_stream_) check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~NcclCommunicator() override {
    if (scratch_) cudaFree(scratch_);
    if (own_stream_ && stream_) cudaStreamDestroy(stream_);
    // While an error unwinds (a failed collective, a fault on this rank),
    // peers may be gone or waiting: ncclCommDestroy finalizes and can wait
    // for them, ncclCommAbort does not, so main() still gets to end the job.
    if (comm_ && std::uncaught_exceptions() > 0)
      ncclCommAbort(comm_);
    else if (comm_)
      ncclCommDestroy(comm_);
  }
  int size() const override { return size_; }
  int rank() const override { return rank_; }

  void all_gather(const void* send, void* recv, size_t count, DType type) override {
    run("all-gather", [&] {
      check_nccl(ncclAllGather(send, recv, count, nccl_type(type), comm_, stream_),
                 "ncclAllGather");
    });
  }
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts,
                   DType type) override {
    // NCCL has no v-collectives: every member broadcasts its block in turn.
    const size_t size = dtype_size(type);
    run("all-gather", [&] {
      size_t offset = 0;
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      for (int root = 0; root < size_; ++root) {
        void* block = static_cast<char*>(recv) + offset * size;
        check_nccl(ncclBroadcast(root == rank_ ? send : block, block, counts[size_t(root)],
                                 nccl_type(type), root, comm_, stream_),
                   "ncclBroadcast");
        offset += counts[size_t(root)];
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType type) override {
    run("reduce-scatter", [&] {
      check_nccl(ncclReduceScatter(send, recv, count, nccl_summed(type), ncclSum, comm_, stream_),
                 "ncclReduceScatter");
    });
  }
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts,
                       DType type) override {
    // Uneven blocks: one reduce per member to that member.
    const size_t size = dtype_size(type);
    run("reduce-scatter", [&] {
      size_t offset = 0;
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      for (int root = 0; root < size_; ++root) {
        check_nccl(
            ncclReduce(static_cast<const char*>(send) + offset * size, recv, counts[size_t(root)],
                       nccl_summed(type), ncclSum, root, comm_, stream_),
            "ncclReduce");
        offset += counts[size_t(root)];
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }
  void all_reduce(void* data, size_t count, DType type) override {
    run("all-reduce", [&] {
      check_nccl(ncclAllReduce(data, data, count, nccl_summed(type), ncclSum, comm_, stream_),
                 "ncclAllReduce");
    });
  }
  void all_to_all(const void* send, void* recv, size_t count, DType type) override {
    all_to_allv(send, std::vector<size_t>(size_t(size_), count), recv,
                std::vector<size_t>(size_t(size_), count), type);
  }
  void all_to_allv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                   const std::vector<size_t>& recv_counts, DType type) override {
    const size_t size = dtype_size(type);
    run("all-to-all", [&] {
      size_t send_offset = 0, recv_offset = 0;
      check_nccl(ncclGroupStart(), "ncclGroupStart");
      for (int peer = 0; peer < size_; ++peer) {
        check_nccl(ncclSend(static_cast<const char*>(send) + send_offset * size,
                            send_counts[size_t(peer)], nccl_type(type), peer, comm_, stream_),
                   "ncclSend");
        check_nccl(ncclRecv(static_cast<char*>(recv) + recv_offset * size,
                            recv_counts[size_t(peer)], nccl_type(type), peer, comm_, stream_),
                   "ncclRecv");
        send_offset += send_counts[size_t(peer)];
        recv_offset += recv_counts[size_t(peer)];
      }
      check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    });
  }
  void broadcast(void* data, size_t bytes, int root) override {
    run("broadcast", [&] {
      check_nccl(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_),
                 "ncclBroadcast");
    });
  }
  void send(const void* data, size_t bytes, int to) override {
    run("send",
        [&] { check_nccl(ncclSend(data, bytes, ncclUint8, to, comm_, stream_), "ncclSend"); });
  }
  void recv(void* data, size_t bytes, int from) override {
    run("receive",
        [&] { check_nccl(ncclRecv(data, bytes, ncclUint8, from, comm_, stream_), "ncclRecv"); });
  }
  std::function<void()> isend(const void* data, size_t bytes, int to) override {
    // Enqueued on the communicator's stream; waiting is synchronising it.
    // The enqueue is watched too: a first send connects to the peer there.
    {
      const Watched watched(watch_, "send");
      check_nccl(ncclSend(data, bytes, ncclUint8, to, comm_, stream_), "ncclSend");
    }
    return [this] {
      const Watched watched(watch_, "send");
      wait("send", Clock::now());
    };
  }
  void barrier() override {
    if (!scratch_) check_cuda(cudaMalloc(&scratch_, sizeof(float)), "cudaMalloc of 4 bytes");
    all_reduce(scratch_, 1, DType::F32);
  }

 private:
  // Enqueues a collective and waits for it, watched from the enqueue on
  // (NCCL may block there while it connects to peers on first use).
  template <typename Enqueue>
  void run(const char* what, Enqueue enqueue) {
    const Watched watched(watch_, what);
    const Clock::time_point start = Clock::now();
    enqueue();
    // A stream being captured into a graph (a decode step, kernels/cuda/
    // step_graph.hpp) only records the collective: it runs when the graph
    // is launched, and the wait is for the step's result.
    if (!capturing()) wait(what, start);
  }

  bool capturing() const {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    check_cuda(cudaStreamIsCapturing(stream_, &status), "cudaStreamIsCapturing");
    return status != cudaStreamCaptureStatusNone;
  }

  // Waits for the stream while polling NCCL's asynchronous error and the
  // timeout, so that a failed or stopped peer turns into an error here
  // instead of an endless wait. The watchdog of World checks the same
  // deadline every 50 ms; this loop polls far more often and so normally
  // answers first, aborting the communicator; should the watchdog answer
  // first the job ends all the same, with its message.
  void wait(const char* what, Clock::time_point start) {
    for (int polls = 0;; ++polls) {
      const cudaError_t state = cudaStreamQuery(stream_);
      if (state == cudaSuccess) return;
      if (state != cudaErrorNotReady)
        throw std::runtime_error(fmt::format("NCCL {} over {}: the stream failed: {}", what,
                                             watch_.group, cudaGetErrorString(state)));
      ncclResult_t async_error = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm_, &async_error), "ncclCommGetAsyncError");
      if (async_error != ncclSuccess && async_error != ncclInProgress) {
        const std::string detail = ncclGetLastError(comm_);
        abort_comm();
        throw std::runtime_error(fmt::format(
            "NCCL {} over {} failed: {}{}{}; the NCCL communicator was aborted", what, watch_.group,
            ncclGetErrorString(async_error), detail.empty() ? "" : ": ", detail));
      }
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      const double timeout = watch_.timeout_s ? watch_.timeout_s() : 0.0;
      if (timeout > 0 && waited > timeout) {
        abort_comm();
        throw std::runtime_error(fmt::format(
            "NCCL {} over {} made no progress for {:.1f} s (--comm-timeout {:g}): a rank of the "
            "group stopped responding; the NCCL communicator was aborted",
            what, watch_.group, waited, timeout));
      }
      // Spin for the first couple of milliseconds (a decode step's
      // collectives take microseconds), then leave the core between polls.
      if (waited < 2e-3)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Ends the communicator's outstanding work on this rank (its kernels stop
  // waiting for peers); the communicator is unusable afterwards.
  void abort_comm() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool own_stream_;
  int rank_, size_;
  CollectiveWatch watch_;
  float* scratch_ = nullptr;  // barrier()'s all-reduce
};

}  // namespace

bool cuda_device_available() {
  int count = 0;  // cudaGetDeviceCount leaves it unwritten on error
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, void* stream,
                                                     const CollectiveWatch* watch) {
  return std::make_unique<NcclCommunicator>(bootstrap, static_cast<cudaStream_t>(stream), watch);
}

}  // namespace shardlm
