#include "models/decoder_block.hpp"

#include <vector>

#include "kernels/math.hpp"

namespace shardlm {

RopeTables::RopeTables(Backend& backend, const ModelConfig& c) {
  const int64_t positions = c.max_position_embeddings, half = c.head_dim / 2;
  std::vector<float> host_cos(static_cast<size_t>(positions * half)), host_sin(host_cos.size());
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(p) * math::rope_inv_freq(int(i), int(c.head_dim), c.rope_theta);
      host_cos[size_t(p * half + i)] = float(std::cos(angle));
      host_sin[size_t(p * half + i)] = float(std::sin(angle));
    }
  cos = backend.alloc({positions, half}, DType::F32);
  sin = backend.alloc({positions, half}, DType::F32);
  backend.copy_from_host(host_cos.data(), cos);
  backend.copy_from_host(host_sin.data(), sin);
}

namespace {

Tensor matmul(Backend& backend, const Tensor& x, const Tensor& w) {
  Tensor out = backend.alloc({x.dim(0), w.dim(0)}, DType::F32);
  backend.matmul(x, w, out, false);
  return out;
}

// x · wᵀ joins the residual: directly when nothing is left to sum over the
// F axes, else through the reduce-scatter that also restores the residual split.
void add_projection(const BlockContext& b, const Tensor& partial, const Tensor& residual) {
  b.backend.add(b.ops.reduce_scatter_cols(partial, b.axes.uf), residual);
}

}  // namespace

Tensor sharded_rmsnorm(const BlockContext& b, const Tensor& x, const Tensor& full_weight) {
  Tensor sums = b.backend.alloc({x.dim(0)}, DType::F32);
  b.backend.row_sum_squares(x, sums);
  b.ops.all_reduce(sums, b.axes.residual_e);
  const Tensor weight =
      b.ops.slice_cols(full_weight.reshaped({1, full_weight.numel()}), b.axes.residual_e);
  Tensor out = b.backend.alloc(x.shape(), DType::F32);
  b.backend.rmsnorm_scale(x, sums, b.config.hidden_size, weight.reshaped({weight.numel()}),
                          float(b.config.rms_norm_eps), out);
  return out;
}

void run_decoder_block(const BlockContext& b, const LayerWeights& w, const KVCacheLayer& cache,
                       const Tensor& residual) {
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

  const Tensor input = matmul_input(sharded_rmsnorm(b, residual, w.input_norm));

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
  be.rope(q, head_dim, b.rows.at_rest.positions.data(), b.rope.cos, b.rope.sin);
  be.rope(k, head_dim, b.rows.at_rest.positions.data(), b.rope.cos, b.rope.sin);

  // Attention over heads, or over batch after an all-to-all (Fig. 5b).
  AttentionHeads heads{head_dim, 0, 0, int(c.num_heads / c.num_kv_heads)};
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
  attention = be.alloc(q.shape(), DType::F32);
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
    if (sum_over_f)
      add_projection(b, matmul(be, attention, w_o), residual);
    else
      be.matmul(attention, w_o, residual, true);
    post_norm_input = matmul_input(sharded_rmsnorm(b, residual, w.post_attention_norm));
    ffn_input = &post_norm_input;
  }

  // SwiGLU: F partial sums over E are reduce-scattered, activated, gathered.
  Tensor gate = ops.reduce_scatter_cols(matmul(be, *ffn_input, used(w.gate)), a.ue);
  const Tensor up = ops.reduce_scatter_cols(matmul(be, *ffn_input, used(w.up)), a.ue);
  be.silu_mul(gate, up, gate);
  const Tensor hidden = ops.gather_cols(gate, a.ue);
  const Tensor w_down = used(w.down);

  if (c.parallel_block) {
    // Both branches' partial sums share one reduction (§3.4).
    be.matmul(hidden, w_down, block_partial, true);
    add_projection(b, block_partial, residual);
  } else if (sum_over_f) {
    add_projection(b, matmul(be, hidden, w_down), residual);
  } else {
    be.matmul(hidden, w_down, residual, true);
  }
}

}  // namespace shardlm
