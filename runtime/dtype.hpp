#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shardlm {

enum class DType { F32, BF16, F16, I8, I32 };

// Bytes per element. Inline and constexpr: kernels call it in their loops.
constexpr size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
    case DType::I32: return 4;
    case DType::BF16:
    case DType::F16: return 2;
    case DType::I8: return 1;
  }
  return 0;
}
// Names as safetensors writes them: "F32", "BF16", "F16", "I8", "I32".
std::string_view dtype_name(DType dtype);
std::optional<DType> dtype_from_safetensors(std::string_view name);
// Names as config.json's torch_dtype and the CLI write them: float32/f32, ...
std::optional<DType> dtype_from_user(std::string_view name);
// A weight storage dtype as `--weights` names it: f32, bf16, f16 or int8
// (I8: weight-only, per-output-channel scales).
std::optional<DType> weight_dtype_from_user(std::string_view name);
// The `--weights` name of a weight storage dtype: "f32", "bf16", "f16", "int8".
std::string_view weight_dtype_name(DType dtype);
// The `--weights` flag: empty or "auto" -> nullopt (keep each checkpoint
// tensor's dtype), else a weight dtype; anything else throws UsageError.
std::optional<DType> parse_weight_dtype(std::string_view flag);
// Help text of `--weights`, the same on every command that loads a model.
const char* weights_flag_help();
std::string_view torch_dtype_name(DType dtype);
// The `--kv-dtype` flag: f32, bf16 or f16; anything else throws UsageError.
DType parse_kv_dtype(std::string_view flag);
// Its default: $SHARDLM_KV_DTYPE when set (the test suite sets f32, the
// dtype its reference comparisons are stated for), else "bf16".
std::string default_kv_dtype_flag();
const char* kv_dtype_flag_help();
// The `--activations` flag: auto (nullopt: the backend's default), f32 or
// bf16; anything else throws UsageError.
std::optional<DType> parse_activation_dtype(std::string_view flag);
const char* activations_flag_help();

// Converts n values of `src_dtype` (F32, BF16 or F16) at src to float.
void convert_to_f32(const void* src, DType src_dtype, float* dst, size_t n);
// Converts n floats to `dst_dtype` (F32, BF16 or F16).
void convert_from_f32(const float* src, void* dst, DType dst_dtype, size_t n);

}  // namespace shardlm
