#pragma once
// Backend: memory and compute kernels of one device kind. The engine is
// written against this interface only, so CPU and CUDA plug in alike. No
// communication happens here (that is collectives/).
//
// Activations are [tokens, features] row-major, of the backend's
// activation_dtype(): F32, or BF16 (half the bytes in memory and in every
// collective; each operation computes in F32 and rounds what it writes).
// Sums of squares and logits are F32 whatever the activations. Weights are whatever the
// backend chose in upload_weight (F32, BF16, F16, or I8 with per-row scales,
// see Tensor::scales); a linear weight is [out, in] as Hugging Face stores
// it, so matmul computes out = x · wᵀ.
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/batch.hpp"
#include "runtime/sampler.hpp"
#include "runtime/tensor.hpp"

namespace shardlm {

// One layer's KV cache: K and V each [slots, kv_heads, capacity, head_dim],
// of the backend's kv_dtype() (F32 activations are rounded to it on write).
struct KVCacheLayer {
  Tensor k;
  Tensor v;
};

// How a rank's attention runs. Which heads it holds: local query head j is
// global head q_offset + j and reads global KV head (q_offset + j) / group,
// which is local KV head (q_offset + j) / group - kv_offset of the cache.
struct AttentionHeads {
  int head_dim = 0;
  int q_offset = 0;
  int kv_offset = 0;
  int group = 1;   // query heads per KV head in the whole model
  int window = 0;  // > 0: a query sees only the `window` latest positions, its own included
};

// A rectangle of a row-major matrix; a 1-D tensor is one row.
struct Block2D {
  int64_t row_begin = 0, rows = 0, col_begin = 0, cols = 0;
};

// Device memory a backend holds, by purpose, in bytes.
struct MemoryUsage {
  int64_t weights = 0;           // upload_weight
  int64_t kv_cache = 0;          // alloc_kv_cache
  int64_t activations_peak = 0;  // high-water mark of alloc/zeros still held
  int64_t workspace = 0;         // fixed scratch of the kernels (matmul workspace, staging)
};

// What a backend does with a decode step the engine offers as a graph
// (Backend::begin_step_graph): run it as usual, run it as usual while
// recording what it allocates and stages (the first step of a shape),
// capture it into a graph (the second), or replay that graph.
enum class StepGraphMode { kEager, kMeasure, kCapture, kReplay };

// A step offered as a graph could not be captured or replayed: none of its
// work has run, and the engine runs it again eagerly.
struct StepGraphAbandoned : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string describe() const = 0;  // e.g. "cpu (oneDNN sgemm, 2 threads)"
  // The dtype the engine allocates KV caches in.
  virtual DType kv_dtype() const { return DType::F32; }
  // The dtype the engine allocates activations in (F32 or BF16).
  virtual DType activation_dtype() const { return DType::F32; }

  virtual Tensor alloc(const Shape& shape, DType dtype) = 0;  // contents undefined
  // One layer's K or V cache, of kv_dtype(): alloc, counted as KV cache.
  virtual Tensor alloc_kv_cache(const Shape& shape) { return alloc(shape, kv_dtype()); }
  // What this backend holds now (zeros where it does not count).
  virtual MemoryUsage memory_usage() const { return {}; }
  virtual Tensor zeros(const Shape& shape, DType dtype) = 0;
  // The `block` of a weight of `full_shape` read from host memory holding
  // `src_dtype` values; the backend stores it in the format its kernels want,
  // with shape [block.rows, block.cols] (or [block.cols] for a 1-D weight).
  virtual Tensor upload_weight(const void* host, DType src_dtype, const Shape& full_shape,
                               const Block2D& block) = 0;
  // Host floats to and from a tensor of F32 or a 16-bit float dtype
  // (rounded on the way in, widened exactly on the way out).
  virtual void copy_from_host(const float* src, const Tensor& dst) = 0;
  virtual void copy_to_host(const Tensor& src, float* dst) = 0;
  // dst[dst_row + i, dst_col + j] = src[src_row + i, src_col + j] for a
  // rows x cols rectangle of two matrices (2-D tensors) of one dtype. The
  // values are copied as they are stored: I8 scales are not copied.
  virtual void copy_2d(const Tensor& src, int64_t src_row, int64_t src_col, const Tensor& dst,
                       int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) = 0;

  // out[t] = table[ids[t]] (out of the activation dtype, table of any
  // weight dtype or of the activation dtype)
  virtual void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) = 0;
  // sums[r] = sum of x[r, :]^2
  virtual void row_sum_squares(const Tensor& x, const Tensor& sums) = 0;
  // inout += x, then sums[r] = sum of inout[r, :]^2 of the new values: the
  // residual add and the next RMSNorm's first pass. The default runs add then
  // row_sum_squares; a device backend fuses them into one pass over the rows.
  virtual void add_and_sum_squares(const Tensor& x, const Tensor& inout, const Tensor& sums);
  // out = x * rsqrt(sums / width + eps) * weight, per row; width is the full
  // row length when x holds only a slice of each row.
  virtual void rmsnorm_scale(const Tensor& x, const Tensor& sums, int64_t width,
                             const Tensor& weight, float eps, const Tensor& out) = 0;
  // out = x · wᵀ (+ out when accumulate); x of the activation dtype, out of
  // it or F32 (logits).
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) = 0;
  // Rotates each head_dim-wide head of x [tokens, heads*head_dim] in place by
  // the angles of its token's position; cos/sin tables are [positions, head_dim/2].
  virtual void rope(const Tensor& x, int head_dim, const int32_t* positions, const Tensor& cos,
                    const Tensor& sin) = 0;
  // out = silu(gate) * up
  virtual void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // inout += x
  virtual void add(const Tensor& x, const Tensor& inout) = 0;
  // inout[r, :] += bias for every row r (bias F32 [cols])
  virtual void add_bias(const Tensor& bias, const Tensor& inout) = 0;
  // Writes the batch's new k, v [tokens, cache kv_heads * head_dim] into the
  // cache at each token's slot and position.
  virtual void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache,
                        const BatchLayout& batch) = 0;
  // Causal attention of q [tokens, heads * head_dim] over each sequence's
  // cached keys and values up to the token's position (and no further back
  // than heads.window positions, when set).
  virtual void attention(const Tensor& q, const KVCacheLayer& cache, const BatchLayout& batch,
                         const AttentionHeads& heads, const Tensor& out) = 0;

  // ids[r] (host) <- the token row r of logits [rows, vocab] (F32) samples
  // by `params` with the uniform draw uniforms[r] in [0, 1) (unused when
  // greedy): sample_token_from_draw of each row. A device backend samples
  // where the logits are, so only the ids travel.
  virtual void sample(const Tensor& logits, const SamplingParams& params, const double* uniforms,
                      int32_t* ids);

  // Decode steps as graphs (docs/cuda_backend.md, "Decode steps as CUDA
  // graphs"). The engine brackets the part of a step from the embedding to
  // the logits with begin_step_graph(key) and launch_step_graph(); `key`
  // names the step's shape (steps of one key issue the same operations on
  // the same shapes, only the host arrays they bring differ). A backend that
  // supports graphs measures the first step of a key, captures the second and
  // replays the rest: while replaying, operations only stage their host
  // arrays and check that they are the ones captured (else they throw
  // StepGraphAbandoned), and replaying_step() tells the collectives to stay
  // away (the graph holds them). launch_step_graph() runs what the step
  // queued (launching the graph); after it everything runs as usual until
  // the next begin. abandon_step_graph() drops the key's graph after an
  // error (ending a capture in progress); drop_step_graphs() all of them.
  // The defaults run every step eagerly.
  virtual StepGraphMode begin_step_graph(const std::vector<int64_t>& /*key*/) {
    return StepGraphMode::kEager;
  }
  virtual void launch_step_graph() {}
  // `for_good`: the key's steps stay eager (it cannot be captured);
  // otherwise the key starts over (measured again).
  virtual void abandon_step_graph(const std::string& /*why*/, bool /*for_good*/) {}
  virtual bool replaying_step() const { return false; }
  virtual void drop_step_graphs() {}
  // Why the last step offered ran eagerly, when it did ("" when none did).
  virtual std::string step_graph_note() const { return {}; }

  // RMSNorm of whole rows: row_sum_squares then rmsnorm_scale.
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out);
};

struct CpuBackendOptions {
  int threads = 0;  // <= 0: all the cores this process may use
  // How upload_weight stores 2-D weights: F32, BF16, F16 or I8 (weight-only,
  // per-output-channel scales). nullopt keeps each checkpoint tensor's own
  // dtype. 1-D weights (norms) always stay F32.
  std::optional<DType> weight_dtype;
  // The KV cache: F32, or BF16 / F16 (half the bytes; docs/cpu_backend.md
  // states the logits bound against F32).
  DType kv_dtype = DType::BF16;
  // Activations: F32, or BF16 (stored rounded; each operation computes in
  // F32, as a BF16-activation GPU does, and halves what collectives move).
  DType activation_dtype = DType::F32;
  // Rows of x up to which matmul streams the weights (> 0: sets
  // cpu::set_streaming_max_rows for the process; 0 keeps what it is).
  int64_t streaming_max_rows = 0;
  // The same for BF16 weights on a CPU with AMX (cpu::set_amx_streaming_max_rows).
  int64_t amx_streaming_max_rows = 0;
};

// The CPU backend.
std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options);
// F32 weights and KV cache, `threads` as in CpuBackendOptions.
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace shardlm
