#include "runtime/tensor.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace shardlm {

std::string shape_str(const Shape& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  if (shape_.empty() || begin < 0 || count < 0 || begin + count > shape_[0])
    throw std::out_of_range(
        fmt::format("Tensor::rows({}, {}) outside shape {}", begin, count, shape_str(shape_)));
  Shape sub = shape_;
  sub[0] = count;
  const size_t row_bytes =
      size_t(numel_of(Shape(shape_.begin() + 1, shape_.end()))) * dtype_size(dtype_);
  Tensor view(memory_, byte_offset_ + size_t(begin) * row_bytes, std::move(sub), dtype_, device_);
  if (scales_) view.scales_ = std::make_shared<const Tensor>(scales_->rows(begin, count));
  return view;
}

Tensor Tensor::reshaped(Shape shape) const {
  if (numel_of(shape) != numel())
    throw std::invalid_argument(fmt::format("Tensor::reshaped: {} has {} elements, {} has {}",
                                            shape_str(shape_), numel(), shape_str(shape),
                                            numel_of(shape)));
  const bool same_rows = !shape.empty() && !shape_.empty() && shape[0] == shape_[0];
  Tensor view(memory_, byte_offset_, std::move(shape), dtype_, device_);
  if (same_rows) view.scales_ = scales_;
  return view;
}

Tensor Tensor::with_scales(Tensor scales) const {
  Tensor t = *this;
  t.scales_ = std::make_shared<const Tensor>(std::move(scales));
  return t;
}

}  // namespace shardlm
