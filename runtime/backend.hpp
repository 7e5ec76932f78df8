#pragma once
// Backend: memory and compute kernels of one device kind. The engine is
// written against this interface only, so CPU and CUDA plug in alike. No
// communication happens here (that is collectives/).
//
// Activations are F32 [tokens, features] row-major. Weights are whatever the
// backend chose in upload_weight; a linear weight is [out, in] as Hugging Face
// stores it, so matmul computes out = x · wᵀ.
#include <cstdint>
#include <memory>
#include <string>

#include "runtime/batch.hpp"
#include "runtime/tensor.hpp"

namespace shardlm {

// One layer's KV cache: K and V each [slots, kv_heads, capacity, head_dim].
struct KVCacheLayer {
  Tensor k;
  Tensor v;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string describe() const = 0;  // e.g. "cpu (oneDNN sgemm, 2 threads)"

  virtual Tensor alloc(const Shape& shape, DType dtype) = 0;  // contents undefined
  virtual Tensor zeros(const Shape& shape, DType dtype) = 0;
  // A weight read from host memory holding `src_dtype` values; the backend
  // stores it in the format its kernels want.
  virtual Tensor upload_weight(const void* host, DType src_dtype, const Shape& shape) = 0;
  virtual void copy_from_host(const float* src, const Tensor& dst) = 0;  // dst F32
  virtual void copy_to_host(const Tensor& src, float* dst) = 0;          // src F32

  // out[t] = table[ids[t]]
  virtual void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) = 0;
  // out = x / rms(x) * weight, per row
  virtual void rmsnorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) = 0;
  // out = x · wᵀ (+ out when accumulate)
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) = 0;
  // Rotates each head_dim-wide head of x [tokens, heads*head_dim] in place by
  // the angles of its token's position; cos/sin tables are [positions, head_dim/2].
  virtual void rope(const Tensor& x, int head_dim, const int32_t* positions, const Tensor& cos,
                    const Tensor& sin) = 0;
  // out = silu(gate) * up
  virtual void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // inout += x
  virtual void add(const Tensor& x, const Tensor& inout) = 0;
  // Writes the batch's new k, v [tokens, kv_heads*head_dim] into the cache at
  // their positions, then causal attention of q [tokens, heads*head_dim] over
  // each sequence's cache; query head h reads kv head h / (heads / kv_heads).
  virtual void attention(const Tensor& q, const Tensor& k, const Tensor& v,
                         const KVCacheLayer& cache, const BatchLayout& batch, int head_dim,
                         const Tensor& out) = 0;
};

// The CPU backend; `threads` <= 0 means all the cores this process may use.
std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace shardlm
