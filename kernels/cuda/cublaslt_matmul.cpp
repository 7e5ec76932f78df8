#include "kernels/cuda/cublaslt_matmul.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "kernels/cuda/cuda_check.cuh"

namespace shardlm::cuda {
namespace {

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default:
      throw std::logic_error(
          fmt::format("cuBLASLt matmul: {} operands are not supported", dtype_name(dtype)));
  }
}

// The alignment cuBLASLt may assume of a pointer: the largest power of two
// dividing its address, up to the 256 bytes its preferences default to.
// Views of rows (Tensor::rows) offset a pointer by whole rows only, so a
// plan is rarely chosen for less than 16 bytes, but it is never wrong.
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 1;
  while (alignment < 256 && address % (alignment * 2) == 0) alignment *= 2;
  return alignment;
}

}  // namespace

CublasLtMatmul::CublasLtMatmul(DeviceMemory& memory) : stream_(memory.stream()) {
  check(cublasLtCreate(&handle_), "cublasLtCreate");
  try {
    workspace_ = memory.allocate(kWorkspaceBytes, MemoryPurpose::kWorkspace);
  } catch (...) {
    cublasLtDestroy(handle_);
    throw;
  }
}

CublasLtMatmul::~CublasLtMatmul() {
  for (auto& [key, plan] : plans_) destroy(plan);
  cublasLtDestroy(handle_);
}

std::string CublasLtMatmul::version() {
  const size_t v = cublasLtGetVersion();  // major * 10000 + minor * 100 + patch
  return fmt::format("{}.{}", v / 10000, v / 100 % 100);
}

void CublasLtMatmul::destroy(Plan& plan) {
  if (plan.a) cublasLtMatrixLayoutDestroy(plan.a);
  if (plan.b) cublasLtMatrixLayoutDestroy(plan.b);
  if (plan.c) cublasLtMatrixLayoutDestroy(plan.c);
  if (plan.desc) cublasLtMatmulDescDestroy(plan.desc);
  plan = Plan{};
}

const CublasLtMatmul::Plan& CublasLtMatmul::plan(const Key& key) {
  if (auto found = plans_.find(key); found != plans_.end()) return found->second;
  // Prefill sees a new m per prompt length; keep the cache from growing
  // without bound over a long run (a plan costs one heuristic query to redo).
  if (plans_.size() >= 4096) {
    for (auto& [k, p] : plans_) destroy(p);
    plans_.clear();
  }
  Plan plan;
  cublasLtMatmulPreference_t preference = nullptr;
  try {
    const cudaDataType_t operand = cuda_type(key.dtype);
    // F32 accumulation and scale for every operand type; no TF32.
    check(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
          "cublasLtMatmulDescCreate");
    const cublasOperation_t transpose = CUBLAS_OP_T, none = CUBLAS_OP_N;
    check(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                         sizeof transpose),
          "cublasLtMatmulDescSetAttribute(TRANSA)");
    check(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof none),
        "cublasLtMatmulDescSetAttribute(TRANSB)");
    // A: w's memory, column-major [k, n]; B: x's, [k, m]; C = D: out's, [n, m].
    check(cublasLtMatrixLayoutCreate(&plan.a, operand, uint64_t(key.k), uint64_t(key.n), key.ldw),
          "cublasLtMatrixLayoutCreate(w)");
    check(cublasLtMatrixLayoutCreate(&plan.b, operand, uint64_t(key.k), uint64_t(key.m), key.ldx),
          "cublasLtMatrixLayoutCreate(x)");
    check(cublasLtMatrixLayoutCreate(&plan.c, cuda_type(key.out_dtype), uint64_t(key.n),
                                     uint64_t(key.m), key.ldo),
          "cublasLtMatrixLayoutCreate(out)");

    check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
    const uint64_t workspace = kWorkspaceBytes;
    check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &workspace, sizeof workspace),
          "cublasLtMatmulPreferenceSetAttribute(workspace)");
    // Only algorithms that work at the operands' actual alignment.
    const struct {
      cublasLtMatmulPreferenceAttributes_t attribute;
      uint32_t bytes;
    } alignments[] = {{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_w},
                      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_x},
                      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_out},
                      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_out}};
    for (const auto& [attribute, bytes] : alignments)
      check(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &bytes, sizeof bytes),
            "cublasLtMatmulPreferenceSetAttribute(alignment)");

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    check(cublasLtMatmulAlgoGetHeuristic(handle_, plan.desc, plan.a, plan.b, plan.c, plan.c,
                                         preference, 1, &result, &found),
          "cublasLtMatmulAlgoGetHeuristic");
    if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS)
      throw std::runtime_error(fmt::format(
          "cuBLASLt has no algorithm for out[{}, {}] = x[{}, {}] · w[{}, {}]ᵀ with {} operands "
          "and {} output (leading dimensions x {}, w {}, out {}; alignment x {}, w {}, out {} "
          "bytes)",
          key.m, key.n, key.m, key.k, key.n, key.k, dtype_name(key.dtype),
          dtype_name(key.out_dtype), key.ldx, key.ldw, key.ldo, key.align_x, key.align_w,
          key.align_out));
    plan.algo = result.algo;
    cublasLtMatmulPreferenceDestroy(preference);
  } catch (...) {
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    destroy(plan);
    throw;
  }
  return plans_.emplace(key, plan).first->second;
}

void CublasLtMatmul::run(const void* x, int64_t ldx, const void* w, int64_t ldw, DType dtype,
                         int64_t m, int64_t n, int64_t k, void* out, DType out_dtype, int64_t ldo,
                         bool accumulate) {
  if (out_dtype != DType::F32 && !(out_dtype == DType::BF16 && dtype == DType::BF16))
    throw std::logic_error(fmt::format("cuBLASLt matmul: {} output of {} operands",
                                       dtype_name(out_dtype), dtype_name(dtype)));
  const Key key{.m = m,
                .n = n,
                .k = k,
                .ldx = ldx,
                .ldw = ldw,
                .ldo = ldo,
                .dtype = dtype,
                .out_dtype = out_dtype,
                .accumulate = accumulate,
                .align_x = alignment_of(x),
                .align_w = alignment_of(w),
                .align_out = alignment_of(out)};
  const Plan& p = plan(key);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, out, p.c, out, p.c, &p.algo,
                       workspace_.get(), kWorkspaceBytes, stream_),
        "cublasLtMatmul");
}

}  // namespace shardlm::cuda
