// The activation collectives of tensor parallelism, checked against slices
// of a global matrix that every rank can build for itself.
#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "collectives/world.hpp"
#include "runtime/parallel.hpp"

using namespace shardlm;

namespace {

constexpr int64_t kRows = 7, kCols = 24;  // 24 splits over any 1, 2 or 4 ranks

float global_value(int64_t r, int64_t c) {
  return float(r * 100 + c);
}

// Rows [r0, r0 + rows) and cols [c0, c0 + cols) of the global matrix (times `scale`).
Tensor block(Backend& backend, int64_t r0, int64_t rows, int64_t c0, int64_t cols,
             float scale = 1) {
  Tensor t = backend.alloc({rows, cols}, DType::F32);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      t.data<float>()[r * cols + c] = scale * global_value(r0 + r, c0 + c);
  return t;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.data<float>()[i] != b.data<float>()[i]) return false;
  return true;
}

}  // namespace

TEST_CASE(
    "column gathers, reduce-scatters and row/column all-to-alls agree with the global matrix") {
  World& world = World::get();
  auto backend = make_cpu_backend(1);
  for (const Mesh& mesh : Mesh::factorizations(world.size()))
    for (const std::string prefix : {"", "x", "zy"})
      for (const std::string axes : {"x", "y", "z", "yz", "xzy"}) {
        if (prefix.find_first_of(axes) != std::string::npos) continue;
        ParallelContext ctx(world, mesh);
        ShardOps ops(*backend, ctx);
        INFO("mesh " << mesh.str() << ", cols split over '" << prefix << "' + '" << axes << "'");
        const std::string split = prefix + axes;
        const int64_t chunk = kCols / ctx.size(split), outer = kCols / ctx.size(prefix);
        const int64_t mine = ctx.index(split) * chunk, outer_begin = ctx.index(prefix) * outer;

        const Tensor local = block(*backend, 0, kRows, mine, chunk);
        CHECK(equal(ops.gather_cols(local, axes), block(*backend, 0, kRows, outer_begin, outer)));

        // Every member holds the same partial block; the sum is |axes| times it.
        const Tensor partial = block(*backend, 0, kRows, outer_begin, outer);
        CHECK(equal(ops.reduce_scatter_cols(partial, axes),
                    block(*backend, 0, kRows, mine, chunk, float(ctx.size(axes)))));

        // Rows split further over `axes`: member j takes the j-th nested block.
        std::vector<int64_t> sub;
        for (int j = 0; j < ctx.size(axes); ++j) {
          const auto [b, e] = ctx.block(kRows, axes, j);
          sub.push_back(e - b);
        }
        const auto [row_begin, row_end] = ctx.block(kRows, axes);
        const Tensor moved = ops.cols_to_rows(local, axes, sub);
        CHECK(equal(moved, block(*backend, row_begin, row_end - row_begin, outer_begin, outer)));
        CHECK(equal(ops.rows_to_cols(moved, axes, sub), local));
      }
}

TEST_CASE("weight blocks gather into the block the remaining axes own") {
  World& world = World::get();
  auto backend = make_cpu_backend(1);
  for (const Mesh& mesh : Mesh::factorizations(world.size())) {
    ParallelContext ctx(world, mesh);
    ShardOps ops(*backend, ctx);
    // Stored like W_up under 2d: rows (F) split over "zy", cols (E) over "x".
    const int64_t rows_each = 8 / ctx.size("zy"), cols_each = kCols / ctx.size("x");
    const Tensor stored = block(*backend, ctx.index("zy") * rows_each, rows_each,
                                ctx.index("x") * cols_each, cols_each);
    for (const std::string gathered : {"x", "xy", "xyz"}) {
      INFO("mesh " << mesh.str() << ", gathered over " << gathered);
      const std::string row_left = gathered == "x" ? "zy" : gathered == "xy" ? "z" : "";
      const int64_t rows_used = 8 / ctx.size(row_left);
      CHECK(equal(ops.gather_weight(stored, "zy", "x", gathered),
                  block(*backend, ctx.index(row_left) * rows_used, rows_used, 0, kCols)));
    }
  }
}
