#pragma once
// Tensor parallelism at run time: this rank's place on the mesh, the axes a
// phase's layout shards things over (read from the layout tables of
// partitioning/layouts.hpp), and the activation collectives between them.
//
// Activations are 2-D [rows, cols]: rows are the tokens of the batch, split
// over "row axes" by sequence (a nested balanced split of the batch slots, so
// a rank's rows are contiguous and a split over more axes refines a split
// over fewer); cols are features, split into equal contiguous chunks over
// "col axes", the first axis most significant.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "collectives/world.hpp"
#include "partitioning/layouts.hpp"
#include "partitioning/mesh.hpp"
#include "runtime/backend.hpp"
#include "runtime/batch.hpp"

namespace shardlm {

class ParallelContext {
 public:
  ParallelContext(World& world, const Mesh& mesh);
  const Mesh& mesh() const { return mesh_; }
  int rank() const { return rank_; }
  bool is_root() const { return rank_ == 0; }
  int size(std::string_view axes) const { return mesh_.axes_size(axes); }
  int index(std::string_view axes) const { return mesh_.group_index(rank_, axes); }
  // The group of ranks that differ from this one only on `axes`: the
  // collectives of ShardOps, on the backend's tensors, so over device memory
  // (World::device_group: NCCL) once set_device_collectives(true).
  Communicator& comm(std::string_view axes);
  // Set when the backend's tensors live on a device (a CUDA backend).
  void set_device_collectives(bool on) { device_collectives_ = on; }
  bool device_collectives() const { return device_collectives_; }
  // The device communicator (NCCL) of this rank and `peer_rank` alone, and
  // the peer's member index in it (the lower rank is member 0): a pipeline
  // stage boundary sends the residual over it. Needs device collectives.
  struct Link {
    Communicator& comm;
    int peer;
  };
  Link device_link(int peer_rank);
  // Every rank of the job, indexed by world rank (pipeline stage boundaries).
  Communicator& world_comm();
  // Marks a wait for device work that holds collectives (a decode step
  // launched as a CUDA graph) for World's watchdog (--comm-timeout), as each
  // collective marks itself; a null `what` marks nothing.
  class DeviceWait {
   public:
    DeviceWait(ParallelContext& ctx, const char* what) : world_(what ? &ctx.world_ : nullptr) {
      if (world_) world_->enter_collective(what, nullptr);
    }
    ~DeviceWait() {
      if (world_) world_->leave_collective();
    }
    DeviceWait(const DeviceWait&) = delete;
    DeviceWait& operator=(const DeviceWait&) = delete;

   private:
    World* world_;
  };
  // This rank's pipeline stage, and the rank with its (x, y, z) in `stage`.
  int stage() const { return mesh_.coord(rank_).pp; }
  int rank_in_stage(int stage) const;

  // [begin, end) of `count` items owned by member `member` of a group over
  // `axes` (a nested balanced split); member defaults to this rank's index.
  std::pair<int64_t, int64_t> block(int64_t count, std::string_view axes, int member) const;
  std::pair<int64_t, int64_t> block(int64_t count, std::string_view axes) const {
    return block(count, axes, index(axes));
  }

 private:
  World& world_;
  Mesh mesh_;
  int rank_;
  bool device_collectives_ = false;
};

// The axes one phase's layout uses, read from its specs.
struct PhaseAxes {
  FfnLayout ffn_layout;
  AttnLayout attn_layout;
  std::string batch;        // rows of the residual stream (weight-gathered layouts)
  std::string residual_e;   // E of the residual stream
  std::string ue, uf;       // E and F (and H) of the weights as multiplied
  std::string gathered;     // weights are all-gathered over these before use
  std::string heads;        // query heads after the projections
  std::string kv_heads;     // KV heads after the projections
  std::string kv_used;      // KV heads of W_k / W_v as multiplied
  std::string hidden_f;     // F of the feed-forward hidden (gate, up) after reduction
  std::string embedding_e;  // E of the stored embedding table
  std::string vocab;        // V of the stored LM head

  static PhaseAxes from_layout(const Layout& layout);
  bool batch_attention() const { return attn_layout == AttnLayout::kBatch && !heads.empty(); }
  // How attention (and so the KV cache) is sharded in this phase.
  std::string attention_rows() const { return batch_attention() ? batch + heads : batch; }
  std::string attention_q_heads() const { return batch_attention() ? "" : heads; }
  std::string attention_kv_heads() const { return batch_attention() ? "" : kv_heads; }
};

// Rows of the batch per member of a row split: the token range and the
// batch's segments (with slots renumbered from 0) each member owns.
struct RowSplit {
  std::vector<int64_t> token_begin, token_count;   // per member, in member order
  std::vector<std::pair<int64_t, int64_t>> slots;  // per member: [first, end) slot
};
RowSplit split_rows(const ParallelContext& ctx, const BatchLayout& batch, int64_t num_slots,
                    std::string_view axes);
// The part of `batch` member `member` owns, as a batch of its own.
BatchLayout local_batch(const BatchLayout& batch, const RowSplit& split, int member);

// Collectives on 2-D F32 activations. Axes of size 1 cost nothing.
class ShardOps {
 public:
  ShardOps(Backend& backend, ParallelContext& ctx) : backend_(backend), ctx_(ctx) {}
  // [r, w] -> [r, |axes| w]: all-gather of col chunks; `axes` must be the
  // least significant end of the col split.
  Tensor gather_cols(const Tensor& x, std::string_view axes);
  // [r, |axes| w] partial sums -> [r, w]: this member's summed col chunk.
  Tensor reduce_scatter_cols(const Tensor& x, std::string_view axes);
  void all_reduce(const Tensor& x, std::string_view axes);
  // Concatenates every member's rows (member i holds counts[i] rows).
  Tensor gather_rows(const Tensor& x, std::string_view axes, const std::vector<int64_t>& counts);
  // Moves a split from cols to rows: [r, w] with cols split over `axes` ->
  // [sub_counts[me], |axes| w], where sub_counts[i] rows of this member's r
  // rows go to member i (the rows are split further over `axes`).
  Tensor cols_to_rows(const Tensor& x, std::string_view axes,
                      const std::vector<int64_t>& sub_counts);
  // The inverse of cols_to_rows.
  Tensor rows_to_cols(const Tensor& x, std::string_view axes,
                      const std::vector<int64_t>& sub_counts);
  // This member's chunk of the cols, split over `axes`.
  Tensor slice_cols(const Tensor& x, std::string_view axes);
  Tensor slice_rows(const Tensor& x, int64_t begin, int64_t count);
  // A stored weight block [rows, cols] whose rows are split over `row_axes`
  // and cols over `col_axes`, all-gathered over `gathered` (which must be the
  // least significant end of each split it touches).
  Tensor gather_weight(const Tensor& w, std::string_view row_axes, std::string_view col_axes,
                       std::string_view gathered);

 private:
  // [n, rows * width] blocks (as collectives move them) <-> [rows, n * width]
  // with block j as col chunk j.
  Tensor blocks_to_cols(const Tensor& blocks, int64_t rows, int64_t width);
  Tensor cols_to_blocks(const Tensor& x, int n);
  // The group's communicator; while the backend replays a captured decode
  // step (Backend::replaying_step), one that does nothing: the graph holds
  // the step's collectives.
  Communicator& comm(std::string_view axes);

  Backend& backend_;
  ParallelContext& ctx_;
  std::unique_ptr<Communicator> replayed_;  // comm()'s stand-in while replaying
};

}  // namespace shardlm
