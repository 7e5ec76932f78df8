#include "runtime/dtype.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "kernels/math.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

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

std::optional<DType> weight_dtype_from_user(std::string_view name) {
  if (name == "int8" || name == "i8") return DType::I8;
  return dtype_from_user(name);
}

std::string_view weight_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I8: return "int8";
    case DType::I32: return "i32";
  }
  return "?";
}

std::optional<DType> parse_weight_dtype(std::string_view flag) {
  if (flag.empty() || flag == "auto") return std::nullopt;
  if (auto d = weight_dtype_from_user(flag)) return d;
  throw UsageError(fmt::format("--weights {}: expected f32, bf16, f16, int8 or auto", flag));
}

const char* weights_flag_help() {
  return "weight storage: f32, bf16, f16, int8 (weight-only, per-output-channel scales) or auto "
         "(default: keep the checkpoint's dtype)";
}

DType parse_kv_dtype(std::string_view flag) {
  if (flag == "f32") return DType::F32;
  if (flag == "bf16") return DType::BF16;
  if (flag == "f16") return DType::F16;
  throw UsageError(fmt::format("--kv-dtype {}: expected f32, bf16 or f16", flag));
}

std::string default_kv_dtype_flag() {
  const char* env = std::getenv("SHARDLM_KV_DTYPE");
  return env && *env ? env : "bf16";
}

const char* kv_dtype_flag_help() {
  return "KV cache storage: f32, bf16 or f16 (16-bit: half the bytes; default bf16, or "
         "$SHARDLM_KV_DTYPE)";
}

std::optional<DType> parse_activation_dtype(std::string_view flag) {
  if (flag.empty() || flag == "auto") return std::nullopt;
  if (flag == "f32") return DType::F32;
  if (flag == "bf16") return DType::BF16;
  throw UsageError(fmt::format("--activations {}: expected auto, f32 or bf16", flag));
}

const char* activations_flag_help() {
  return "activations (the residual stream and what collectives move): f32 or bf16 (half the "
         "bytes; each operation computes in F32 and rounds what it writes); auto: bf16 on CUDA, "
         "f32 on the CPU";
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
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
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
    default: throw std::logic_error("convert_to_f32: unsupported source dtype");
  }
}

void convert_from_f32(const float* src, void* dst, DType dst_dtype, size_t n) {
  switch (dst_dtype) {
    case DType::F32: std::memcpy(dst, src, n * sizeof(float)); return;
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
    default: throw std::logic_error("convert_from_f32: unsupported destination dtype");
  }
}

}  // namespace shardlm
