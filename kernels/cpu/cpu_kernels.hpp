#pragma once
// The CPU backend's matmul kernels, out = x · wᵀ (+ out), for weights stored
// as F32, BF16, F16 or I8 with per-row scales. Declared here, apart from the
// Backend class, so the unit tests can run each path on its own against a
// plain reference (tests/unit/test_cpu_kernels.cpp).
//
// Two paths:
// - streaming (few rows of x, decode): each weight row is read from memory
//   once, widened to F32 in registers and multiplied with every row of x;
//   OpenMP splits the weight rows over the threads, so the cores stream
//   disjoint parts of the weight at the memory's pace.
// - panel (many rows, prefill): blocks of weight rows are widened to an F32
//   panel that stays in cache, then oneDNN's sgemm multiplies it; the
//   widening costs one pass over the weight per call, small beside the
//   2·M FLOP per weight of the GEMM.
#include <cstdint>

#include "runtime/dtype.hpp"

namespace shardlm::cpu {

// A weight matrix [n, k] row-major as stored: `data` holds dtype values and,
// for I8, `scales` one F32 per row (value = q * scales[row]).
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  const float* scales = nullptr;
  int64_t n = 0, k = 0;
};

// Rows of x up to which matmul takes the streaming path; above it the panel
// path (oneDNN) is faster because each weight is reused across many rows.
constexpr int64_t kStreamingMaxRows = 16;

// out[m, n] (ldo) = x[m, k] (ldx) · wᵀ, plus the old out when accumulate.
void matmul_streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                      int64_t ldo, bool accumulate);
void matmul_panel(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                  int64_t ldo, bool accumulate);
// Chooses the path by m.
void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out, int64_t ldo,
            bool accumulate);

// Rows [row_begin, row_begin + rows) of w widened to F32 (scales applied), [rows, k].
void widen_rows(const WeightView& w, int64_t row_begin, int64_t rows, float* dst);

// x[i] = exp(x[i]) for n floats, vectorised (relative error below 1e-6);
// inputs above 88.72 give the largest float instead of inf, below -87.33 give
// about 1e-38 (softmax and silu never need more).
void exp_inplace(float* x, int64_t n);
// out[i] = silu(gate[i]) * up[i] (out may alias gate or up).
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// Causal attention of one head over one sequence: `tokens` queries at
// positions first_pos .. first_pos + tokens - 1 (row stride ldq, also the
// stride of out), keys and values at positions 0 .. first_pos + tokens - 1
// (row stride head_dim, as the KV cache holds them). With window > 0 the
// query at position p sees only keys p - window + 1 .. p. Scores and weights are
// computed a block of queries at a time with sgemm (single-threaded: the
// caller runs heads in parallel); `scratch` holds block_rows * (first_pos +
// tokens) floats, see attention_scratch.
constexpr int64_t kAttentionBlockRows = 64;
int64_t attention_scratch(int64_t tokens, int64_t first_pos);
// Decode attention of the `heads` query heads (contiguous in q and out, each
// head_dim wide) that share one KV head, for one new token that sees `keys`
// cached positions: each key and value row is read once for all of them.
// `scratch` holds heads * keys floats.
void attention_decode_group(const float* q, int64_t heads, int64_t keys, const float* k,
                            const float* v, int64_t head_dim, float scale, float* out,
                            float* scratch);
void attention_head(const float* q, int64_t ldq, int64_t tokens, int64_t first_pos, const float* k,
                    const float* v, int64_t head_dim, float scale, int64_t window, float* out,
                    float* scratch);

}  // namespace shardlm::cpu
