#include "models/rope.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/math.hpp"

namespace shardlm {

std::vector<double> rope_inv_freq(const ModelConfig& c, int64_t seq_len) {
  // The per-frequency rules live in kernels/math.hpp, shared with device code.
  const int dim = int(c.head_dim), half = dim / 2;
  const RopeScaling& s = c.rope_scaling;
  const double base =
      s.type == RopeType::kDynamic
          ? math::rope_dynamic_base(c.rope_theta, s.factor, seq_len, c.max_position_embeddings, dim)
          : c.rope_theta;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) inv_freq[size_t(i)] = math::rope_inv_freq(i, dim, base);

  const double original_context = double(s.original_max_position_embeddings);
  switch (s.type) {
    case RopeType::kDefault:
    case RopeType::kDynamic: break;
    case RopeType::kLinear:
      for (double& f : inv_freq) f = math::rope_linear_inv_freq(f, s.factor);
      break;
    case RopeType::kLlama3:
      for (double& f : inv_freq)
        f = math::rope_llama3_inv_freq(f, s.factor, s.low_freq_factor, s.high_freq_factor,
                                       original_context);
      break;
    case RopeType::kYarn: {
      const math::RopeYarnRange range = math::rope_yarn_range(s.beta_fast, s.beta_slow, s.truncate,
                                                              dim, original_context, c.rope_theta);
      for (int i = 0; i < half; ++i)
        inv_freq[size_t(i)] = math::rope_yarn_inv_freq(inv_freq[size_t(i)], i, range, s.factor);
      break;
    }
  }
  return inv_freq;
}

double rope_attention_factor(const ModelConfig& c) {
  return c.rope_scaling.type == RopeType::kYarn ? c.rope_scaling.attention_factor : 1.0;
}

namespace {

// cos/sin rows for positions[t] with frequencies of seq_lens[t].
void fill_tables(const ModelConfig& c, const std::vector<int64_t>& positions,
                 const std::vector<int64_t>& seq_lens, std::vector<float>& cos_out,
                 std::vector<float>& sin_out) {
  const int64_t half = c.head_dim / 2;
  const double scale = rope_attention_factor(c);
  cos_out.resize(positions.size() * size_t(half));
  sin_out.resize(cos_out.size());
  std::vector<double> inv_freq;
  int64_t freq_len = -1;
  for (size_t t = 0; t < positions.size(); ++t) {
    if (seq_lens[t] != freq_len) {
      freq_len = seq_lens[t];
      inv_freq = rope_inv_freq(c, freq_len);
    }
    for (int64_t i = 0; i < half; ++i) {
      const double angle = math::rope_angle(positions[t], inv_freq[size_t(i)]);
      cos_out[t * size_t(half) + size_t(i)] = float(std::cos(angle) * scale);
      sin_out[t * size_t(half) + size_t(i)] = float(std::sin(angle) * scale);
    }
  }
}

std::pair<Tensor, Tensor> upload(Backend& backend, const std::vector<float>& cos,
                                 const std::vector<float>& sin, int64_t half) {
  const int64_t rows = int64_t(cos.size()) / half;
  Tensor cos_t = backend.alloc({rows, half}, DType::F32),
         sin_t = backend.alloc({rows, half}, DType::F32);
  backend.copy_from_host(cos.data(), cos_t);
  backend.copy_from_host(sin.data(), sin_t);
  return {cos_t, sin_t};
}

}  // namespace

void RopeTables::cover(Backend& backend, int64_t positions) {
  // Below max_position_embeddings every sequence uses the unscaled-length
  // frequencies; rows past it (dynamic NTK) are computed per pass in rows_for.
  const int64_t rows = std::min(positions, config_.max_position_embeddings);
  if (rows <= rows_) return;
  std::vector<int64_t> pos(static_cast<size_t>(rows));
  for (int64_t p = 0; p < rows; ++p) pos[size_t(p)] = p;
  std::vector<float> cos, sin;
  fill_tables(config_, pos, std::vector<int64_t>(pos.size(), config_.max_position_embeddings), cos,
              sin);
  std::tie(cos_, sin_) = upload(backend, cos, sin, config_.head_dim / 2);
  rows_ = rows;
}

RopeRows RopeTables::rows_for(Backend& backend, const BatchLayout& batch) const {
  const bool grown =
      std::any_of(batch.segments.begin(), batch.segments.end(), [&](const Segment& s) {
        return s.start_pos + s.num_tokens > config_.max_position_embeddings;
      });
  if (config_.rope_scaling.type != RopeType::kDynamic || !grown)
    return {cos_, sin_, batch.positions};
  std::vector<int64_t> positions, seq_lens;
  for (const Segment& s : batch.segments)
    for (int t = 0; t < s.num_tokens; ++t) {
      positions.push_back(s.start_pos + t);
      seq_lens.push_back(s.start_pos + s.num_tokens);
    }
  std::vector<float> cos, sin;
  fill_tables(config_, positions, seq_lens, cos, sin);
  RopeRows rows;
  std::tie(rows.cos, rows.sin) = upload(backend, cos, sin, config_.head_dim / 2);
  for (int32_t t = 0; t < int32_t(positions.size()); ++t) rows.index.push_back(t);
  return rows;
}

}  // namespace shardlm
