// The CPU backend: F32 activations (or BF16, stored rounded: each operation
// widens its inputs, computes in F32 as with F32 activations and rounds what
// it writes, so it states exactly what a BF16-activation device computes);
// weights stored as F32, BF16, F16 or I8 (weight-only, per-output-channel
// scales) as CpuBackendOptions says; matmul through the streaming and panel
// kernels of cpu_kernels.hpp; element-wise kernels and attention as OpenMP
// loops the compiler vectorizes.
#include <fmt/format.h>
#include <malloc.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.hpp"
#include "kernels/math.hpp"
#include "runtime/backend.hpp"

namespace shardlm {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::logic_error(fmt::format("cpu backend: {}", what));
}

void require_f32(const Tensor& t, const char* what) {
  require(t.dtype() == DType::F32 && t.device() == Device::CPU, what);
}

void require_activation(const Tensor& t, const char* what) {
  require((t.dtype() == DType::F32 || t.dtype() == DType::BF16) && t.device() == Device::CPU, what);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options)
      : weight_dtype_(options.weight_dtype),
        kv_dtype_(options.kv_dtype),
        activation_dtype_(options.activation_dtype) {
    if (options.threads > 0) omp_set_num_threads(options.threads);
    if (kv_dtype_ != DType::F32 && kv_dtype_ != DType::BF16 && kv_dtype_ != DType::F16)
      throw std::invalid_argument("cpu backend: the KV cache must be f32, bf16 or f16");
    if (activation_dtype_ != DType::F32 && activation_dtype_ != DType::BF16)
      throw std::invalid_argument("cpu backend: activations must be f32 or bf16");
    if (options.streaming_max_rows > 0) cpu::set_streaming_max_rows(options.streaming_max_rows);
    if (options.amx_streaming_max_rows > 0)
      cpu::set_amx_streaming_max_rows(options.amx_streaming_max_rows);
    // Activations are allocated and freed every layer; glibc would map large
    // blocks fresh each time and zero-fill them on first touch (page faults
    // were 15% of prefill). Keep freed memory in the heap for reuse instead
    // (32 MiB is the largest mmap threshold glibc accepts).
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    threads_ = omp_get_max_threads();
    if (weight_dtype_ && *weight_dtype_ != DType::F32 && *weight_dtype_ != DType::BF16 &&
        *weight_dtype_ != DType::F16 && *weight_dtype_ != DType::I8)
      throw std::invalid_argument("cpu backend: weights must be f32, bf16, f16 or int8");
  }

  Device device() const override { return Device::CPU; }
  DType kv_dtype() const override { return kv_dtype_; }
  DType activation_dtype() const override { return activation_dtype_; }
  std::string describe() const override {
    const std::string amx =
        cpu::amx_available()
            ? fmt::format(", AMX above {} rows for BF16 weights (int8: above its streaming limit)",
                          cpu::amx_streaming_max_rows())
            : "";
    return fmt::format(
        "cpu ({} weights, {} KV cache, {} activations, AVX-512 streaming matmul up to {} rows + "
        "oneDNN sgemm{}, {} threads)",
        weight_dtype_ ? weight_dtype_name(*weight_dtype_) : "checkpoint-dtype",
        weight_dtype_name(kv_dtype_), weight_dtype_name(activation_dtype_),
        cpu::streaming_max_rows(), amx, threads_);
  }

  Tensor alloc(const Shape& shape, DType dtype) override {
    // allocate_streamed rounds up to whole 64-byte lines (at least one).
    void* memory = cpu::allocate_streamed(size_t(numel_of(shape)) * dtype_size(dtype));
    return Tensor(std::shared_ptr<void>(memory, std::free), 0, shape, dtype, Device::CPU);
  }

  Tensor zeros(const Shape& shape, DType dtype) override {
    Tensor t = alloc(shape, dtype);
    std::memset(t.raw(), 0, t.nbytes());
    return t;
  }

  Tensor upload_weight(const void* host, DType src_dtype, const Shape& full_shape,
                       const Block2D& block) override {
    const int64_t full_cols = full_shape.back();
    const auto* base = static_cast<const char*>(host);
    const size_t src_elem = dtype_size(src_dtype);
    auto source_row = [&](int64_t r, int64_t col) {
      return base + ((block.row_begin + r) * full_cols + col) * int64_t(src_elem);
    };
    // Norm weights (1-D) stay F32: they scale activations, not a matmul.
    const DType dtype = full_shape.size() == 1 ? DType::F32 : weight_dtype_.value_or(src_dtype);
    if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16 && dtype != DType::I8)
      throw std::invalid_argument(
          fmt::format("cpu backend: cannot store {} weights", dtype_name(dtype)));
    Tensor t =
        alloc(full_shape.size() == 1 ? Shape{block.cols} : Shape{block.rows, block.cols}, dtype);
    const size_t elem = dtype_size(dtype);
    Tensor scales;
    if (dtype == DType::I8) scales = alloc({block.rows}, DType::F32);
    bool failed = false;
#pragma omp parallel if (block.rows > 1)
    {
      // Whole source rows in F32: an int8 scale comes from the full row, so
      // every column block of a sharded weight gets the same scales (which
      // lets gather_weight join blocks and partial sums over E agree).
      std::vector<float> row(static_cast<size_t>(dtype == DType::I8 ? full_cols : block.cols));
#pragma omp for schedule(static)
      for (int64_t r = 0; r < block.rows; ++r) {
        try {
          char* dst = static_cast<char*>(t.raw()) + size_t(r * block.cols) * elem;
          if (dtype == src_dtype) {
            std::memcpy(dst, source_row(r, block.col_begin), size_t(block.cols) * elem);
          } else if (dtype != DType::I8) {
            convert_to_f32(source_row(r, block.col_begin), src_dtype, row.data(),
                           size_t(block.cols));
            convert_from_f32(row.data(), dst, dtype, size_t(block.cols));
          } else {
            convert_to_f32(source_row(r, 0), src_dtype, row.data(), size_t(full_cols));
            float max_abs = 0.f;
            for (float v : row) max_abs = std::max(max_abs, std::fabs(v));
            const float scale = math::int8_scale(max_abs);
            scales.data<float>()[r] = scale;
            auto* q = reinterpret_cast<int8_t*>(dst);
            for (int64_t c = 0; c < block.cols; ++c)
              q[c] = math::quantize_int8(row[size_t(block.col_begin + c)], scale);
          }
        } catch (...) {
#pragma omp atomic write
          failed = true;
        }
      }
    }
    if (failed)
      throw std::invalid_argument(fmt::format("cpu backend: cannot convert {} weights to {}",
                                              dtype_name(src_dtype), dtype_name(dtype)));
    return dtype == DType::I8 ? t.with_scales(scales) : t;
  }

  void copy_2d(const Tensor& src, int64_t src_row, int64_t src_col, const Tensor& dst,
               int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) override {
    require(
        src.device() == Device::CPU && dst.device() == Device::CPU && src.dtype() == dst.dtype(),
        "copy_2d wants two CPU tensors of one dtype");
    const int64_t src_width = src.dim(src.rank() - 1), dst_width = dst.dim(dst.rank() - 1);
    require(src_col + cols <= src_width && dst_col + cols <= dst_width,
            "copy_2d outside the matrix");
    const size_t elem = dtype_size(src.dtype());
    const char* from =
        static_cast<const char*>(src.raw()) + size_t(src_row * src_width + src_col) * elem;
    char* to = static_cast<char*>(dst.raw()) + size_t(dst_row * dst_width + dst_col) * elem;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(to + size_t(r * dst_width) * elem, from + size_t(r * src_width) * elem,
                  size_t(cols) * elem);
  }

  void copy_from_host(const float* src, const Tensor& dst) override {
    require_activation(dst, "copy_from_host wants an F32 or BF16 destination");
    convert_from_f32(src, dst.raw(), dst.dtype(), size_t(dst.numel()));
  }

  void copy_to_host(const Tensor& src, float* dst) override {
    require_activation(src, "copy_to_host wants an F32 or BF16 source");
    convert_to_f32(src.raw(), src.dtype(), dst, size_t(src.numel()));
  }

  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out_tensor) override {
    require_activation(out_tensor, "embedding output must be F32 or BF16");
    const Rounded out(*this, out_tensor, false);
    const int64_t tokens = out->dim(0), width = out->dim(1);
    const cpu::WeightView view = weight_view(table);
    for (int64_t t = 0; t < tokens; ++t)
      cpu::widen_rows(view, ids[t], 1, out->data<float>() + t * width);
  }

  void row_sum_squares(const Tensor& x_tensor, const Tensor& sums) override {
    const Tensor x = widened(x_tensor);
    const int64_t rows = x.dim(0), width = x.dim(1);
    const float* src = x.data<float>();
    float* out = sums.data<float>();
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      const float* in = src + r * width;
      float sum_sq = 0.f;
#pragma omp simd reduction(+ : sum_sq)
      for (int64_t i = 0; i < width; ++i) sum_sq += in[i] * in[i];
      out[r] = sum_sq;
    }
  }

  void rmsnorm_scale(const Tensor& x_tensor, const Tensor& sums, int64_t full_width,
                     const Tensor& weight, float eps, const Tensor& out_tensor) override {
    const Tensor x = widened(x_tensor);
    const Rounded out(*this, out_tensor, false);
    const int64_t rows = x.dim(0), width = x.dim(1);
    const float* src = x.data<float>();
    const float* sum_sq = sums.data<float>();
    const float* w = weight.data<float>();
    float* dst = out->data<float>();
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = 1.0f / std::sqrt(sum_sq[r] / float(full_width) + eps);
      const float* in = src + r * width;
      float* o = dst + r * width;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) o[i] = in[i] * scale * w[i];
    }
  }

  void matmul(const Tensor& x_tensor, const Tensor& w, const Tensor& out_tensor,
              bool accumulate) override {
    require_activation(x_tensor, "matmul input must be F32 or BF16");
    require_activation(out_tensor, "matmul output must be F32 or BF16");
    const int64_t m = x_tensor.dim(0), k = x_tensor.dim(1), n = w.dim(0);
    require(w.rank() == 2 && w.dim(1) == k && out_tensor.dim(0) == m && out_tensor.dim(1) == n,
            "matmul shapes do not agree");
    if (m == 0 || n == 0) return;
    const Rounded out(*this, out_tensor, accumulate);
    if (k == 0) {
      if (!accumulate) std::memset(out->raw(), 0, out->nbytes());
      return;
    }
    if (x_tensor.dtype() == DType::BF16 && w.dtype() == DType::BF16 && cpu::bf16_dot_suits(m))
      return cpu::matmul_bf16_dot(x_tensor.data<uint16_t>(), m, k, weight_view(w),
                                  out->data<float>(), n, accumulate);
    const Tensor x = widened(x_tensor);
    cpu::matmul(x.data<float>(), m, k, weight_view(w), out->data<float>(), n, accumulate);
  }

  void rope(const Tensor& x_tensor, int head_dim, const int32_t* positions, const Tensor& cos,
            const Tensor& sin) override {
    const Rounded x(*this, x_tensor, true);
    const int64_t tokens = x->dim(0), heads = x->dim(1) / head_dim, half = head_dim / 2;
    float* data = x->data<float>();
    const float* cos_table = cos.data<float>();
    const float* sin_table = sin.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (tokens > 1)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < heads; ++h)
        math::rope_rotate_half(data + (t * heads + h) * head_dim,
                               cos_table + int64_t(positions[t]) * half,
                               sin_table + int64_t(positions[t]) * half, head_dim);
  }

  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out_tensor) override {
    const Rounded out(*this, out_tensor, false);
    cpu::silu_mul(widened(gate).data<float>(), widened(up).data<float>(), out->data<float>(),
                  gate.numel());
  }

  void add(const Tensor& x_tensor, const Tensor& inout_tensor) override {
    const Tensor x = widened(x_tensor);
    const Rounded inout(*this, inout_tensor, true);
    const int64_t n = x.numel();
    const float* src = x.data<float>();
    float* dst = inout->data<float>();
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }

  void add_bias(const Tensor& bias, const Tensor& inout_tensor) override {
    require_f32(bias, "bias must be F32");
    const int64_t cols = bias.numel(), rows = inout_tensor.numel() / std::max<int64_t>(cols, 1);
    require(inout_tensor.rank() == 2 && inout_tensor.dim(1) == cols,
            "add_bias: bias width differs from the rows");
    const Rounded inout(*this, inout_tensor, true);
    const float* b = bias.data<float>();
    float* dst = inout->data<float>();
#pragma omp parallel for schedule(static) if (rows * cols > 4096)
    for (int64_t r = 0; r < rows; ++r)
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] += b[c];
  }

  void kv_write(const Tensor& k_tensor, const Tensor& v_tensor, const KVCacheLayer& cache,
                const BatchLayout& batch) override {
    require_activation(k_tensor, "kv_write: k must be F32 or BF16");
    require_activation(v_tensor, "kv_write: v must be F32 or BF16");
    const Tensor k = widened(k_tensor), v = widened(v_tensor);
    const int64_t kv_heads = cache.k.dim(1), capacity = cache.k.dim(2), head_dim = cache.k.dim(3);
    const int64_t stride = kv_heads * head_dim;
    const DType dtype = cache.k.dtype();
    const size_t elem = dtype_size(dtype);
    require(k.dim(1) == stride && v.dim(1) == stride, "kv_write: k/v width differs from the cache");
    int64_t token = 0;
    for (const Segment& seg : batch.segments) {
      require(seg.start_pos + seg.num_tokens <= capacity, "KV cache capacity exceeded");
      for (int t = 0; t < seg.num_tokens; ++t, ++token)
        for (int64_t g = 0; g < kv_heads; ++g) {
          const size_t offset =
              size_t(((seg.slot * kv_heads + g) * capacity + seg.start_pos + t) * head_dim) * elem;
          // Stored in the cache's dtype: 16-bit caches round to nearest even.
          convert_from_f32(k.data<float>() + token * stride + g * head_dim,
                           static_cast<char*>(cache.k.raw()) + offset, dtype, size_t(head_dim));
          convert_from_f32(v.data<float>() + token * stride + g * head_dim,
                           static_cast<char*>(cache.v.raw()) + offset, dtype, size_t(head_dim));
        }
    }
  }

  void attention(const Tensor& q_tensor, const KVCacheLayer& cache, const BatchLayout& batch,
                 const AttentionHeads& ah, const Tensor& out_tensor) override {
    require_activation(q_tensor, "attention query must be F32 or BF16");
    const Tensor q = widened(q_tensor);
    const Rounded rounded_out(*this, out_tensor, false);
    const Tensor& out = *rounded_out;
    const DType kv_dtype = cache.k.dtype();
    require(kv_dtype == DType::F32 || kv_dtype == DType::BF16 || kv_dtype == DType::F16,
            "KV cache must be F32, BF16 or F16");
    const int64_t kv_heads = cache.k.dim(1), capacity = cache.k.dim(2), head_dim = ah.head_dim;
    const int64_t heads = q.dim(1) / head_dim, q_stride = heads * head_dim;
    const size_t elem = dtype_size(kv_dtype);
    const float scale = 1.0f / std::sqrt(float(head_dim));
    // The cache of one (sequence slot, KV head).
    auto kv_view = [&](int64_t slot, int64_t g) {
      const size_t offset = size_t((slot * kv_heads + g) * capacity * head_dim) * elem;
      return cpu::KVView{static_cast<const char*>(cache.k.raw()) + offset,
                         static_cast<const char*>(cache.v.raw()) + offset, kv_dtype, head_dim,
                         scale};
    };
    // Each segment's tokens are consecutive rows at consecutive positions.
    std::vector<int64_t> first_token;
    int64_t longest_segment = 0;
    for (int64_t token = 0; const Segment& seg : batch.segments) {
      require(seg.start_pos + seg.num_tokens <= capacity, "attention beyond the KV cache");
      first_token.push_back(token);
      token += seg.num_tokens;
      longest_segment = std::max<int64_t>(longest_segment, seg.num_tokens);
    }
    const bool decode = std::all_of(batch.segments.begin(), batch.segments.end(),
                                    [](const Segment& seg) { return seg.num_tokens == 1; });
    if (decode) return attention_decode(q, batch, ah, kv_view, out);
    const int64_t tasks = int64_t(batch.segments.size()) * heads;
#pragma omp parallel if (tasks > 1)
    {
      std::vector<float> scratch(size_t(cpu::attention_rows_scratch(longest_segment, head_dim)));
      // Segments of different lengths cost differently: hand them out one by one.
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < tasks; ++task) {
        const size_t s = size_t(task / heads);
        const int64_t h = task % heads;
        const Segment& seg = batch.segments[s];
        const int64_t g = (ah.q_offset + h) / ah.group - ah.kv_offset;
        const int64_t row = first_token[s] * q_stride + h * head_dim;
        const cpu::AttentionQuery query{q.data<float>() + row, q_stride, seg.num_tokens,
                                        seg.start_pos,         1,        ah.window};
        cpu::attention_rows(query, kv_view(seg.slot, g), out.data<float>() + row, q_stride,
                            scratch.data());
      }
    }
  }

 private:
  // An activation as F32: itself, or a widened copy of a BF16 one.
  Tensor widened(const Tensor& t) {
    if (t.dtype() == DType::F32) return t;
    require_activation(t, "activations must be F32 or BF16");
    Tensor wide = alloc(t.shape(), DType::F32);
    convert_to_f32(t.raw(), t.dtype(), wide.data<float>(), size_t(t.numel()));
    return wide;
  }

  // An output of an operation: the tensor itself when F32, else an F32
  // scratch (holding the tensor's values when `read` - an in-place update)
  // whose values are rounded into the tensor when the operation ends.
  class Rounded {
   public:
    Rounded(CpuBackend& backend, const Tensor& target, bool read)
        : target_(target), work_(read ? backend.widened(target) : target) {
      if (target.dtype() != DType::F32 && !read) work_ = backend.alloc(target.shape(), DType::F32);
    }
    ~Rounded() {
      if (work_.raw() != target_.raw())
        convert_from_f32(work_.data<float>(), target_.raw(), target_.dtype(),
                         size_t(target_.numel()));
    }
    Rounded(const Rounded&) = delete;
    Rounded& operator=(const Rounded&) = delete;
    const Tensor& operator*() const { return work_; }
    const Tensor* operator->() const { return &work_; }

   private:
    Tensor target_, work_;
  };

  // A decode step (one new token per sequence): one task per (sequence, KV
  // head), whose query heads share each block of keys and values, so the
  // cache is read once per KV head, not once per query head. When those
  // tasks are fewer than the threads and the context is long, each task's
  // keys are split into ranges done apart and merged (flash-decoding), so
  // every core streams part of the cache.
  template <typename KVViewOf>
  void attention_decode(const Tensor& q, const BatchLayout& batch, const AttentionHeads& ah,
                        const KVViewOf& kv_view, const Tensor& out) {
    const int64_t head_dim = ah.head_dim, heads = q.dim(1) / head_dim;
    const int64_t q_stride = heads * head_dim;
    struct HeadGroup {
      int64_t first, count, kv;
    };
    std::vector<HeadGroup> groups;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = (ah.q_offset + h) / ah.group - ah.kv_offset;
      if (groups.empty() || groups.back().kv != g) groups.push_back({h, 0, g});
      ++groups.back().count;
    }
    int64_t widest = 0, longest = 0;
    for (const HeadGroup& g : groups) widest = std::max(widest, g.count);
    for (const Segment& seg : batch.segments)
      longest = std::max<int64_t>(longest, seg.start_pos + 1);
    const int64_t tasks = int64_t(batch.segments.size() * groups.size());
    const int64_t threads = omp_get_max_threads();
    // Key ranges per task: enough for two per thread, none under kMinSplitKeys.
    constexpr int64_t kMinSplitKeys = 512;
    const int64_t splits =
        std::max<int64_t>(1, std::min((2 * threads + tasks - 1) / tasks, longest / kMinSplitKeys));
    // Per (task, split): acc [widest, head_dim], max [widest], sum [widest].
    const int64_t state_floats = widest * (head_dim + 2);
    std::vector<float> states(size_t(tasks * splits * state_floats));
    auto state_of = [&](int64_t unit) {
      float* base = states.data() + unit * state_floats;
      return cpu::AttentionState{base, head_dim, base + widest * head_dim,
                                 base + widest * (head_dim + 1)};
    };
    auto query_of = [&](int64_t task) {
      const size_t s = size_t(task) / groups.size();
      const HeadGroup& group = groups[size_t(task) % groups.size()];
      const Segment& seg = batch.segments[s];
      return cpu::AttentionQuery{q.data<float>() + int64_t(s) * q_stride + group.first * head_dim,
                                 head_dim,
                                 group.count,
                                 seg.start_pos,
                                 0,
                                 ah.window};
    };
#pragma omp parallel if (tasks * splits > 1)
    {
      std::vector<float> scratch(size_t(cpu::attention_scratch(widest, head_dim)));
#pragma omp for schedule(dynamic, 1)
      for (int64_t unit = 0; unit < tasks * splits; ++unit) {
        const int64_t task = unit / splits, split = unit % splits;
        const Segment& seg = batch.segments[size_t(task) / groups.size()];
        const HeadGroup& group = groups[size_t(task) % groups.size()];
        // The keys the token sees, cut into `splits` ranges of whole blocks.
        const int64_t first_key =
            ah.window > 0 ? std::max<int64_t>(0, seg.start_pos + 1 - ah.window) : 0;
        const int64_t keys = seg.start_pos + 1 - first_key;
        const int64_t block = cpu::kAttentionBlockKeys;
        const int64_t per_split = ((keys + splits - 1) / splits + block - 1) / block * block;
        const int64_t begin = std::min<int64_t>(first_key + split * per_split, seg.start_pos + 1);
        const int64_t end = std::min<int64_t>(begin + per_split, seg.start_pos + 1);
        const cpu::AttentionState st = state_of(unit);
        cpu::attention_state_init(st, group.count, head_dim);
        if (begin < end)
          cpu::attention_partial(query_of(task), kv_view(seg.slot, group.kv), begin, end, st,
                                 scratch.data());
      }
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks; ++task) {
        const HeadGroup& group = groups[size_t(task) % groups.size()];
        const cpu::AttentionState total = state_of(task * splits);
        for (int64_t split = 1; split < splits; ++split)
          cpu::attention_merge(total, state_of(task * splits + split), group.count, head_dim);
        const size_t s = size_t(task) / groups.size();
        cpu::attention_finish(total, group.count, head_dim,
                              out.data<float>() + int64_t(s) * q_stride + group.first * head_dim,
                              head_dim);
      }
    }
  }

  static cpu::WeightView weight_view(const Tensor& w) {
    require(w.device() == Device::CPU, "weights must be on the CPU");
    require(w.dtype() != DType::I8 || w.scales() != nullptr, "int8 weights need their scales");
    return {w.raw(), w.dtype(), w.scales() ? w.scales()->data<float>() : nullptr, w.dim(0),
            w.rank() == 2 ? w.dim(1) : 1};
  }

  std::optional<DType> weight_dtype_;
  DType kv_dtype_ = DType::BF16;
  DType activation_dtype_ = DType::F32;
  int threads_ = 1;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return make_cpu_backend(CpuBackendOptions{threads, DType::F32, DType::F32});
}

}  // namespace shardlm
