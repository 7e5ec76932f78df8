// The CPU backend: F32 activations and weights, GEMM through oneDNN's sgemm,
// element-wise kernels and attention as OpenMP loops the compiler vectorizes.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>
#include <oneapi/dnnl/dnnl.h>

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

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    threads_ = omp_get_max_threads();
  }

  Device device() const override { return Device::CPU; }
  std::string describe() const override {
    return fmt::format("cpu (oneDNN sgemm, {} threads)", threads_);
  }

  Tensor alloc(const Shape& shape, DType dtype) override {
    const size_t bytes = std::max<size_t>(64, size_t(numel_of(shape)) * dtype_size(dtype));
    void* memory = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!memory) throw std::bad_alloc();
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
    Tensor t = alloc(full_shape.size() == 1 ? Shape{block.cols} : Shape{block.rows, block.cols},
                     DType::F32);
    const auto* base = static_cast<const char*>(host);
    const size_t elem = dtype_size(src_dtype);
    for (int64_t r = 0; r < block.rows; ++r)
      convert_to_f32(base + ((block.row_begin + r) * full_cols + block.col_begin) * int64_t(elem),
                     src_dtype, t.data<float>() + r * block.cols, size_t(block.cols));
    return t;
  }

  void copy_2d(const Tensor& src, int64_t src_row, int64_t src_col, const Tensor& dst,
               int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) override {
    require_f32(src, "copy_2d wants F32");
    require_f32(dst, "copy_2d wants F32");
    const int64_t src_width = src.dim(src.rank() - 1), dst_width = dst.dim(dst.rank() - 1);
    require(src_col + cols <= src_width && dst_col + cols <= dst_width, "copy_2d outside the matrix");
    const float* from = src.data<float>() + src_row * src_width + src_col;
    float* to = dst.data<float>() + dst_row * dst_width + dst_col;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(to + r * dst_width, from + r * src_width, size_t(cols) * sizeof(float));
  }

  void copy_from_host(const float* src, const Tensor& dst) override {
    require_f32(dst, "copy_from_host wants an F32 destination");
    std::memcpy(dst.raw(), src, dst.nbytes());
  }

  void copy_to_host(const Tensor& src, float* dst) override {
    require_f32(src, "copy_to_host wants an F32 source");
    std::memcpy(dst, src.raw(), src.nbytes());
  }

  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    require_f32(table, "embedding table must be F32");
    const int64_t tokens = out.dim(0), width = out.dim(1);
    const float* rows = table.data<float>();
    float* dst = out.data<float>();
    for (int64_t t = 0; t < tokens; ++t)
      std::memcpy(dst + t * width, rows + int64_t(ids[t]) * width, size_t(width) * sizeof(float));
  }

  void row_sum_squares(const Tensor& x, const Tensor& sums) override {
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

  void rmsnorm_scale(const Tensor& x, const Tensor& sums, int64_t full_width, const Tensor& weight,
                     float eps, const Tensor& out) override {
    const int64_t rows = x.dim(0), width = x.dim(1);
    const float* src = x.data<float>();
    const float* sum_sq = sums.data<float>();
    const float* w = weight.data<float>();
    float* dst = out.data<float>();
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = 1.0f / std::sqrt(sum_sq[r] / float(full_width) + eps);
      const float* in = src + r * width;
      float* o = dst + r * width;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) o[i] = in[i] * scale * w[i];
    }
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) override {
    require_f32(x, "matmul input must be F32");
    require_f32(w, "matmul weight must be F32");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    require(w.dim(1) == k && out.dim(0) == m && out.dim(1) == n, "matmul shapes do not agree");
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (!accumulate) std::memset(out.raw(), 0, out.nbytes());
      return;
    }
    const dnnl_status_t status =
        dnnl_sgemm('N', 'T', m, n, k, 1.0f, x.data<float>(), k, w.data<float>(), k,
                   accumulate ? 1.0f : 0.0f, out.data<float>(), n);
    require(status == dnnl_success, "dnnl_sgemm failed");
  }

  void rope(const Tensor& x, int head_dim, const int32_t* positions, const Tensor& cos,
            const Tensor& sin) override {
    const int64_t tokens = x.dim(0), heads = x.dim(1) / head_dim, half = head_dim / 2;
    float* data = x.data<float>();
    const float* cos_table = cos.data<float>();
    const float* sin_table = sin.data<float>();
#pragma omp parallel for collapse(2) schedule(static) if (tokens > 1)
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < heads; ++h)
        math::rope_rotate_half(data + (t * heads + h) * head_dim,
                               cos_table + int64_t(positions[t]) * half,
                               sin_table + int64_t(positions[t]) * half, head_dim);
  }

  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    const int64_t n = gate.numel();
    const float* g = gate.data<float>();
    const float* u = up.data<float>();
    float* o = out.data<float>();
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) o[i] = math::silu(g[i]) * u[i];
  }

  void add(const Tensor& x, const Tensor& inout) override {
    const int64_t n = x.numel();
    const float* src = x.data<float>();
    float* dst = inout.data<float>();
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }

  void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache,
                const BatchLayout& batch) override {
    const int64_t kv_heads = cache.k.dim(1), capacity = cache.k.dim(2), head_dim = cache.k.dim(3);
    const int64_t stride = kv_heads * head_dim;
    require(k.dim(1) == stride && v.dim(1) == stride, "kv_write: k/v width differs from the cache");
    int64_t token = 0;
    for (const Segment& seg : batch.segments) {
      require(seg.start_pos + seg.num_tokens <= capacity, "KV cache capacity exceeded");
      for (int t = 0; t < seg.num_tokens; ++t, ++token)
        for (int64_t g = 0; g < kv_heads; ++g) {
          const int64_t offset = ((seg.slot * kv_heads + g) * capacity + seg.start_pos + t) * head_dim;
          std::memcpy(cache.k.data<float>() + offset, k.data<float>() + token * stride + g * head_dim,
                      size_t(head_dim) * sizeof(float));
          std::memcpy(cache.v.data<float>() + offset, v.data<float>() + token * stride + g * head_dim,
                      size_t(head_dim) * sizeof(float));
        }
    }
  }

  void attention(const Tensor& q, const KVCacheLayer& cache, const BatchLayout& batch,
                 const AttentionHeads& ah, const Tensor& out) override {
    const int64_t kv_heads = cache.k.dim(1), capacity = cache.k.dim(2), head_dim = ah.head_dim;
    const int64_t heads = q.dim(1) / head_dim, q_stride = heads * head_dim;
    const float scale = 1.0f / std::sqrt(float(head_dim));
    const float* k_cache = cache.k.data<float>();
    const float* v_cache = cache.v.data<float>();
    auto cache_row = [&](const float* base, int64_t slot, int64_t g, int64_t pos) {
      return base + ((slot * kv_heads + g) * capacity + pos) * head_dim;
    };
    std::vector<int> token_segment(static_cast<size_t>(batch.num_tokens()));
    for (size_t s = 0, token = 0; s < batch.segments.size(); ++s)
      for (int t = 0; t < batch.segments[s].num_tokens; ++t) token_segment[token++] = int(s);

    const int64_t tokens = batch.num_tokens();
    const float* q_data = q.data<float>();
    float* out_data = out.data<float>();
#pragma omp parallel if (tokens * heads > 1)
    {
      std::vector<float> scores(static_cast<size_t>(capacity));
#pragma omp for collapse(2) schedule(dynamic, 4)
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t h = 0; h < heads; ++h) {
          const Segment& seg = batch.segments[size_t(token_segment[size_t(t)])];
          const int64_t g = (ah.q_offset + h) / ah.group - ah.kv_offset;
          const int64_t length = batch.positions[size_t(t)] + 1;
          const float* query = q_data + t * q_stride + h * head_dim;
          float max_score = -INFINITY;
          for (int64_t j = 0; j < length; ++j) {
            const float* key = cache_row(k_cache, seg.slot, g, j);
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
            scores[size_t(j)] = dot * scale;
            max_score = std::max(max_score, scores[size_t(j)]);
          }
          float total = 0.f;
          for (int64_t j = 0; j < length; ++j) {
            scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
            total += scores[size_t(j)];
          }
          float* o = out_data + t * q_stride + h * head_dim;
          std::fill(o, o + head_dim, 0.f);
          for (int64_t j = 0; j < length; ++j) {
            const float weight = scores[size_t(j)] / total;
            const float* value = cache_row(v_cache, seg.slot, g, j);
#pragma omp simd
            for (int64_t d = 0; d < head_dim; ++d) o[d] += weight * value[d];
          }
        }
      }
    }
  }

 private:
  int threads_ = 1;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace shardlm
