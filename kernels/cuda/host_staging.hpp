#pragma once
// Host arrays on their way to the device without a host sync: token ids,
// positions, batch layouts, sampling draws, small activations.
//
// The calls that bring them pass pointers to ordinary (pageable) memory;
// cudaMemcpyAsync from pageable memory waits for the stream, so each array is
// first copied into a slot of a ring of pinned buffers and sent from there.
// A slot is written again only after the copy from it has run: each slot
// has an event recorded behind its last copy, and taking the slot waits on
// it (in practice only when the host is a whole ring of copies ahead of the
// device). Slots grow to the largest array they carry.
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "kernels/cuda/device_memory.hpp"

namespace shardlm::cuda {

class StepGraphs;

class HostStaging {
 public:
  // Bytes one copy moves at most; copy_to_device cuts larger ones in chunks.
  static constexpr size_t kChunkBytes = size_t(1) << 20;
  static constexpr int kSlots = 64;

  explicit HostStaging(std::shared_ptr<DeviceMemory> memory);
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;

  // device[0, bytes) <- host[0, bytes), queued on the stream; `host` may be
  // reused as soon as this returns.
  void copy_to_device(const void* host, void* device, size_t bytes);

  // A device copy of host[0, bytes) in the slot's own device buffer (counted
  // as workspace), for work queued on the stream before kSlots more calls of
  // this object: the slot's next copy overwrites it, in stream order.
  const void* upload(const void* host, size_t bytes);

  // Inside a decode step offered as a graph, arrays go through the step's
  // own pinned slots instead of the ring (StepGraphs::stage), and upload's
  // device buffers are allocated for the step (out of its arena once
  // captured) and kept until the next step.
  void set_step_graphs(StepGraphs* graphs) { graphs_ = graphs; }

 private:
  struct Slot {
    void* host = nullptr;  // pinned
    size_t host_bytes = 0;
    std::shared_ptr<void> device;
    size_t device_bytes = 0;
    cudaEvent_t copied = nullptr;  // recorded behind the slot's last copy
  };
  // The next slot, its previous copy done, its pinned buffer at least `bytes`.
  Slot& take(size_t bytes);
  void send(Slot& slot, const void* host, void* device, size_t bytes);

  bool in_step() const;
  // copy_to_device inside a step: through the step's next pinned slot.
  void send_in_step(const void* host, void* device, size_t bytes);

  std::shared_ptr<DeviceMemory> memory_;
  StepGraphs* graphs_ = nullptr;
  std::vector<Slot> slots_;
  size_t next_ = 0;
};

}  // namespace shardlm::cuda
