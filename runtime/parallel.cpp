#include "runtime/parallel.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

std::string axes_in(std::string_view axes, std::string_view subset) {
  std::string out;
  for (char a : axes)
    if (subset.find(a) != std::string_view::npos) out += a;
  return out;
}

void require_suffix(std::string_view axes, std::string_view tail, const char* what) {
  if (!axes.ends_with(tail))
    throw std::logic_error(
        fmt::format("{}: axes '{}' are not the least significant end of '{}'", what, tail, axes));
}

}  // namespace

ParallelContext::ParallelContext(World& world, const Mesh& mesh)
    : world_(world), mesh_(mesh), rank_(world.rank()) {
  if (mesh.size() != world.size())
    throw UsageError(
        mesh.pp > 1
            ? fmt::format(
                  "--pp {} x --mesh {},{},{} holds {} ranks but the job has {} (mpirun -n {})",
                  mesh.pp, mesh.x, mesh.y, mesh.z, mesh.size(), world.size(), world.size())
            : fmt::format("--mesh {} holds {} ranks but the job has {} (mpirun -n {})", mesh.str(),
                          mesh.size(), world.size(), world.size()));
}

Communicator& ParallelContext::comm(std::string_view axes) {
  const std::vector<int> ranks = mesh_.group(rank_, axes);
  return device_collectives_ ? world_.device_group(ranks) : world_.group(ranks);
}

ParallelContext::Link ParallelContext::device_link(int peer_rank) {
  if (!device_collectives_ || peer_rank == rank_)
    throw std::logic_error(
        fmt::format("ParallelContext::device_link({}) on rank {} without device collectives",
                    peer_rank, rank_));
  const std::vector<int> ranks = {std::min(rank_, peer_rank), std::max(rank_, peer_rank)};
  return {world_.device_group(ranks), peer_rank > rank_ ? 1 : 0};
}

Communicator& ParallelContext::world_comm() {
  return world_.all();
}

int ParallelContext::rank_in_stage(int stage) const {
  MeshCoord c = mesh_.coord(rank_);
  c.pp = stage;
  return mesh_.rank(c);
}

std::pair<int64_t, int64_t> ParallelContext::block(int64_t count, std::string_view axes,
                                                   int member) const {
  std::vector<int> digits(axes.size());
  for (size_t i = axes.size(); i-- > 0;) {
    const int s = mesh_.axis_size(axes[i]);
    digits[i] = member % s;
    member /= s;
  }
  int64_t begin = 0, end = count;
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t s = mesh_.axis_size(axes[i]), length = end - begin;
    const int64_t new_begin = begin + digits[i] * length / s;
    end = begin + (digits[i] + 1) * length / s;
    begin = new_begin;
  }
  return {begin, end};
}

PhaseAxes PhaseAxes::from_layout(const Layout& l) {
  PhaseAxes a;
  a.ffn_layout = l.ffn;
  a.attn_layout = l.attn;
  const PartitionSpec& x = l.activations.at(l.residual);
  a.batch = x.axes_of('B');
  a.residual_e = x.axes_of('E');
  const PartitionSpec& up = l.weight(WeightRole::kWUp).used;
  a.ue = up.axes_of('E');
  a.uf = up.axes_of('F');
  a.gathered = layout_params(l.ffn).gathered;
  a.heads = l.activations.at("q").axes_of('H');
  a.kv_heads = l.activations.at("k").axes_of('K');
  a.kv_used = l.weight(WeightRole::kWk).used.axes_of('K');
  a.hidden_f = l.activations.at("up").axes_of('F');
  a.embedding_e = l.weight(WeightRole::kEmbedding).stored.axes_of('E');
  a.vocab = l.weight(WeightRole::kLmHead).stored.axes_of('V');
  return a;
}

RowSplit split_rows(const ParallelContext& ctx, const BatchLayout& batch, int64_t num_slots,
                    std::string_view axes) {
  const int members = ctx.size(axes);
  RowSplit split;
  size_t segment = 0;
  int64_t token = 0;
  for (int m = 0; m < members; ++m) {
    const auto range = ctx.block(num_slots, axes, m);
    split.slots.push_back(range);
    split.token_begin.push_back(token);
    while (segment < batch.segments.size() && batch.segments[segment].slot < range.second) {
      if (batch.segments[segment].slot < range.first)
        throw std::logic_error("split_rows: segments must be in slot order");
      token += batch.segments[segment++].num_tokens;
    }
    split.token_count.push_back(token - split.token_begin.back());
  }
  return split;
}

BatchLayout local_batch(const BatchLayout& batch, const RowSplit& split, int member) {
  const auto [first, end] = split.slots[size_t(member)];
  std::vector<Segment> segments;
  for (const Segment& s : batch.segments)
    if (s.slot >= first && s.slot < end)
      segments.push_back({int(s.slot - first), s.start_pos, s.num_tokens});
  return BatchLayout(std::move(segments));
}

Tensor ShardOps::blocks_to_cols(const Tensor& blocks, int64_t rows, int64_t width) {
  const int64_t n = blocks.dim(0);
  Tensor out = backend_.alloc({rows, n * width}, blocks.dtype());
  for (int64_t j = 0; j < n; ++j)
    backend_.copy_2d(blocks.rows(j, 1).reshaped({rows, width}), 0, 0, out, 0, j * width, rows,
                     width);
  return out;
}

Tensor ShardOps::cols_to_blocks(const Tensor& x, int n) {
  const int64_t rows = x.dim(0), width = x.dim(1) / n;
  Tensor blocks = backend_.alloc({n, rows * width}, x.dtype());
  for (int j = 0; j < n; ++j)
    backend_.copy_2d(x, 0, j * width, blocks.rows(j, 1).reshaped({rows, width}), 0, 0, rows, width);
  return blocks;
}

namespace {

// The communicator of a replayed step: every collective is in the graph.
class ReplayedCollectives final : public Communicator {
 public:
  explicit ReplayedCollectives(Communicator& group) : size_(group.size()), rank_(group.rank()) {}
  int size() const override { return size_; }
  int rank() const override { return rank_; }
  void all_gather(const void*, void*, size_t, DType) override {}
  void all_gatherv(const void*, void*, const std::vector<size_t>&, DType) override {}
  void reduce_scatter(const void*, void*, size_t, DType) override {}
  void reduce_scatterv(const void*, void*, const std::vector<size_t>&, DType) override {}
  void all_reduce(void*, size_t, DType) override {}
  void all_to_all(const void*, void*, size_t, DType) override {}
  void all_to_allv(const void*, const std::vector<size_t>&, void*, const std::vector<size_t>&,
                   DType) override {}
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int) override {}
  void recv(void*, size_t, int) override {}
  std::function<void()> isend(const void*, size_t, int) override {
    return [] {};
  }
  void barrier() override {}

 private:
  int size_, rank_;
};

}  // namespace

Communicator& ShardOps::comm(std::string_view axes) {
  Communicator& group = ctx_.comm(axes);
  if (!backend_.replaying_step()) return group;
  replayed_ = std::make_unique<ReplayedCollectives>(group);
  return *replayed_;
}

Tensor ShardOps::gather_cols(const Tensor& x, std::string_view axes) {
  const int n = ctx_.size(axes);
  if (n == 1) return x;
  const int64_t rows = x.dim(0), width = x.dim(1);
  Tensor gathered = backend_.alloc({n, rows * width}, x.dtype());
  comm(axes).all_gather(x.raw(), gathered.raw(), size_t(rows * width), x.dtype());
  return blocks_to_cols(gathered, rows, width);
}

Tensor ShardOps::reduce_scatter_cols(const Tensor& x, std::string_view axes) {
  const int n = ctx_.size(axes);
  if (n == 1) return x;
  const int64_t rows = x.dim(0), width = x.dim(1) / n;
  const Tensor packed = cols_to_blocks(x, n);
  Tensor out = backend_.alloc({rows, width}, x.dtype());
  comm(axes).reduce_scatter(packed.raw(), out.raw(), size_t(rows * width), x.dtype());
  return out;
}

void ShardOps::all_reduce(const Tensor& x, std::string_view axes) {
  if (ctx_.size(axes) == 1) return;
  comm(axes).all_reduce(x.raw(), size_t(x.numel()), x.dtype());
}

Tensor ShardOps::gather_rows(const Tensor& x, std::string_view axes,
                             const std::vector<int64_t>& counts) {
  if (ctx_.size(axes) == 1) return x;
  const int64_t width = x.dim(1);
  std::vector<size_t> elements;
  for (int64_t c : counts) elements.push_back(size_t(c * width));
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  Tensor out = backend_.alloc({total, width}, x.dtype());
  comm(axes).all_gatherv(x.raw(), out.raw(), elements, x.dtype());
  return out;
}

Tensor ShardOps::cols_to_rows(const Tensor& x, std::string_view axes,
                              const std::vector<int64_t>& sub_counts) {
  const int n = ctx_.size(axes);
  if (n == 1) return x;
  const int64_t width = x.dim(1), mine = sub_counts[size_t(ctx_.index(axes))];
  std::vector<size_t> send_counts, recv_counts(size_t(n), size_t(mine * width));
  for (int64_t c : sub_counts) send_counts.push_back(size_t(c * width));
  Tensor received = backend_.alloc({n, mine * width}, x.dtype());
  comm(axes).all_to_allv(x.raw(), send_counts, received.raw(), recv_counts, x.dtype());
  return blocks_to_cols(received, mine, width);
}

Tensor ShardOps::rows_to_cols(const Tensor& x, std::string_view axes,
                              const std::vector<int64_t>& sub_counts) {
  const int n = ctx_.size(axes);
  if (n == 1) return x;
  const int64_t mine = x.dim(0), width = x.dim(1) / n;
  const Tensor packed = cols_to_blocks(x, n);
  std::vector<size_t> send_counts(size_t(n), size_t(mine * width)), recv_counts;
  for (int64_t c : sub_counts) recv_counts.push_back(size_t(c * width));
  const int64_t total = std::accumulate(sub_counts.begin(), sub_counts.end(), int64_t{0});
  Tensor out = backend_.alloc({total, width}, x.dtype());
  comm(axes).all_to_allv(packed.raw(), send_counts, out.raw(), recv_counts, x.dtype());
  return out;
}

Tensor ShardOps::slice_cols(const Tensor& x, std::string_view axes) {
  const int n = ctx_.size(axes);
  if (n == 1) return x;
  const int64_t rows = x.dim(0), width = x.dim(1) / n;
  Tensor out = backend_.alloc({rows, width}, x.dtype());
  backend_.copy_2d(x, 0, ctx_.index(axes) * width, out, 0, 0, rows, width);
  return out;
}

Tensor ShardOps::slice_rows(const Tensor& x, int64_t begin, int64_t count) {
  return x.rows(begin, count);
}

Tensor ShardOps::gather_weight(const Tensor& w, std::string_view row_axes_in,
                               std::string_view col_axes_in, std::string_view gathered_in) {
  const int n = ctx_.size(gathered_in);
  if (n == 1) return w;
  // Axes of size 1 split nothing: `1d` stores F over "xzy", which with x = 1
  // is the "zy" of the weight-gathered layouts.
  const Mesh& mesh = ctx_.mesh();
  const std::string row_axes = mesh.splitting(row_axes_in), col_axes = mesh.splitting(col_axes_in);
  const std::string gathered = mesh.splitting(gathered_in);
  const std::string row_part = axes_in(row_axes, gathered), col_part = axes_in(col_axes, gathered);
  require_suffix(row_axes, row_part, "gather_weight rows");
  require_suffix(col_axes, col_part, "gather_weight cols");
  // Weights are gathered as stored (f32, bf16, f16 or int8).
  const int64_t rows = w.dim(0), cols = w.dim(1);
  Tensor blocks = backend_.alloc({n, rows * cols}, w.dtype());
  Communicator& comm = this->comm(gathered);
  comm.all_gather(w.raw(), blocks.raw(), size_t(w.numel()), w.dtype());
  Tensor out =
      backend_.alloc({rows * mesh.axes_size(row_part), cols * mesh.axes_size(col_part)}, w.dtype());
  const std::vector<int> members = mesh.group(ctx_.rank(), gathered);
  for (int j = 0; j < n; ++j)
    backend_.copy_2d(blocks.rows(j, 1).reshaped({rows, cols}), 0, 0, out,
                     mesh.group_index(members[size_t(j)], row_part) * rows,
                     mesh.group_index(members[size_t(j)], col_part) * cols, rows, cols);
  if (const Tensor* scales = w.scales()) {
    // Int8 scales belong to whole output rows (the backend computes them over
    // the full row at load), so members that differ only in cols hold equal
    // scales; each member's go to its row block.
    Tensor all_scales = backend_.alloc({n, rows}, DType::F32);
    comm.all_gather(scales->data<float>(), all_scales.data<float>(), size_t(rows));
    Tensor out_scales = backend_.alloc({1, out.dim(0)}, DType::F32);
    for (int j = 0; j < n; ++j)
      backend_.copy_2d(all_scales, j, 0, out_scales, 0,
                       mesh.group_index(members[size_t(j)], row_part) * rows, 1, rows);
    out = out.with_scales(out_scales.reshaped({out.dim(0)}));
  }
  return out;
}

}  // namespace shardlm
