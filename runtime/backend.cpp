#include "runtime/backend.hpp"

namespace shardlm {

void Backend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  Tensor sums = alloc({x.dim(0)}, DType::F32);
  row_sum_squares(x, sums);
  rmsnorm_scale(x, sums, x.dim(1), weight, eps, out);
}

}  // namespace shardlm
