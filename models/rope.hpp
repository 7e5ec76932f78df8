#pragma once
// Rotary position embedding angles with Hugging Face's scaling variants
// (transformers/modeling_rope_utils.py): default, linear, dynamic NTK, llama3
// and yarn. Frequencies are computed once on the host; the backend's rope
// kernel rotates by rows of cos/sin tables.
#include <cstdint>
#include <vector>

#include "models/model_config.hpp"
#include "runtime/backend.hpp"
#include "runtime/batch.hpp"

namespace shardlm {

// The head_dim/2 inverse frequencies for a sequence of `seq_len` positions
// (seq_len matters only for dynamic NTK scaling, which grows the base once a
// sequence is longer than max_position_embeddings).
std::vector<double> rope_inv_freq(const ModelConfig& config, int64_t seq_len);
// What cos and sin are multiplied by (yarn's attention factor; 1 otherwise).
double rope_attention_factor(const ModelConfig& config);

// The rotation of the rows of one forward pass: row `index[t]` of cos/sin
// ([rows, head_dim/2]) rotates token t.
struct RopeRows {
  Tensor cos, sin;
  std::vector<int32_t> index;
};

class RopeTables {
 public:
  // No rows yet: cover() sizes the tables by what a run needs, never by the
  // trained context alone (a config may claim 10^9 positions).
  explicit RopeTables(const ModelConfig& config) : config_(config) {}
  // Tables by position for positions [0, min(positions, max_position_embeddings));
  // grows them when a run needs more rows than the last one.
  void cover(Backend& backend, int64_t positions);
  int64_t rows() const { return rows_; }
  // The rows for `batch`: the position tables, except under dynamic NTK
  // scaling once a sequence has grown past max_position_embeddings. Then each
  // token is rotated with the frequencies of its sequence's length in this
  // pass, as Hugging Face does when it generates one sequence: prompt tokens
  // with the prompt's length, each decoded token with the length it makes
  // (keys already cached keep the rotation they were written with).
  RopeRows rows_for(Backend& backend, const BatchLayout& batch) const;

 private:
  const ModelConfig& config_;
  Tensor cos_, sin_;
  int64_t rows_ = 0;
};

}  // namespace shardlm
