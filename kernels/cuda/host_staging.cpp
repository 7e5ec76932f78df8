#include "kernels/cuda/host_staging.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/step_graph.hpp"

namespace shardlm::cuda {
namespace {
constexpr size_t kMinSlotBytes = 4096;

size_t grown(size_t have, size_t need) {
  return std::max({need, 2 * have, kMinSlotBytes});
}
}  // namespace

HostStaging::HostStaging(std::shared_ptr<DeviceMemory> memory)
    : memory_(std::move(memory)), slots_(kSlots) {
  for (Slot& slot : slots_)
    check(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming), "cudaEventCreate");
}

HostStaging::~HostStaging() {
  for (Slot& slot : slots_) {
    if (slot.copied) {
      cudaEventSynchronize(slot.copied);
      cudaEventDestroy(slot.copied);
    }
    if (slot.host) cudaFreeHost(slot.host);
  }
}

HostStaging::Slot& HostStaging::take(size_t bytes) {
  Slot& slot = slots_[next_];
  next_ = (next_ + 1) % slots_.size();
  // The copy that last read this slot's pinned buffer must have run (an
  // event never recorded counts as done).
  check(cudaEventSynchronize(slot.copied), "cudaEventSynchronize (staging slot)");
  if (slot.host_bytes < bytes) {
    const size_t size = grown(slot.host_bytes, bytes);
    if (slot.host) check(cudaFreeHost(slot.host), "cudaFreeHost");
    slot.host = nullptr;
    slot.host_bytes = 0;
    check(cudaHostAlloc(&slot.host, size, cudaHostAllocDefault), "cudaHostAlloc (staging)");
    slot.host_bytes = size;
  }
  return slot;
}

void HostStaging::send(Slot& slot, const void* host, void* device, size_t bytes) {
  std::memcpy(slot.host, host, bytes);
  check(cudaMemcpyAsync(device, slot.host, bytes, cudaMemcpyHostToDevice, memory_->stream()),
        "cudaMemcpyAsync (host to device)");
  check(cudaEventRecord(slot.copied, memory_->stream()), "cudaEventRecord (staging slot)");
}

bool HostStaging::in_step() const {
  return graphs_ && graphs_->mode() != StepGraphMode::kEager;
}

void HostStaging::send_in_step(const void* host, void* device, size_t bytes) {
  const StepGraphs::Slot slot = graphs_->stage(bytes);
  std::memcpy(slot.pinned, host, bytes);
  if (slot.queue_copy)
    check(cudaMemcpyAsync(device, slot.pinned, bytes, cudaMemcpyHostToDevice, memory_->stream()),
          "cudaMemcpyAsync (host to device, step)");
}

void HostStaging::copy_to_device(const void* host, void* device, size_t bytes) {
  if (in_step()) {
    if (bytes > 0) send_in_step(host, device, bytes);
    return;
  }
  const auto* from = static_cast<const char*>(host);
  auto* to = static_cast<char*>(device);
  for (size_t done = 0; done < bytes; done += kChunkBytes) {
    const size_t chunk = std::min(kChunkBytes, bytes - done);
    send(take(chunk), from + done, to + done, chunk);
  }
}

const void* HostStaging::upload(const void* host, size_t bytes) {
  if (in_step()) {
    std::shared_ptr<void> buffer = memory_->allocate(bytes, MemoryPurpose::kActivations);
    send_in_step(host, buffer.get(), bytes);
    graphs_->keep(std::move(buffer));  // until the next step begins
    return graphs_->kept_back();
  }
  Slot& slot = take(bytes);
  if (slot.device_bytes < bytes) {
    // The old buffer is freed in stream order, after the work that reads it.
    const size_t size = grown(slot.device_bytes, bytes);
    slot.device = memory_->allocate(size, MemoryPurpose::kWorkspace);
    slot.device_bytes = size;
  }
  send(slot, host, slot.device.get(), bytes);
  return slot.device.get();
}

}  // namespace shardlm::cuda
