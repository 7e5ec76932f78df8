#include "runtime/dtype.hpp"

#include <cstring>
#include <stdexcept>

#include "kernels/math.hpp"

namespace shardlm {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::BF16:
    case DType::F16:
      return 2;
    case DType::I8:
      return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I8: return "I8";
    case DType::I32: return "I32";
  }
  return "?";
}

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (DType d : {DType::F32, DType::BF16, DType::F16, DType::I8, DType::I32})
    if (name == dtype_name(d)) return d;
  return std::nullopt;
}

std::optional<DType> dtype_from_user(std::string_view name) {
  if (name == "f32" || name == "float32" || name == "float") return DType::F32;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "f16" || name == "float16" || name == "half") return DType::F16;
  return std::nullopt;
}

std::string_view torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I8: return "int8";
    case DType::I32: return "int32";
  }
  return "?";
}

void convert_to_f32(const void* src, DType src_dtype, float* dst, size_t n) {
  switch (src_dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      const auto* h = static_cast<const uint16_t*>(src);
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; ++i) dst[i] = math::bf16_to_float(h[i]);
      return;
    }
    case DType::F16: {
      const auto* h = static_cast<const uint16_t*>(src);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; ++i) dst[i] = math::f16_to_float(h[i]);
      return;
    }
    default:
      throw std::logic_error("convert_to_f32: unsupported source dtype");
  }
}

void convert_from_f32(const float* src, void* dst, DType dst_dtype, size_t n) {
  switch (dst_dtype) {
    case DType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::BF16: {
      auto* h = static_cast<uint16_t*>(dst);
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; ++i) h[i] = math::float_to_bf16(src[i]);
      return;
    }
    case DType::F16: {
      auto* h = static_cast<uint16_t*>(dst);
#pragma omp parallel for schedule(static) if (n > (1 << 16))
      for (size_t i = 0; i < n; ++i) h[i] = math::float_to_f16(src[i]);
      return;
    }
    default:
      throw std::logic_error("convert_from_f32: unsupported destination dtype");
  }
}

}  // namespace shardlm
