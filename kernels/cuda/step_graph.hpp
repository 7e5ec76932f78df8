#pragma once
// Decode steps as CUDA graphs (docs/cuda_backend.md, "Decode steps as CUDA
// graphs"): the CUDA backend's side of Backend::begin_step_graph.
//
// Per step key (the engine's name for a batch shape) a Record goes through
// three steps:
//   measure  the step runs as usual while the sizes of its allocations and
//            of its staged host arrays are recorded, each staged array in a
//            pinned slot of its own that the record keeps;
//   capture  one arena holding every allocation is taken, the stream is
//            captured, allocations are handed out of the arena in the
//            recorded order, staged arrays go through the same pinned slots,
//            and each operation's signature (its pointers, sizes and
//            scalars) is recorded; launch ends the capture, instantiates the
//            graph and launches it;
//   replay   the engine runs the step's code again: allocations return the
//            same arena pieces in the same order, staged arrays are written
//            into the same pinned slots (which the graph's copies read at
//            launch), operations compare their signatures with the
//            recording and do nothing else; launch launches the graph.
// A difference (another size, another operation, another pointer) throws
// StepGraphAbandoned before anything of the step has run, and the key's
// record is dropped: the engine runs the step eagerly and the key starts
// over. A step whose arena would exceed kMaxArenaBytes stays eager.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/device_memory.hpp"
#include "runtime/backend.hpp"

namespace shardlm::cuda {

class StepGraphs {
 public:
  // The largest arena (all of a step's allocations, none reused within the
  // step) a key may take; above it the key's steps stay eager.
  static constexpr size_t kMaxArenaBytes = size_t(1) << 30;
  // Keys kept at once; a new one beyond drops the least recently used (a
  // batch whose sequences end one by one meets a new key at each end).
  static constexpr size_t kMaxKeys = 8;

  explicit StepGraphs(DeviceMemory& memory);
  ~StepGraphs();
  StepGraphs(const StepGraphs&) = delete;
  StepGraphs& operator=(const StepGraphs&) = delete;

  StepGraphMode begin(const std::vector<int64_t>& key);
  void launch();
  void abandon(const std::string& why, bool for_good);
  void drop_all();
  StepGraphMode mode() const { return mode_; }
  bool replaying() const { return mode_ == StepGraphMode::kReplay; }

  // One backend operation inside a step, made where the operation starts
  // its own work (after staging its host arrays, which a replay redoes),
  // with what its launches depend on (pointers, sizes, scalars): recorded
  // while capturing, with the allocations the operation makes until it ends;
  // compared while replaying, when skip() says the operation does nothing
  // more: the graph holds its work, and the arena cursor passes over its
  // transient allocations.
  class Op {
   public:
    Op(StepGraphs& graphs, const char* name, std::initializer_list<uint64_t> signature);
    ~Op();
    Op(const Op&) = delete;
    Op& operator=(const Op&) = delete;
    bool skip() const { return skip_; }

   private:
    StepGraphs& graphs_;
    bool skip_ = false;
    bool recording_ = false;
    size_t index_ = 0, first_allocation_ = 0;
  };

  // DeviceMemory::allocate asks first: null to allocate as usual (eager;
  // measure, which records the size), else the piece of the arena.
  std::shared_ptr<void> allocate(size_t bytes);

  // HostStaging asks for each host array it stages inside a step: null
  // outside one, else the pinned slot to copy the array into and whether to
  // queue the copy from it (not while replaying: the graph's copy reads it).
  struct Slot {
    void* pinned = nullptr;
    bool queue_copy = true;
  };
  Slot stage(size_t bytes);
  // Keeps a buffer of the step (an upload's) until the next step begins.
  void keep(std::shared_ptr<void> buffer) { kept_.push_back(std::move(buffer)); }
  const void* kept_back() const { return kept_.back().get(); }

  // How many steps were captured, replayed, and run eagerly though offered.
  int64_t captured() const { return captured_; }
  int64_t replayed() const { return replayed_; }
  const std::string& last_fallback() const { return last_fallback_; }

 private:
  struct Record {
    bool measured = false;     // a whole step's sizes are known
    bool stays_eager = false;  // too large an arena, or not capturable
    std::vector<size_t> allocations;
    std::vector<size_t> staged;                    // bytes of each staged array
    std::vector<std::pair<void*, size_t>> pinned;  // cudaHostAlloc'd slots, their capacity
    struct OpRecord {
      uint64_t signature = 0;
      size_t allocations = 0;  // made inside the operation (transient)
    };
    std::vector<OpRecord> ops;
    std::shared_ptr<void> arena;
    cudaGraphExec_t exec = nullptr;
    int64_t last_used = 0;
    ~Record();
  };
  [[noreturn]] void mismatch(const std::string& what);
  size_t arena_bytes(const Record& r) const;
  void end_capture_quietly();
  // The next allocation's piece of the arena.
  void* take_piece(size_t bytes);

  DeviceMemory& memory_;
  std::map<std::vector<int64_t>, std::unique_ptr<Record>> records_;
  Record* current_ = nullptr;
  std::vector<int64_t> current_key_;
  StepGraphMode mode_ = StepGraphMode::kEager;
  size_t next_allocation_ = 0, next_slot_ = 0, next_op_ = 0, arena_used_ = 0;
  int64_t captured_ = 0, replayed_ = 0, steps_ = 0;
  std::string last_fallback_;
  std::vector<std::shared_ptr<void>> kept_;
};

// A signature value from a pointer.
inline uint64_t sig(const void* p) {
  return uint64_t(reinterpret_cast<uintptr_t>(p));
}

}  // namespace shardlm::cuda
