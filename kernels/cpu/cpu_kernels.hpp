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

// Memory for arrays the kernels stream from DRAM (weights, the KV cache):
// 64-byte aligned, and from 2 MiB up on a 2 MiB boundary with transparent huge
// pages requested before any page is touched. With 4 KiB pages a stream
// crosses a page, and in a virtual machine a two-level page walk, every 64
// lines (perf/results/huge-pages-xeon.md). Free with std::free;
// SHARDLM_HUGE_PAGES=0 asks for ordinary pages, to compare.
void* allocate_streamed(size_t bytes);

// A weight matrix [n, k] row-major as stored: `data` holds dtype values and,
// for I8, `scales` one F32 per row (value = q * scales[row]).
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  const float* scales = nullptr;
  int64_t n = 0, k = 0;
};

// Rows of x up to which matmul takes the streaming path; above it the panel
// path (oneDNN) is faster. The crossover depends on the machine: `shardlm
// calibrate` measures it (measure_streaming_max_rows) and writes it to the
// hardware spec (cpu_streaming_max_rows), which generate and bench apply with
// set_streaming_max_rows. kDefaultStreamingMaxRows is what calibrate found on
// the development machines, for runs without a spec: streaming was faster at
// every count it tries, 8 to 256 rows, on 2-core AVX-512 EPYCs and, with the
// portable kernels' strips, on a 2-core AVX2 EPYC (Zen 3).
constexpr int64_t kDefaultStreamingMaxRows = 256;
int64_t streaming_max_rows();
// I8 weights stream up to 16 rows at most: their integer path rounds each row
// of x to int16 (per rank, under tensor parallelism), which prefill of a
// prompt should not see; beyond 16 rows the panel path multiplies in F32.
constexpr int64_t kI8StreamingMaxRows = 16;
void set_streaming_max_rows(int64_t rows);  // rows >= 1
// How the streaming kernel reads the weights for up to 8 rows of x (decode):
// in address order (true: a row at a time for up to 3 rows, pairs of BF16
// rows for 4 to 8), or 6 rows side by side. The default depends on the CPU
// (cpu_kernels.cpp says why); SHARDLM_DECODE_ORDER=rows|tiles overrides it
// for the process.
bool decode_reads_rows_in_order();
void set_decode_reads_rows_in_order(bool rows);
// The same crossover for BF16 weights where AMX takes the rows above it
// (amx_fits): the AMX kernel overtakes streaming at far fewer rows. calibrate
// measures it too (cpu_amx_streaming_max_rows); the default is what it found
// on a 2-core Xeon guest with AMX (streaming faster up to 4 rows).
constexpr int64_t kDefaultAmxStreamingMaxRows = 4;
int64_t amx_streaming_max_rows();
void set_amx_streaming_max_rows(int64_t rows);  // rows >= 1

// out[m, n] (ldo) = x[m, k] (ldx) · wᵀ, plus the old out when accumulate.
void matmul_streaming(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                      int64_t ldo, bool accumulate);
void matmul_panel(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                  int64_t ldo, bool accumulate);
// BF16 and int8 weights on AMX tiles (amx_matmul.cpp), for any row count: x
// is split into two BF16 parts, so the products are as exact as the
// streaming kernel's; int8 blocks are widened to BF16 (exact) and their sums
// scaled. amx_fits says whether w can take it: BF16 or int8 with scales, k a
// multiple of 32, at least 32 rows, and a CPU and kernel that grant AMX
// (weight rows past the last multiple of 32 stream, int8 ones take the panel).
bool amx_available();
bool amx_fits(const WeightView& w);
void matmul_amx(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                int64_t ldo, bool accumulate);
// BF16 x with BF16 weights (BF16 activations) where the CPU has AVX512-BF16:
// vdpbf16ps multiplies pairs of BF16 values exactly and sums them in F32, two
// products per lane and instruction against one for the widened F32 path, and
// neither x nor the weights are widened. Weight rows are streamed in address
// order, each against every row of x. Denormal BF16 inputs count as zero (the
// instruction's rule): a change below 2^-126 per product.
bool bf16_dot_available();
void matmul_bf16_dot(const uint16_t* x, int64_t m, int64_t ldx, const WeightView& w, float* out,
                     int64_t ldo, bool accumulate);
// Whether BF16 activations of m rows take matmul_bf16_dot (else x is widened
// and the F32 paths run): where it measured faster, 1-3 rows and 16-64.
constexpr int64_t kBf16DotMaxRows = 64;
bool bf16_dot_suits(int64_t m);
// Chooses the path by m: streaming up to the crossover, above it AMX where it
// fits, else the panel path.
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

// Attention, tiled with an online softmax (flash attention): a block of up to
// kAttentionBlockRows query rows meets the keys kAttentionBlockKeys at a
// time; each block's scores Q·Kᵀ and weighted sum P·V are sgemm calls, and a
// running maximum, sum and unnormalised output per row carry the softmax
// across key blocks. No score matrix over the whole context is ever held, so
// memory stays independent of the context length, and a range of keys can
// be done apart and merged (flash-decoding splits long contexts over threads).
constexpr int64_t kAttentionBlockRows = 64;
constexpr int64_t kAttentionBlockKeys = 256;

// One KV head's cache of one sequence: K and V rows at positions 0, 1, ...,
// each head_dim values of `dtype` (F32, BF16 or F16).
struct KVView {
  const void* k = nullptr;
  const void* v = nullptr;
  DType dtype = DType::F32;
  int64_t head_dim = 0;
  float scale = 1.0f;  // applied to Q·K before the softmax
};

// Query rows (row stride ldq): row i is at position first_pos + i * pos_step,
// so pos_step 1 is a run of a sequence's tokens (causal) and pos_step 0 the
// query heads of one token that share a KV head (decode). A row at position
// p sees the keys up to p, and with window > 0 no further back than p - window + 1.
struct AttentionQuery {
  const float* q = nullptr;
  int64_t ldq = 0, rows = 0, first_pos = 0, pos_step = 1, window = 0;
};

// Online-softmax state of query rows: acc [rows, ld] = sum over the keys seen
// of exp(score - max) · value, and per row that max and the sum of exp(score - max).
struct AttentionState {
  float* acc = nullptr;
  int64_t ld = 0;
  float* max = nullptr;
  float* sum = nullptr;
};

// Floats of scratch attention_partial needs for `rows` query rows.
int64_t attention_scratch(int64_t rows, int64_t head_dim);
void attention_state_init(const AttentionState& st, int64_t rows, int64_t head_dim);
// Adds the keys in [key_begin, key_end) that each row sees to its state
// (single-threaded: callers run heads, sequences or key ranges in parallel).
void attention_partial(const AttentionQuery& q, const KVView& kv, int64_t key_begin,
                       int64_t key_end, const AttentionState& st, float* scratch);
// into <- the state of both key sets (disjoint key ranges of the same rows).
void attention_merge(const AttentionState& into, const AttentionState& from, int64_t rows,
                     int64_t head_dim);
// out rows (stride ldo) <- acc / sum.
void attention_finish(const AttentionState& st, int64_t rows, int64_t head_dim, float* out,
                      int64_t ldo);
// Decode rows (pos_step 0: one token's query heads over their KV head) on AMX
// tiles (amx_attention.cpp): the keys [lo, hi), which every row sees, added
// to the state. attention_partial takes it where amx_attention_fits: a BF16
// cache, head_dim a multiple of 32 up to 128, a CPU with AMX.
bool amx_attention_fits(const KVView& kv);
// Whether attention_partial on one token's `rows` query heads (pos_step 0)
// rounds Q and P to BF16 for this cache: the AMX kernel does, and the vector
// kernel does over a BF16 cache with head_dim a multiple of 32 where the CPU
// has AVX512-BF16. Either moves a score by at most 2^-8 scale sum_d |q_d k_d|
// and an output by at most 2^-8 sum_j p_j |v_jd|, the cache's own rounding.
bool decode_attention_rounds(const KVView& kv, int64_t rows);
void attention_decode_amx(const AttentionQuery& q, const KVView& kv, int64_t lo, int64_t hi,
                          const AttentionState& st);
// The whole attention of the rows over every key they see, into out (stride
// ldo); scratch holds attention_rows_scratch floats.
int64_t attention_rows_scratch(int64_t rows, int64_t head_dim);
void attention_rows(const AttentionQuery& q, const KVView& kv, float* out, int64_t ldo,
                    float* scratch);

}  // namespace shardlm::cpu
