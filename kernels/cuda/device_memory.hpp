#pragma once
// The device memory of one CUDA backend, and the stream everything runs on.
//
// Every allocation comes from a memory pool through the stream-ordered
// allocator (cudaMallocFromPoolAsync / cudaFreeAsync on the backend's
// stream). The pool keeps freed blocks (release threshold: unlimited), so the
// activations allocated and freed in every layer are served from the pool
// without reaching the driver, and a block freed by one kernel's caller is
// reused by the next allocation on the same stream without a host sync.
//
// Memory is accounted by purpose, in the bytes asked for, and capped by an
// optional limit; running out throws a message naming the purpose, the size
// and what is held. Allocations are shared_ptr<void> whose deleter frees on
// the stream and updates the accounting; each deleter keeps this object (and
// with it the stream and the pool) alive, so a Tensor may outlive the backend.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/backend.hpp"

namespace shardlm::cuda {

class StepGraphs;

// What memory is for (MemoryUsage's fields). Transient buffers of the
// kernels (matmul inputs rounded to 16 bits, dequantised int8 panels,
// attention and sampling scratch) count as activations: they live and die
// within one call, as activations live within one layer. Workspace is what
// stays: the cuBLASLt workspace and the device side of the staging ring.
enum class MemoryPurpose { kWeights, kKVCache, kActivations, kWorkspace };

// As messages name it: "weights", "the KV cache", "activations", "workspace".
const char* purpose_name(MemoryPurpose purpose);

class DeviceMemory : public std::enable_shared_from_this<DeviceMemory> {
 public:
  // Makes `device` current and creates the stream (non-blocking) and pool on
  // it. limit > 0 caps the bytes held in all; 0 leaves only the device's own.
  static std::shared_ptr<DeviceMemory> create(int device, int64_t limit);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  int64_t limit() const { return limit_; }

  // `bytes` of device memory, usable by work queued on stream() from now on,
  // freed on the stream when the last owner lets go. Throws DataError when
  // it does not fit (under the limit or on the device).
  std::shared_ptr<void> allocate(size_t bytes, MemoryPurpose purpose);
  // Inside a decode step offered as a graph, allocate() asks `graphs` first
  // (StepGraphs::allocate: a piece of the step's arena once captured).
  void set_step_graphs(StepGraphs* graphs) { step_graphs_ = graphs; }
  MemoryUsage usage() const;

 private:
  DeviceMemory(int device, int64_t limit);
  void* allocate_from_pool(size_t bytes);
  void release(void* pointer, size_t bytes, MemoryPurpose purpose) noexcept;
  [[noreturn]] void throw_does_not_fit(size_t bytes, MemoryPurpose purpose, bool over_limit) const;
  int64_t held_locked() const;

  int device_ = 0;
  int64_t limit_ = 0;
  StepGraphs* step_graphs_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaMemPool_t pool_ = nullptr;
  mutable std::mutex mutex_;  // the counts below: deleters may run on any thread
  int64_t held_[4] = {};      // bytes held now, by MemoryPurpose
  int64_t activations_peak_ = 0;
};

}  // namespace shardlm::cuda
