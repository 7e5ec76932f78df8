#pragma once
// Communicator: the collectives of one ordered group of ranks. Member i of
// the group is the i-th rank of the list the group was made from, so the
// order of all-gather outputs and reduce-scatter inputs is the shard order of
// the mesh axes the group spans. MPI on CPU ranks, NCCL on GPUs; the
// interface is the same.
#include <cstddef>
#include <functional>
#include <vector>

#include "runtime/dtype.hpp"

namespace shardlm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;  // this process's index in the group

  // The element collectives move `count` elements of `type`. Gathers and
  // all-to-alls take any dtype (activations, and the stored weights of the
  // weight-gathered layouts); sums take F32, BF16 or F16 (the activations'
  // dtype, docs/cuda_backend.md): sums of 16-bit elements are formed in F32
  // and rounded to the type at each step of the reduction, as NCCL does.
  //
  // recv[size][count] <- every member's send[count]
  virtual void all_gather(const void* send, void* recv, size_t count, DType type) = 0;
  // Like all_gather with member i contributing counts[i] elements.
  virtual void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts,
                           DType type) = 0;
  // recv[count] <- sum over members of their send[rank()][count]
  virtual void reduce_scatter(const void* send, void* recv, size_t count, DType type) = 0;
  // Like reduce_scatter with member i receiving counts[i] elements.
  virtual void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts,
                               DType type) = 0;
  virtual void all_reduce(void* data, size_t count, DType type) = 0;  // in place, sum
  // recv[j][count] <- member j's send[rank()][count]
  virtual void all_to_all(const void* send, void* recv, size_t count, DType type) = 0;
  // send_counts[j] elements go to member j; recv_counts[j] come from member j.
  virtual void all_to_allv(const void* send, const std::vector<size_t>& send_counts, void* recv,
                           const std::vector<size_t>& recv_counts, DType type) = 0;

  // The same on floats.
  void all_gather(const float* send, float* recv, size_t count) {
    all_gather(send, recv, count, DType::F32);
  }
  void all_gatherv(const float* send, float* recv, const std::vector<size_t>& counts) {
    all_gatherv(send, recv, counts, DType::F32);
  }
  void reduce_scatter(const float* send, float* recv, size_t count) {
    reduce_scatter(send, recv, count, DType::F32);
  }
  void reduce_scatterv(const float* send, float* recv, const std::vector<size_t>& counts) {
    reduce_scatterv(send, recv, counts, DType::F32);
  }
  void all_reduce(float* data, size_t count) { all_reduce(data, count, DType::F32); }
  void all_to_all(const float* send, float* recv, size_t count) {
    all_to_all(send, recv, count, DType::F32);
  }
  void all_to_allv(const float* send, const std::vector<size_t>& send_counts, float* recv,
                   const std::vector<size_t>& recv_counts) {
    all_to_allv(send, send_counts, recv, recv_counts, DType::F32);
  }

  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void send(const void* data, size_t bytes, int to) = 0;
  virtual void recv(void* data, size_t bytes, int from) = 0;
  // Starts a send and returns at once; the data must stay unchanged until
  // the returned function, which waits for the send to finish, has been
  // called. Pipeline stages overlap their boundary sends with compute.
  virtual std::function<void()> isend(const void* data, size_t bytes, int to) = 0;
  virtual void barrier() = 0;
};

}  // namespace shardlm
