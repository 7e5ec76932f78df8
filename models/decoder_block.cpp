#include "models/decoder_block.hpp"

#include <string>
#include <vector>

#include "kernels/math.hpp"

namespace shardlm {

namespace {

Tensor matmul(Backend& backend, const Tensor& x, const Tensor& w) {
  Tensor out = backend.alloc({x.dim(0), w.dim(0)}, backend.activation_dtype());
  backend.matmul(x, w, out, false);
  return out;
}

// x · wᵀ joins the residual: directly when nothing is left to sum over the
// F axes, else through the reduce-scatter that also restores the residual split.
// Given `sums`, the add also leaves there the rows' sums of squares of the new
// residual (the next RMSNorm's first pass, fused with the add).
void add_projection(const BlockContext& b, const Tensor& partial, const Tensor& residual,
                    const Tensor& sums = {}) {
  const Tensor summed = b.ops.reduce_scatter_cols(partial, b.axes.uf);
  if (sums.empty())
    b.backend.add(summed, residual);
  else
    b.backend.add_and_sum_squares(summed, residual, sums);
}

// Adds a projection's bias to its output once the output is whole (after
// any reduction over E), each rank the chunk of its own split of the output
// features: `col_axes`, as the layout's activation spec gives it.
void add_bias(const BlockContext& b, const Tensor& full_bias, const Tensor& out,
              const std::string& col_axes) {
  if (full_bias.empty()) return;
  const Tensor chunk = b.ops.slice_cols(full_bias.reshaped({1, full_bias.numel()}), col_axes);
  b.backend.add_bias(chunk.reshaped({chunk.numel()}), out);
}

}  // namespace

Tensor sharded_rmsnorm(const BlockContext& b, const Tensor& x, const Tensor& full_weight,
                       Tensor sums) {
  if (sums.empty()) {
    sums = b.backend.alloc({x.dim(0)}, DType::F32);
    b.backend.row_sum_squares(x, sums);
  }
  b.ops.all_reduce(sums, b.axes.residual_e);
  const Tensor weight =
      b.ops.slice_cols(full_weight.reshaped({1, full_weight.numel()}), b.axes.residual_e);
  Tensor out = b.backend.alloc(x.shape(), x.dtype());
  b.backend.rmsnorm_scale(x, sums, b.config.hidden_size, weight.reshaped({weight.numel()}),
                          float(b.config.rms_norm_eps), out);
  return out;
}

Tensor run_decoder_block(const BlockContext& b, int64_t layer, const LayerWeights& w,
                         const KVCacheLayer& cache, const Tensor& residual,
                         const Tensor& input_sums) {
  Backend& be = b.backend;
  ShardOps& ops = b.ops;
  const PhaseAxes& a = b.axes;
  const ModelConfig& c = b.config;
  const int head_dim = int(c.head_dim);
  const bool sum_over_f = b.ctx.size(a.uf) > 1;
  auto used = [&](const WeightShard& s) {
    return ops.gather_weight(s.local, s.row_axes, s.col_axes, a.gathered);
  };
  // E gathered down to the split the weights multiply with.
  auto matmul_input = [&](const Tensor& normed) {
    return ops.gather_cols(normed, axes_minus(a.residual_e, a.ue));
  };

  // Sums of squares of the residual, made by the add that last changes it
  // before a norm reads it when that add is a separate pass anyway (a
  // reduce-scattered projection, no bias after it); a matmul accumulating
  // into the residual in place leaves them to the norm.
  auto fused_sums = [&](bool fusable) {
    return fusable ? be.alloc({residual.dim(0)}, DType::F32) : Tensor{};
  };

  const Tensor input = matmul_input(sharded_rmsnorm(b, residual, w.input_norm, input_sums));

  // Projections: partial sums over the E axes become head splits (q, and k/v
  // when their heads split as finely) or are all-reduced (replicated k/v).
  Tensor q = ops.reduce_scatter_cols(matmul(be, input, used(w.q)), a.ue);
  Tensor k = matmul(be, input, used(w.k)), v = matmul(be, input, used(w.v));
  if (a.kv_heads != a.kv_used) {
    k = ops.reduce_scatter_cols(k, a.ue);
    v = ops.reduce_scatter_cols(v, a.ue);
  } else {
    ops.all_reduce(k, a.ue);
    ops.all_reduce(v, a.ue);
  }
  add_bias(b, w.q_bias, q, a.heads);
  add_bias(b, w.k_bias, k, a.kv_heads);
  add_bias(b, w.v_bias, v, a.kv_heads);
  const RopeRows& rope = b.rows.rope;
  be.rope(q, head_dim, rope.index.data(), rope.cos, rope.sin);
  be.rope(k, head_dim, rope.index.data(), rope.cos, rope.sin);

  // Attention over heads, or over batch after an all-to-all (Fig. 5b).
  AttentionHeads heads{head_dim, 0, 0, int(c.num_heads / c.num_kv_heads),
                       int(c.attention_window(layer))};
  Tensor attention;
  if (a.batch_attention()) {
    q = ops.cols_to_rows(q, a.heads, b.rows.heads_split);
    const int64_t rows = q.dim(0);
    k = ops.slice_rows(ops.cols_to_rows(k, a.kv_heads, b.rows.kv_split), b.rows.kv_slice_begin,
                       rows);
    v = ops.slice_rows(ops.cols_to_rows(v, a.kv_heads, b.rows.kv_split), b.rows.kv_slice_begin,
                       rows);
  } else {
    heads.q_offset = int(b.ctx.index(a.heads) * (c.num_heads / b.ctx.size(a.heads)));
    heads.kv_offset = int(b.ctx.index(a.kv_heads) * (c.num_kv_heads / b.ctx.size(a.kv_heads)));
  }
  be.kv_write(k, v, cache, b.rows.attention);
  attention = be.alloc(q.shape(), q.dtype());
  be.attention(q, cache, b.rows.attention, heads, attention);
  if (a.batch_attention()) attention = ops.rows_to_cols(attention, a.heads, b.rows.heads_split);
  attention = ops.gather_cols(attention, a.ue);  // heads back to W_O's split

  // Attention output projection; the serial block adds it before its second norm.
  const Tensor w_o = used(w.o);
  Tensor block_partial;
  const Tensor* ffn_input = &input;
  Tensor post_norm_input;
  if (c.parallel_block) {
    block_partial = matmul(be, attention, w_o);
  } else {
    const Tensor post_sums = fused_sums(sum_over_f && w.o_bias.empty());
    if (sum_over_f)
      add_projection(b, matmul(be, attention, w_o), residual, post_sums);
    else
      be.matmul(attention, w_o, residual, true);
    add_bias(b, w.o_bias, residual, a.residual_e);
    post_norm_input = matmul_input(sharded_rmsnorm(b, residual, w.post_attention_norm, post_sums));
    ffn_input = &post_norm_input;
  }

  // SwiGLU: F partial sums over E are reduce-scattered, activated, gathered.
  Tensor gate = ops.reduce_scatter_cols(matmul(be, *ffn_input, used(w.gate)), a.ue);
  const Tensor up = ops.reduce_scatter_cols(matmul(be, *ffn_input, used(w.up)), a.ue);
  add_bias(b, w.gate_bias, gate, a.hidden_f);
  add_bias(b, w.up_bias, up, a.hidden_f);
  be.silu_mul(gate, up, gate);
  const Tensor hidden = ops.gather_cols(gate, a.ue);
  const Tensor w_down = used(w.down);

  const Tensor output_sums =
      fused_sums((c.parallel_block || sum_over_f) && w.o_bias.empty() && w.down_bias.empty());
  if (c.parallel_block) {
    // Both branches' partial sums share one reduction (§3.4).
    be.matmul(hidden, w_down, block_partial, true);
    add_projection(b, block_partial, residual, output_sums);
    add_bias(b, w.o_bias, residual, a.residual_e);
  } else if (sum_over_f) {
    add_projection(b, matmul(be, hidden, w_down), residual, output_sums);
  } else {
    be.matmul(hidden, w_down, residual, true);
  }
  add_bias(b, w.down_bias, residual, a.residual_e);
  return output_sums;
}

}  // namespace shardlm
