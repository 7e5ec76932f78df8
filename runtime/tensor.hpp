#pragma once
// A Tensor is a typed, shaped view into memory that a Backend owns. Copies
// share the memory; `rows` makes a view of consecutive leading-dimension rows.
#include <cstdint>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/dtype.hpp"

namespace shardlm {

enum class Device { CPU, CUDA };

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);  // "[2, 3]"

inline int64_t numel_of(const Shape& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<void> memory, size_t byte_offset, Shape shape, DType dtype, Device device)
      : memory_(std::move(memory)),
        byte_offset_(byte_offset),
        shape_(std::move(shape)),
        dtype_(dtype),
        device_(device) {}

  bool empty() const { return memory_ == nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t rank() const { return shape_.size(); }
  int64_t numel() const { return numel_of(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() const { return static_cast<char*>(memory_.get()) + byte_offset_; }
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }

  // Rows [begin, begin + count) of the leading dimension, sharing memory.
  Tensor rows(int64_t begin, int64_t count) const;
  // The same memory seen with another shape of equal element count.
  Tensor reshaped(Shape shape) const;

  // Int8 weight-only quantization keeps one F32 scale per row (output
  // channel) beside the I8 values: row r holds values q * scales[r]. Empty
  // for every other tensor. `rows` slices the scales with the rows;
  // `reshaped` keeps them only while the row count stays the same.
  const Tensor* scales() const { return scales_.get(); }
  Tensor with_scales(Tensor scales) const;

 private:
  std::shared_ptr<void> memory_;
  size_t byte_offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::shared_ptr<const Tensor> scales_;
};

}  // namespace shardlm
