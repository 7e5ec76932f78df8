#include "models/decoder_block.hpp"

#include <vector>

#include "kernels/math.hpp"

namespace shardlm {

BlockScratch::BlockScratch(Backend& backend, const ModelConfig& c, int64_t tokens)
    : normed(backend.alloc({tokens, c.hidden_size}, DType::F32)),
      q(backend.alloc({tokens, c.q_dim()}, DType::F32)),
      k(backend.alloc({tokens, c.kv_dim()}, DType::F32)),
      v(backend.alloc({tokens, c.kv_dim()}, DType::F32)),
      attention(backend.alloc({tokens, c.q_dim()}, DType::F32)),
      gate(backend.alloc({tokens, c.intermediate_size}, DType::F32)),
      up(backend.alloc({tokens, c.intermediate_size}, DType::F32)) {}

BlockScratch BlockScratch::rows(int64_t tokens) const {
  BlockScratch s;
  s.normed = normed.rows(0, tokens);
  s.q = q.rows(0, tokens);
  s.k = k.rows(0, tokens);
  s.v = v.rows(0, tokens);
  s.attention = attention.rows(0, tokens);
  s.gate = gate.rows(0, tokens);
  s.up = up.rows(0, tokens);
  return s;
}

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

void run_decoder_block(Backend& backend, const ModelConfig& config, const LayerWeights& w,
                       const KVCacheLayer& cache, const RopeTables& rope,
                       const BatchLayout& batch, const BlockScratch& s, const Tensor& residual) {
  const float eps = float(config.rms_norm_eps);
  const int head_dim = int(config.head_dim);
  backend.rmsnorm(residual, w.input_norm, eps, s.normed);
  backend.matmul(s.normed, w.q, s.q, false);
  backend.matmul(s.normed, w.k, s.k, false);
  backend.matmul(s.normed, w.v, s.v, false);
  backend.rope(s.q, head_dim, batch.positions.data(), rope.cos, rope.sin);
  backend.rope(s.k, head_dim, batch.positions.data(), rope.cos, rope.sin);
  backend.attention(s.q, s.k, s.v, cache, batch, head_dim, s.attention);
  // The parallel block feeds the same normed input to both branches, so the
  // attention output may join the residual before the feed-forward runs.
  backend.matmul(s.attention, w.o, residual, true);
  if (!config.parallel_block) backend.rmsnorm(residual, w.post_attention_norm, eps, s.normed);
  backend.matmul(s.normed, w.gate, s.gate, false);
  backend.matmul(s.normed, w.up, s.up, false);
  backend.silu_mul(s.gate, s.up, s.gate);
  backend.matmul(s.gate, w.down, residual, true);
}

}  // namespace shardlm
