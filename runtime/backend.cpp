#include "runtime/backend.hpp"

#include <vector>

namespace shardlm {

void Backend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  Tensor sums = alloc({x.dim(0)}, DType::F32);
  row_sum_squares(x, sums);
  rmsnorm_scale(x, sums, x.dim(1), weight, eps, out);
}

void Backend::add_and_sum_squares(const Tensor& x, const Tensor& inout, const Tensor& sums) {
  add(x, inout);
  row_sum_squares(inout, sums);
}

void Backend::sample(const Tensor& logits, const SamplingParams& params, const double* uniforms,
                     int32_t* ids) {
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  std::vector<float> host(size_t(rows * vocab));
  copy_to_host(logits, host.data());
  for (int64_t r = 0; r < rows; ++r)
    ids[r] = sample_token_from_draw(host.data() + r * vocab, vocab, params, uniforms[r]);
}

}  // namespace shardlm
