#include "kernels/cuda/device_memory.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/step_graph.hpp"
#include "runtime/errors.hpp"

namespace shardlm::cuda {

const char* purpose_name(MemoryPurpose purpose) {
  switch (purpose) {
    case MemoryPurpose::kWeights: return "weights";
    case MemoryPurpose::kKVCache: return "the KV cache";
    case MemoryPurpose::kActivations: return "activations";
    case MemoryPurpose::kWorkspace: return "workspace";
  }
  return "?";
}

std::shared_ptr<DeviceMemory> DeviceMemory::create(int device, int64_t limit) {
  return std::shared_ptr<DeviceMemory>(new DeviceMemory(device, limit));
}

DeviceMemory::DeviceMemory(int device, int64_t limit) : device_(device), limit_(limit) {
  if (limit < 0) throw UsageError("CUDA backend: the memory limit must be >= 0 bytes");
  check(cudaSetDevice(device), "cudaSetDevice");
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  check(cudaMemPoolCreate(&pool_, &props), "cudaMemPoolCreate");
  // Keep every freed block in the pool: activations come and go each layer.
  uint64_t keep_all = std::numeric_limits<uint64_t>::max();
  try {
    check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep_all),
          "cudaMemPoolSetAttribute(release threshold)");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  } catch (...) {
    cudaMemPoolDestroy(pool_);
    throw;
  }
}

DeviceMemory::~DeviceMemory() {
  // Every allocation has been released (each held this object): wait for
  // the frees queued on the stream, then let the pool go.
  cudaStreamSynchronize(stream_);
  cudaStreamDestroy(stream_);
  cudaMemPoolDestroy(pool_);
}

int64_t DeviceMemory::held_locked() const {
  int64_t total = 0;
  for (int64_t bytes : held_) total += bytes;
  return total;
}

void* DeviceMemory::allocate_from_pool(size_t bytes) {
  void* pointer = nullptr;
  cudaError_t status = cudaMallocFromPoolAsync(&pointer, bytes, pool_, stream_);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it so later launch checks do not see it
    // The pool may hold freed blocks too small or too scattered for this
    // request: hand them back to the device once the stream is done with
    // them, and ask again.
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check(cudaMemPoolTrimTo(pool_, 0), "cudaMemPoolTrimTo");
    status = cudaMallocFromPoolAsync(&pointer, bytes, pool_, stream_);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return nullptr;
    }
  }
  check(status, "cudaMallocFromPoolAsync");
  return pointer;
}

std::shared_ptr<void> DeviceMemory::allocate(size_t bytes, MemoryPurpose purpose) {
  if (step_graphs_)
    if (std::shared_ptr<void> piece = step_graphs_->allocate(bytes)) return piece;
  {
    std::lock_guard lock(mutex_);
    if (limit_ > 0 && held_locked() + int64_t(bytes) > limit_)
      throw_does_not_fit(bytes, purpose, true);
  }
  // A zero-byte tensor still gets an address of its own (Tensor::empty() is
  // "no memory"); it holds, and counts, nothing.
  void* pointer = allocate_from_pool(std::max<size_t>(bytes, 1));
  if (!pointer) {
    std::lock_guard lock(mutex_);
    throw_does_not_fit(bytes, purpose, false);
  }
  {
    std::lock_guard lock(mutex_);
    held_[int(purpose)] += int64_t(bytes);
    if (purpose == MemoryPurpose::kActivations)
      activations_peak_ = std::max(activations_peak_, held_[int(purpose)]);
  }
  std::shared_ptr<DeviceMemory> self = shared_from_this();
  return std::shared_ptr<void>(
      pointer, [self, bytes, purpose](void* p) { self->release(p, bytes, purpose); });
}

void DeviceMemory::release(void* pointer, size_t bytes, MemoryPurpose purpose) noexcept {
  // Queued behind the work that may still read the memory. Errors cannot be
  // thrown from a deleter; at process exit the runtime may already be gone.
  cudaFreeAsync(pointer, stream_);
  std::lock_guard lock(mutex_);
  held_[int(purpose)] -= int64_t(bytes);
}

MemoryUsage DeviceMemory::usage() const {
  std::lock_guard lock(mutex_);
  return {held_[int(MemoryPurpose::kWeights)], held_[int(MemoryPurpose::kKVCache)],
          activations_peak_, held_[int(MemoryPurpose::kWorkspace)]};
}

void DeviceMemory::throw_does_not_fit(size_t bytes, MemoryPurpose purpose, bool over_limit) const {
  const std::string held =
      fmt::format("weights hold {}, the KV cache {}, activations {}, workspace {}",
                  format_bytes(double(held_[int(MemoryPurpose::kWeights)])),
                  format_bytes(double(held_[int(MemoryPurpose::kKVCache)])),
                  format_bytes(double(held_[int(MemoryPurpose::kActivations)])),
                  format_bytes(double(held_[int(MemoryPurpose::kWorkspace)])));
  if (over_limit)
    throw DataError(fmt::format(
        "CUDA device {}: {} for {} does not fit under the memory limit of {}: {} left ({})",
        device_, format_bytes(double(bytes)), purpose_name(purpose), format_bytes(double(limit_)),
        format_bytes(double(std::max<int64_t>(0, limit_ - held_locked()))), held));
  size_t free_bytes = 0, total_bytes = 0;
  cudaMemGetInfo(&free_bytes, &total_bytes);
  throw DataError(fmt::format("CUDA device {}: {} for {} does not fit: {} free of {} ({})", device_,
                              format_bytes(double(bytes)), purpose_name(purpose),
                              format_bytes(double(free_bytes)), format_bytes(double(total_bytes)),
                              held));
}

}  // namespace shardlm::cuda
