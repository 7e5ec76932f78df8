// The CUDA backend (cuda_backend.hpp): one device, one non-blocking stream
// that every kernel, copy and allocation is queued on, so the host syncs only
// where a result comes back (copy_to_host, sample). Its parts:
//   device_memory   the stream-ordered pool and the accounting by purpose
//   host_staging    host arrays (ids, positions, batches) to the device
//   cublaslt_matmul matmuls on the tensor cores, plans cached per shape
//   int8_matmul     int8 weight-only GEMV and dequantisation
//   elementwise     the row-wise and element-wise kernels
//   attention.cuh, sampling.cuh  KV-cache writes, attention and sampling
// This file checks shapes and dtypes, stages what comes from the host and
// calls them.
#include "kernels/cuda/cuda_backend.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <stdexcept>
#include <vector>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cublaslt_matmul.hpp"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/cuda/device_memory.hpp"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/host_staging.hpp"
#include "kernels/cuda/int8_matmul.cuh"
#include "kernels/cuda/sampling.cuh"
#include "kernels/cuda/step_graph.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

using cuda::check;
using cuda::MemoryPurpose;
using cuda::sig;
using StepOp = cuda::StepGraphs::Op;

void require(bool ok, const char* what) {
  if (!ok) throw std::logic_error(fmt::format("cuda backend: {}", what));
}

void require_f32(const Tensor& t, const char* what) {
  require(t.dtype() == DType::F32 && t.device() == Device::CUDA, what);
}

// An activation: F32 or BF16 on the device. The kernels take the tensor's
// own dtype, so F32 tensors work on a BF16-activation backend too (tests).
void require_activation(const Tensor& t, const char* what) {
  require((t.dtype() == DType::F32 || t.dtype() == DType::BF16) && t.device() == Device::CUDA,
          what);
}

// Operands of one element-wise operation share one activation dtype.
void require_alike(const Tensor& a, const Tensor& b, const char* what) {
  require_activation(a, what);
  require(b.dtype() == a.dtype() && b.device() == Device::CUDA, what);
}

bool is_weight_dtype(DType dtype) {
  return dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16 || dtype == DType::I8;
}

int choose_device(const CudaBackendOptions& options) {
  const int count = cuda_device_count();
  if (count == 0)
    throw UsageError("cuda backend: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES)");
  if (options.device >= count)
    throw UsageError(
        fmt::format("cuda backend: device {} asked for, but {} visible", options.device, count));
  return options.device >= 0 ? options.device : std::max(options.local_rank, 0) % count;
}

// The row length of a tensor as copy_2d sees it: its last dimension (a 1-D
// tensor is one row).
int64_t row_width(const Tensor& t) {
  return t.rank() == 0 ? 1 : t.dim(t.rank() - 1);
}

// Bytes of the matmul's transient buffers for I8 weights with many rows:
// dequantised BF16 panels of about this size, one at a time.
constexpr int64_t kDequantizedPanelBytes = int64_t(64) << 20;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& options) : options_(options) {
    if (options.kv_dtype != DType::F32 && options.kv_dtype != DType::BF16 &&
        options.kv_dtype != DType::F16)
      throw UsageError("cuda backend: the KV cache must be f32, bf16 or f16");
    if (options.weight_dtype && !is_weight_dtype(*options.weight_dtype))
      throw UsageError("cuda backend: weights must be f32, bf16, f16 or int8");
    if (options.activation_dtype != DType::F32 && options.activation_dtype != DType::BF16)
      throw UsageError("cuda backend: activations must be f32 or bf16");
    const int device = choose_device(options);
    memory_ = cuda::DeviceMemory::create(device, options.memory_limit);
    cudaDeviceProp properties{};
    check(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
    device_name_ = properties.name;
    sm_ = properties.major * 10 + properties.minor;
    blas_ = std::make_unique<cuda::CublasLtMatmul>(*memory_);
    staging_ = std::make_unique<cuda::HostStaging>(memory_);
    graphs_ = std::make_unique<cuda::StepGraphs>(*memory_);
    memory_->set_step_graphs(graphs_.get());
    staging_->set_step_graphs(graphs_.get());
  }

  ~CudaBackend() override {
    // The memory may outlive the backend (tensors keep it): it must not ask
    // the step graphs, which go with the backend.
    memory_->set_step_graphs(nullptr);
    staging_->set_step_graphs(nullptr);
    graphs_.reset();
    // Work still queued may read what this object owns (the staging slots,
    // the cuBLASLt workspace): let it finish first.
    cudaStreamSynchronize(stream());
  }

  cudaStream_t stream() const { return memory_->stream(); }

  Device device() const override { return Device::CUDA; }
  DType kv_dtype() const override { return options_.kv_dtype; }
  DType activation_dtype() const override { return options_.activation_dtype; }

  std::string describe() const override {
    return fmt::format("cuda ({}, sm_{}, cuBLASLt {}, {} weights, {} KV cache, {} activations)",
                       device_name_, sm_, cuda::CublasLtMatmul::version(),
                       options_.weight_dtype ? weight_dtype_name(*options_.weight_dtype)
                                             : std::string_view("checkpoint-dtype (f32 as bf16)"),
                       weight_dtype_name(options_.kv_dtype),
                       weight_dtype_name(options_.activation_dtype));
  }

  MemoryUsage memory_usage() const override { return memory_->usage(); }

  Tensor alloc(const Shape& shape, DType dtype) override {
    return allocate(shape, dtype, MemoryPurpose::kActivations);
  }

  Tensor zeros(const Shape& shape, DType dtype) override {
    Tensor t = alloc(shape, dtype);
    const StepOp op(*graphs_, "zeros", {sig(t.raw()), t.nbytes()});
    if (op.skip()) return t;
    check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()), "cudaMemsetAsync");
    return t;
  }

  Tensor alloc_kv_cache(const Shape& shape) override {
    Tensor t = allocate(shape, options_.kv_dtype, MemoryPurpose::kKVCache);
    // Zeroed once: positions not yet written hold 0, not stray NaNs that a
    // kernel reading whole tiles could multiply by a zero weight.
    check(cudaMemsetAsync(t.raw(), 0, t.nbytes(), stream()), "cudaMemsetAsync (KV cache)");
    return t;
  }

  Tensor upload_weight(const void* host, DType src_dtype, const Shape& full_shape,
                       const Block2D& block) override {
    // Norm weights (1-D) stay F32; F32 matrices go to BF16 unless asked.
    const DType storage =
        full_shape.size() == 1
            ? DType::F32
            : options_.weight_dtype.value_or(src_dtype == DType::F32 ? DType::BF16 : src_dtype);
    // The CPU backend converts (and quantises) the block on the host exactly
    // as it stores weights itself; the result goes up in one copy, so both
    // backends hold the same values.
    const Tensor staged = host_converter(storage).upload_weight(host, src_dtype, full_shape, block);
    Tensor weight = copy_up(staged);
    if (staged.scales()) weight = weight.with_scales(copy_up(*staged.scales()));
    // The host copies are freed on return.
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (upload_weight)");
    return weight;
  }

  void copy_from_host(const float* src, const Tensor& dst) override {
    require_activation(dst, "copy_from_host wants an F32 or BF16 device destination");
    // Host floats go up as they are; a BF16 destination is rounded on the device.
    const Tensor wide = dst.dtype() == DType::F32 ? dst : alloc(dst.shape(), DType::F32);
    staging_->copy_to_device(src, wide.raw(), wide.nbytes());
    const StepOp op(*graphs_, "copy_from_host", {sig(wide.raw()), sig(dst.raw()), dst.nbytes()});
    if (op.skip() || wide.raw() == dst.raw()) return;
    cuda::convert(wide.raw(), DType::F32, dst.raw(), dst.dtype(), dst.numel(), stream());
  }

  void copy_to_host(const Tensor& src, float* dst) override {
    require_activation(src, "copy_to_host wants an F32 or BF16 device source");
    graphs_->launch();  // a step's graph runs before its results are read
    const Tensor wide = converted(src, DType::F32);
    check(cudaMemcpyAsync(dst, wide.raw(), wide.nbytes(), cudaMemcpyDeviceToHost, stream()),
          "cudaMemcpyAsync (device to host)");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (copy_to_host)");
  }

  void copy_2d(const Tensor& src, int64_t src_row, int64_t src_col, const Tensor& dst,
               int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) override {
    require(
        src.device() == Device::CUDA && dst.device() == Device::CUDA && src.dtype() == dst.dtype(),
        "copy_2d wants two device tensors of one dtype");
    if (rows <= 0 || cols <= 0) return;
    const int64_t src_width = row_width(src), dst_width = row_width(dst);
    require(src_row >= 0 && src_col >= 0 && dst_row >= 0 && dst_col >= 0 &&
                src_col + cols <= src_width && dst_col + cols <= dst_width &&
                (src_row + rows) * src_width <= src.numel() &&
                (dst_row + rows) * dst_width <= dst.numel(),
            "copy_2d outside the matrix");
    const size_t elem = dtype_size(src.dtype());
    const char* from =
        static_cast<const char*>(src.raw()) + size_t(src_row * src_width + src_col) * elem;
    char* to = static_cast<char*>(dst.raw()) + size_t(dst_row * dst_width + dst_col) * elem;
    const StepOp op(*graphs_, "copy_2d",
                    {sig(from), sig(to), uint64_t(rows), uint64_t(cols), uint64_t(src_width),
                     uint64_t(dst_width), elem});
    if (op.skip()) return;
    check(cudaMemcpy2DAsync(to, size_t(dst_width) * elem, from, size_t(src_width) * elem,
                            size_t(cols) * elem, size_t(rows), cudaMemcpyDeviceToDevice, stream()),
          "cudaMemcpy2DAsync (copy_2d)");
  }

  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    require_activation(out, "embedding output must be F32 or BF16 on the device");
    require(table.device() == Device::CUDA && table.rank() == 2 && out.rank() == 2 &&
                table.dim(1) == out.dim(1),
            "embedding: the table's rows and the output's differ in width");
    require(table.dtype() != DType::I8 || table.scales(), "int8 tables need their scales");
    const int64_t tokens = out.dim(0), vocab = table.dim(0);
    if (tokens == 0) return;
    for (int64_t t = 0; t < tokens; ++t)
      if (ids[t] < 0 || ids[t] >= vocab)
        throw std::out_of_range(fmt::format(
            "cuda backend: embedding of token id {} outside the table's {} rows", ids[t], vocab));
    const auto* device_ids =
        static_cast<const int32_t*>(staging_->upload(ids, size_t(tokens) * sizeof(int32_t)));
    const StepOp op(
        *graphs_, "embedding",
        {sig(table.raw()), uint64_t(table.dtype()), sig(out.raw()), uint64_t(out.dtype()),
         uint64_t(tokens), uint64_t(out.dim(1)), sig(device_ids)});
    if (op.skip()) return;
    cuda::embedding(table.raw(), table.dtype(),
                    table.scales() ? table.scales()->data<float>() : nullptr, out.dim(1),
                    device_ids, tokens, out.raw(), out.dtype(), stream());
  }

  void row_sum_squares(const Tensor& x, const Tensor& sums) override {
    require_activation(x, "row_sum_squares input must be F32 or BF16");
    require_f32(sums, "row_sum_squares sums must be F32");
    require(sums.numel() == x.dim(0), "row_sum_squares: one sum per row");
    const StepOp op(*graphs_, "row_sum_squares",
                    {sig(x.raw()), uint64_t(x.dtype()), uint64_t(x.dim(0)), uint64_t(x.dim(1)),
                     sig(sums.raw())});
    if (op.skip()) return;
    cuda::row_sum_squares(x.raw(), x.dtype(), x.dim(0), x.dim(1), sums.data<float>(), stream());
  }

  void add_and_sum_squares(const Tensor& x, const Tensor& inout, const Tensor& sums) override {
    require_alike(x, inout, "add_and_sum_squares: input and residual of one dtype, F32 or BF16");
    require_f32(sums, "add_and_sum_squares sums must be F32");
    require(inout.rank() == 2 && x.numel() == inout.numel() && sums.numel() == inout.dim(0),
            "add_and_sum_squares: the shapes do not agree (one sum per row of the residual)");
    const StepOp op(*graphs_, "add_and_sum_squares",
                    {sig(x.raw()), sig(inout.raw()), uint64_t(x.dtype()), uint64_t(inout.dim(0)),
                     uint64_t(inout.dim(1)), sig(sums.raw())});
    if (op.skip()) return;
    cuda::add_and_sum_squares(x.raw(), inout.raw(), x.dtype(), inout.dim(0), inout.dim(1),
                              sums.data<float>(), stream());
  }

  void rmsnorm_scale(const Tensor& x, const Tensor& sums, int64_t full_width, const Tensor& weight,
                     float eps, const Tensor& out) override {
    require_alike(x, out, "rmsnorm input and output of one dtype, F32 or BF16");
    require_f32(sums, "rmsnorm sums must be F32");
    require_f32(weight, "rmsnorm weight must be F32");
    require(weight.numel() == x.dim(1) && out.numel() == x.numel() && sums.numel() == x.dim(0),
            "rmsnorm shapes do not agree");
    const StepOp op(
        *graphs_, "rmsnorm_scale",
        {sig(x.raw()), uint64_t(x.dtype()), sig(sums.raw()), uint64_t(x.dim(0)), uint64_t(x.dim(1)),
         uint64_t(full_width), sig(weight.raw()), std::bit_cast<uint32_t>(eps), sig(out.raw())});
    if (op.skip()) return;
    cuda::rmsnorm_scale(x.raw(), x.dtype(), sums.data<float>(), x.dim(0), x.dim(1), full_width,
                        weight.data<float>(), eps, out.raw(), stream());
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) override {
    require_activation(x, "matmul input must be F32 or BF16 on the device");
    require(out.device() == Device::CUDA && (out.dtype() == DType::F32 || out.dtype() == x.dtype()),
            "matmul output must be F32 or of the input's dtype on the device");
    require(w.device() == Device::CUDA && w.rank() == 2, "matmul weight must be 2-D on the device");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    require(w.dim(1) == k && out.dim(0) == m && out.dim(1) == n, "matmul shapes do not agree");
    if (m == 0 || n == 0) return;
    const StepOp op(
        *graphs_, "matmul",
        {sig(x.raw()), uint64_t(x.dtype()), sig(w.raw()), uint64_t(w.dtype()), sig(out.raw()),
         uint64_t(out.dtype()), uint64_t(m), uint64_t(k), uint64_t(n), uint64_t(accumulate)});
    if (op.skip()) return;
    if (k == 0) {
      if (!accumulate)
        check(cudaMemsetAsync(out.raw(), 0, out.nbytes(), stream()), "cudaMemsetAsync (matmul)");
      return;
    }
    switch (w.dtype()) {
      case DType::BF16:
      case DType::F16: {
        // The tensor cores take x in the weight's type (BF16 activations with
        // BF16 weights as they are) and write F32, or BF16 for BF16 operands.
        const Tensor input = converted(x, w.dtype());
        if (out.dtype() == DType::F32 || w.dtype() == DType::BF16)
          return blas_->run(input.raw(), k, w.raw(), k, w.dtype(), m, n, k, out.raw(), out.dtype(),
                            n, accumulate);
        const Tensor result = f32_result(out, accumulate);
        blas_->run(input.raw(), k, w.raw(), k, w.dtype(), m, n, k, result.raw(), DType::F32, n,
                   accumulate);
        return store_result(result, out);
      }
      case DType::F32: {
        const Tensor input = converted(x, DType::F32), result = f32_result(out, accumulate);
        blas_->run(input.raw(), k, w.raw(), k, DType::F32, m, n, k, result.raw(), DType::F32, n,
                   accumulate);
        return store_result(result, out);
      }
      case DType::I8: return matmul_int8(x, w, out, accumulate);
      default: throw std::logic_error("cuda backend: matmul weights must be F32, BF16, F16 or I8");
    }
  }

  void rope(const Tensor& x, int head_dim, const int32_t* positions, const Tensor& cos,
            const Tensor& sin) override {
    require_activation(x, "rope input must be F32 or BF16");
    require_f32(cos, "rope cos table must be F32");
    require_f32(sin, "rope sin table must be F32");
    require(head_dim > 0 && head_dim % 2 == 0 && x.dim(1) % head_dim == 0 &&
                cos.dim(1) == head_dim / 2 && sin.shape() == cos.shape(),
            "rope shapes do not agree");
    const int64_t tokens = x.dim(0);
    if (tokens == 0) return;
    for (int64_t t = 0; t < tokens; ++t)
      if (positions[t] < 0 || positions[t] >= cos.dim(0))
        throw std::out_of_range(
            fmt::format("cuda backend: rope position {} outside the table's {} rows", positions[t],
                        cos.dim(0)));
    const auto* device_positions =
        static_cast<const int32_t*>(staging_->upload(positions, size_t(tokens) * sizeof(int32_t)));
    const StepOp op(*graphs_, "rope",
                    {sig(x.raw()), uint64_t(x.dtype()), uint64_t(tokens), uint64_t(x.dim(1)),
                     uint64_t(head_dim), sig(device_positions), sig(cos.raw()), sig(sin.raw())});
    if (op.skip()) return;
    cuda::rope(x.raw(), x.dtype(), tokens, x.dim(1) / head_dim, head_dim, device_positions,
               cos.data<float>(), sin.data<float>(), stream());
  }

  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    require_alike(gate, up, "silu_mul: gate, up and output of one dtype, F32 or BF16");
    require_alike(gate, out, "silu_mul: gate, up and output of one dtype, F32 or BF16");
    require(up.numel() == gate.numel() && out.numel() == gate.numel(),
            "silu_mul sizes do not agree");
    const StepOp op(*graphs_, "silu_mul",
                    {sig(gate.raw()), sig(up.raw()), sig(out.raw()), uint64_t(gate.dtype()),
                     uint64_t(gate.numel())});
    if (op.skip()) return;
    cuda::silu_mul(gate.raw(), up.raw(), out.raw(), gate.dtype(), gate.numel(), stream());
  }

  void add(const Tensor& x, const Tensor& inout) override {
    require_alike(x, inout, "add: input and output of one dtype, F32 or BF16");
    require(x.numel() == inout.numel(), "add sizes do not agree");
    const StepOp op(*graphs_, "add",
                    {sig(x.raw()), sig(inout.raw()), uint64_t(x.dtype()), uint64_t(x.numel())});
    if (op.skip()) return;
    cuda::add(x.raw(), inout.raw(), x.dtype(), x.numel(), stream());
  }

  void add_bias(const Tensor& bias, const Tensor& inout) override {
    require_f32(bias, "bias must be F32");
    require_activation(inout, "add_bias output must be F32 or BF16");
    require(inout.rank() == 2 && inout.dim(1) == bias.numel(),
            "add_bias: bias width differs from the rows");
    const StepOp op(*graphs_, "add_bias",
                    {sig(bias.raw()), sig(inout.raw()), uint64_t(inout.dtype()),
                     uint64_t(inout.dim(0)), uint64_t(inout.dim(1))});
    if (op.skip()) return;
    cuda::add_bias(bias.data<float>(), inout.raw(), inout.dtype(), inout.dim(0), inout.dim(1),
                   stream());
  }

  void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache,
                const BatchLayout& batch) override {
    require_alike(k, v, "kv_write: k and v of one dtype, F32 or BF16");
    const cuda::DeviceBatch device = device_batch(batch, cache);
    if (device.tokens == 0) return;
    const StepOp op(*graphs_, "kv_write",
                    {sig(k.raw()), sig(v.raw()), uint64_t(k.dtype()), uint64_t(k.dim(1)),
                     sig(cache.k.raw()), sig(cache.v.raw()), sig(device.token_slot),
                     sig(device.token_pos), uint64_t(device.tokens)});
    if (op.skip()) return;
    cuda::kv_write(k, v, cache, device, stream());
  }

  void attention(const Tensor& q, const KVCacheLayer& cache, const BatchLayout& batch,
                 const AttentionHeads& heads, const Tensor& out) override {
    require_alike(q, out, "attention: query and output of one dtype, F32 or BF16");
    const cuda::DeviceBatch device = device_batch(batch, cache);
    if (device.tokens == 0) return;
    // The decode plan depends on the cache's capacity, not on the step's
    // positions (attention.cu), so a captured step holds for every position.
    const StepOp op(*graphs_, "attention",
                    {sig(q.raw()), uint64_t(q.dtype()), uint64_t(q.dim(1)), sig(cache.k.raw()),
                     sig(cache.v.raw()), uint64_t(cache.k.dim(2)), sig(device.token_slot),
                     sig(device.token_pos), uint64_t(device.tokens), uint64_t(device.decode),
                     uint64_t(heads.head_dim), uint64_t(heads.q_offset), uint64_t(heads.kv_offset),
                     uint64_t(heads.group), uint64_t(heads.window), sig(out.raw())});
    if (op.skip()) return;
    const size_t scratch_bytes = cuda::attention_scratch_bytes(q, cache, device, heads);
    const std::shared_ptr<void> scratch =
        scratch_bytes ? memory_->allocate(scratch_bytes, MemoryPurpose::kActivations) : nullptr;
    cuda::attention(q, cache, device, heads, out, scratch.get(), stream());
  }

  StepGraphMode begin_step_graph(const std::vector<int64_t>& key) override {
    return graphs_->begin(key);
  }
  void launch_step_graph() override { graphs_->launch(); }
  void abandon_step_graph(const std::string& why, bool for_good) override {
    graphs_->abandon(why, for_good);
  }
  std::string step_graph_note() const override { return graphs_->last_fallback(); }
  bool replaying_step() const override { return graphs_->replaying(); }
  void drop_step_graphs() override { graphs_->drop_all(); }

  void sample(const Tensor& logits, const SamplingParams& params, const double* uniforms,
              int32_t* ids) override {
    require_f32(logits, "sample wants F32 logits on the device");
    require(logits.rank() == 2, "sample wants logits [rows, vocab]");
    const int64_t rows = logits.dim(0), vocab = logits.dim(1);
    graphs_->launch();  // a step's graph runs before its logits are sampled
    if (rows == 0) return;
    // The draws are read on the device unless every row takes its best token
    // (sample_rows' greedy path): a missing array would fault there, killing
    // the context, instead of failing here.
    require(uniforms || params.temperature <= 0.f || params.top_k == 1,
            "sample: a draw per row is needed unless sampling is greedy");
    const auto* device_uniforms =
        uniforms
            ? static_cast<const double*>(staging_->upload(uniforms, size_t(rows) * sizeof(double)))
            : nullptr;
    const Tensor device_ids = alloc({rows}, DType::I32);
    const size_t scratch_bytes = cuda::sampling_scratch_bytes(rows, vocab);
    const std::shared_ptr<void> scratch =
        scratch_bytes ? memory_->allocate(scratch_bytes, MemoryPurpose::kActivations) : nullptr;
    cuda::sample_rows(logits.data<float>(), rows, vocab, params, device_uniforms,
                      device_ids.data<int32_t>(), scratch.get(), stream());
    check(cudaMemcpyAsync(ids, device_ids.raw(), size_t(rows) * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, stream()),
          "cudaMemcpyAsync (sampled ids)");
    check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (sample)");
  }

 private:
  Tensor allocate(const Shape& shape, DType dtype, MemoryPurpose purpose) {
    const size_t bytes = size_t(numel_of(shape)) * dtype_size(dtype);
    return Tensor(memory_->allocate(bytes, purpose), 0, shape, dtype, Device::CUDA);
  }

  // A weight's host block (from the CPU converter) on the device.
  Tensor copy_up(const Tensor& host) {
    Tensor t = allocate(host.shape(), host.dtype(), MemoryPurpose::kWeights);
    check(cudaMemcpyAsync(t.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice, stream()),
          "cudaMemcpyAsync (weights)");
    return t;
  }

  // The CPU backend storing weights as `storage`: the one place where
  // weights are converted and quantised.
  Backend& host_converter(DType storage) {
    std::unique_ptr<Backend>& converter = host_converters_.at(size_t(storage));
    if (!converter) converter = make_cpu_backend(CpuBackendOptions{0, storage, DType::F32});
    return *converter;
  }

  // x in `dtype` (F32, BF16 or F16): itself, or a converted transient copy.
  Tensor converted(const Tensor& x, DType dtype) {
    if (x.dtype() == dtype) return x;
    Tensor copy = alloc(x.shape(), dtype);
    cuda::convert(x.raw(), x.dtype(), copy.raw(), dtype, x.numel(), stream());
    return copy;
  }

  // Where a kernel with F32 output writes `out`: out itself when F32, else
  // an F32 buffer (holding out's values when accumulating) that
  // store_result rounds into out.
  Tensor f32_result(const Tensor& out, bool accumulate) {
    if (out.dtype() == DType::F32) return out;
    return accumulate ? converted(out, DType::F32) : alloc(out.shape(), DType::F32);
  }
  void store_result(const Tensor& result, const Tensor& out) {
    if (result.raw() != out.raw())
      cuda::convert(result.raw(), DType::F32, out.raw(), out.dtype(), out.numel(), stream());
  }

  // Few rows: the GEMV reads the int8 weight once. Many: BF16 panels of the
  // dequantised weight (bf16(q * scale)) on the tensor cores, a panel of
  // output channels at a time so the transient buffer stays bounded.
  void matmul_int8(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) {
    require(w.scales() != nullptr, "int8 weights need their scales");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    const auto* q = w.data<int8_t>();
    const float* scales = w.scales()->data<float>();
    if (m <= cuda::kInt8GemvMaxRows) {
      // F32 in and out: a few rows, bytes small beside the weight's.
      const Tensor input = converted(x, DType::F32), result = f32_result(out, accumulate);
      cuda::int8_gemv(input.data<float>(), m, k, q, scales, n, k, result.data<float>(), n,
                      accumulate, stream());
      return store_result(result, out);
    }
    const Tensor rounded = converted(x, DType::BF16);
    const size_t out_elem = dtype_size(out.dtype());
    // Multiples of 128 channels keep each panel's slice of out 512-byte aligned.
    const int64_t panel_rows =
        std::min(n, std::max<int64_t>(128, kDequantizedPanelBytes / (2 * k) / 128 * 128));
    const Tensor panel = alloc({panel_rows, k}, DType::BF16);
    for (int64_t r0 = 0; r0 < n; r0 += panel_rows) {
      const int64_t rows = std::min(panel_rows, n - r0);
      cuda::dequantize_int8_to_bf16(q + r0 * k, scales + r0, rows, k, panel.data<uint16_t>(),
                                    stream());
      blas_->run(rounded.raw(), k, panel.raw(), k, DType::BF16, m, rows, k,
                 static_cast<char*>(out.raw()) + size_t(r0) * out_elem, out.dtype(), n, accumulate);
    }
  }

  // The batch's per-token cache slot and position, on the device (one upload).
  cuda::DeviceBatch device_batch(const BatchLayout& batch, const KVCacheLayer& cache) {
    require(cache.k.device() == Device::CUDA && cache.k.rank() == 4 &&
                cache.v.shape() == cache.k.shape(),
            "the KV cache must be K and V [slots, kv_heads, capacity, head_dim] on the device");
    const int64_t slots = cache.k.dim(0), capacity = cache.k.dim(2);
    int64_t tokens = 0;
    for (const Segment& seg : batch.segments) tokens += seg.num_tokens;
    std::vector<int32_t> arrays(size_t(2 * tokens));  // token_slot, then token_pos
    cuda::DeviceBatch device;
    device.tokens = tokens;
    device.decode = !batch.segments.empty();
    int64_t t = 0;
    for (const Segment& seg : batch.segments) {
      require(seg.slot >= 0 && seg.slot < slots, "a batch segment's slot is outside the KV cache");
      require(seg.start_pos >= 0 && seg.start_pos + seg.num_tokens <= capacity,
              "KV cache capacity exceeded");
      for (int i = 0; i < seg.num_tokens; ++i, ++t) {
        arrays[size_t(t)] = seg.slot;
        arrays[size_t(tokens + t)] = seg.start_pos + i;
      }
      device.max_context = std::max<int64_t>(device.max_context, seg.start_pos + seg.num_tokens);
      device.decode = device.decode && seg.num_tokens == 1;
    }
    if (tokens == 0) return device;
    const auto* uploaded = static_cast<const int32_t*>(
        staging_->upload(arrays.data(), arrays.size() * sizeof(int32_t)));
    device.token_slot = uploaded;
    device.token_pos = uploaded + tokens;
    return device;
  }

  CudaBackendOptions options_;
  std::shared_ptr<cuda::DeviceMemory> memory_;
  std::string device_name_;
  int sm_ = 0;
  std::unique_ptr<cuda::CublasLtMatmul> blas_;
  std::unique_ptr<cuda::HostStaging> staging_;
  std::unique_ptr<cuda::StepGraphs> graphs_;
  std::array<std::unique_ptr<Backend>, 5> host_converters_;  // by DType
};

}  // namespace

int cuda_device_count() {
  int count = 0;  // left unwritten on error
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& options) {
  return std::make_unique<CudaBackend>(options);
}

void* cuda_backend_stream(Backend& backend) {
  auto* cuda_backend = dynamic_cast<CudaBackend*>(&backend);
  if (!cuda_backend) throw std::logic_error("cuda_backend_stream: not a CUDA backend");
  return cuda_backend->stream();
}

}  // namespace shardlm
