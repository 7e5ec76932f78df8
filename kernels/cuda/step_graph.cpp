#include "kernels/cuda/step_graph.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/cuda/cuda_check.cuh"
#include "runtime/errors.hpp"

namespace shardlm::cuda {
namespace {

// Arena pieces start at this alignment, as the pool's blocks do at least.
constexpr size_t kAlignment = 256;

size_t aligned(size_t bytes) {
  return (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
}

// FNV-1a over the operation's name and values.
uint64_t signature_of(const char* name, std::initializer_list<uint64_t> values) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t byte) {
    h ^= byte;
    h *= 1099511628211ull;
  };
  for (const char* c = name; *c; ++c) mix(uint64_t(uint8_t(*c)));
  for (uint64_t v : values)
    for (int b = 0; b < 8; ++b) mix((v >> (8 * b)) & 0xff);
  return h;
}

}  // namespace

StepGraphs::Record::~Record() {
  if (exec) cudaGraphExecDestroy(exec);
  for (auto& [pointer, bytes] : pinned) cudaFreeHost(pointer);
}

StepGraphs::StepGraphs(DeviceMemory& memory) : memory_(memory) {}

StepGraphs::~StepGraphs() {
  end_capture_quietly();
  // Launched graphs and their copies may still read the slots and the arena.
  cudaStreamSynchronize(memory_.stream());
}

size_t StepGraphs::arena_bytes(const Record& r) const {
  size_t total = 0;
  for (size_t bytes : r.allocations) total += aligned(bytes);
  return total;
}

StepGraphMode StepGraphs::begin(const std::vector<int64_t>& key) {
  if (mode_ == StepGraphMode::kCapture) end_capture_quietly();
  mode_ = StepGraphMode::kEager;  // the arena below comes from the pool
  // The last step's graph and copies have run before its pinned slots and
  // arena are written again (the step ended in a sync; this costs nothing).
  check(cudaStreamSynchronize(memory_.stream()), "cudaStreamSynchronize (step graph)");
  kept_.clear();
  if (!records_.count(key) && records_.size() >= kMaxKeys) {
    auto oldest = records_.begin();
    for (auto it = records_.begin(); it != records_.end(); ++it)
      if (it->second->last_used < oldest->second->last_used) oldest = it;
    records_.erase(oldest);
  }
  std::unique_ptr<Record>& record = records_[key];
  if (!record) record = std::make_unique<Record>();
  record->last_used = ++steps_;
  current_ = record.get();
  current_key_ = key;
  next_allocation_ = next_slot_ = next_op_ = arena_used_ = 0;
  if (current_->stays_eager) {
    mode_ = StepGraphMode::kEager;
  } else if (!current_->measured) {
    current_->allocations.clear();
    current_->staged.clear();
    mode_ = StepGraphMode::kMeasure;
  } else if (!current_->exec) {
    const size_t bytes = arena_bytes(*current_);
    if (bytes > kMaxArenaBytes) {
      current_->stays_eager = true;
      last_fallback_ =
          fmt::format("a step of this shape allocates {} (more than {} for its graph)",
                      format_bytes(double(bytes)), format_bytes(double(kMaxArenaBytes)));
      mode_ = StepGraphMode::kEager;
      return mode_;
    }
    // Taken before the capture, so that the pool is not asked inside it.
    current_->arena = memory_.allocate(bytes, MemoryPurpose::kActivations);
    current_->ops.clear();
    check(cudaStreamBeginCapture(memory_.stream(), cudaStreamCaptureModeRelaxed),
          "cudaStreamBeginCapture");
    mode_ = StepGraphMode::kCapture;
  } else {
    mode_ = StepGraphMode::kReplay;
  }
  return mode_;
}

void StepGraphs::launch() {
  const StepGraphMode mode = mode_;
  mode_ = StepGraphMode::kEager;  // whatever follows in the step runs as usual
  switch (mode) {
    case StepGraphMode::kEager: return;
    case StepGraphMode::kMeasure: current_->measured = true; return;
    case StepGraphMode::kCapture: {
      mode_ = StepGraphMode::kCapture;  // ends below, or by abandon on failure
      if (next_allocation_ != current_->allocations.size())
        mismatch(fmt::format("the step allocated {} times where the measured one did {}",
                             next_allocation_, current_->allocations.size()));
      cudaGraph_t graph = nullptr;
      const cudaError_t ended = cudaStreamEndCapture(memory_.stream(), &graph);
      mode_ = StepGraphMode::kEager;
      if (ended != cudaSuccess || !graph) {
        cudaGetLastError();
        current_->stays_eager = true;  // not capturable: this shape stays eager
        throw StepGraphAbandoned(fmt::format("the capture failed: {}", cudaGetErrorString(ended)));
      }
      const cudaError_t made = cudaGraphInstantiate(&current_->exec, graph, 0);
      cudaGraphDestroy(graph);
      if (made != cudaSuccess) {
        cudaGetLastError();
        current_->exec = nullptr;
        current_->stays_eager = true;  // not capturable: this shape stays eager
        throw StepGraphAbandoned(
            fmt::format("cudaGraphInstantiate failed: {}", cudaGetErrorString(made)));
      }
      check(cudaGraphLaunch(current_->exec, memory_.stream()), "cudaGraphLaunch");
      ++captured_;
      return;
    }
    case StepGraphMode::kReplay:
      mode_ = StepGraphMode::kReplay;
      if (next_op_ != current_->ops.size() || next_slot_ != current_->staged.size() ||
          next_allocation_ != current_->allocations.size())
        mismatch(fmt::format(
            "the step ran {} operations, staged {} arrays and allocated {} times where the "
            "captured one did {}, {} and {}",
            next_op_, next_slot_, next_allocation_, current_->ops.size(), current_->staged.size(),
            current_->allocations.size()));
      mode_ = StepGraphMode::kEager;
      check(cudaGraphLaunch(current_->exec, memory_.stream()), "cudaGraphLaunch");
      ++replayed_;
      return;
  }
}

void StepGraphs::end_capture_quietly() {
  if (mode_ != StepGraphMode::kCapture) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(memory_.stream(), &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  mode_ = StepGraphMode::kEager;
}

void StepGraphs::abandon(const std::string& why, bool for_good) {
  end_capture_quietly();
  mode_ = StepGraphMode::kEager;
  last_fallback_ = why;
  if (!current_) return;
  current_ = nullptr;
  if (for_good || records_.at(current_key_)->stays_eager) {
    // What the record held goes; the key stays eager.
    std::unique_ptr<Record>& record = records_[current_key_];
    record = std::make_unique<Record>();
    record->stays_eager = true;
  } else {
    records_.erase(current_key_);  // measured again at its next step
  }
}

void StepGraphs::drop_all() {
  end_capture_quietly();
  cudaStreamSynchronize(memory_.stream());
  kept_.clear();
  records_.clear();
  current_ = nullptr;
  mode_ = StepGraphMode::kEager;
}

void StepGraphs::mismatch(const std::string& what) {
  throw StepGraphAbandoned(fmt::format("the decode step differs from its {} one: {}",
                                       mode_ == StepGraphMode::kReplay ? "captured" : "measured",
                                       what));
}

StepGraphs::Op::Op(StepGraphs& graphs, const char* name, std::initializer_list<uint64_t> signature)
    : graphs_(graphs) {
  const StepGraphMode mode = graphs.mode_;
  if (mode != StepGraphMode::kCapture && mode != StepGraphMode::kReplay) return;
  Record& record = *graphs.current_;
  const uint64_t h = signature_of(name, signature);
  if (mode == StepGraphMode::kCapture) {
    recording_ = true;
    index_ = record.ops.size();
    first_allocation_ = graphs.next_allocation_;
    record.ops.push_back({h, 0});
    return;
  }
  const size_t i = graphs.next_op_;
  if (i >= record.ops.size() || record.ops[i].signature != h)
    graphs.mismatch(fmt::format("operation {} ({}) is not the captured one", i, name));
  ++graphs.next_op_;
  for (size_t a = 0; a < record.ops[i].allocations; ++a)
    graphs.take_piece(record.allocations.at(graphs.next_allocation_));
  skip_ = true;
}

StepGraphs::Op::~Op() {
  if (recording_ && graphs_.current_ && index_ < graphs_.current_->ops.size())
    graphs_.current_->ops[index_].allocations = graphs_.next_allocation_ - first_allocation_;
}

void* StepGraphs::take_piece(size_t bytes) {
  if (next_allocation_ >= current_->allocations.size() ||
      current_->allocations[next_allocation_] != bytes)
    mismatch(fmt::format("allocation {} of {} bytes", next_allocation_, bytes));
  ++next_allocation_;
  void* piece = static_cast<char*>(current_->arena.get()) + arena_used_;
  arena_used_ += aligned(bytes);
  return piece;
}

std::shared_ptr<void> StepGraphs::allocate(size_t bytes) {
  switch (mode_) {
    case StepGraphMode::kEager: return nullptr;
    case StepGraphMode::kMeasure:
      current_->allocations.push_back(bytes);
      ++next_allocation_;
      return nullptr;
    case StepGraphMode::kCapture:
    case StepGraphMode::kReplay:
      // The arena owns the memory; the piece keeps the arena alive.
      return std::shared_ptr<void>(current_->arena, take_piece(bytes));
  }
  return nullptr;
}

StepGraphs::Slot StepGraphs::stage(size_t bytes) {
  if (mode_ == StepGraphMode::kEager) return {};
  std::vector<std::pair<void*, size_t>>& pinned = current_->pinned;
  if (mode_ == StepGraphMode::kMeasure) {
    // A slot of this step's own, kept for its capture and replays.
    current_->staged.push_back(bytes);
    if (next_slot_ == pinned.size()) pinned.push_back({nullptr, 0});
    auto& [pointer, size] = pinned[next_slot_];
    if (size < bytes) {
      if (pointer) check(cudaFreeHost(pointer), "cudaFreeHost");
      pointer = nullptr;
      size = 0;
      check(cudaHostAlloc(&pointer, bytes, cudaHostAllocDefault), "cudaHostAlloc (step graph)");
      size = bytes;
    }
    return {pinned[next_slot_++].first, true};
  }
  if (next_slot_ >= current_->staged.size() || current_->staged[next_slot_] != bytes)
    mismatch(fmt::format("staged array {} of {} bytes", next_slot_, bytes));
  return {pinned[next_slot_++].first, mode_ == StepGraphMode::kCapture};
}

}  // namespace shardlm::cuda
