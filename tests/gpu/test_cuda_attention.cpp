// The CUDA kv_write and attention kernels (kernels/cuda/attention.cu) against
// the CPU backend's on random inputs: both write the same batches into their
// caches (which must then hold the same bytes), then attend with the same
// queries; the outputs must agree within a bound derived below.
//
// Cases: F32/BF16/F16 caches; head_dim 12 (no 16-byte rows in 16-bit
// caches: the general kernel), 64, 128, 256; MHA, GQA, a rank's share of a
// GQA model whose first KV head it holds only in part, and MQA with more
// query heads than one decode block takes; no window and windows of 1, 45
// and 1000 positions; a ragged prefill whose segments continue cached
// prefixes (slots out of order, one query tile spanning several sequences,
// contexts 1, 17, 70, 300, 4100) and a decode step over contexts 1, 17, 300
// and 4100 (split over blocks), run by the decode kernel and again by the
// general kernel.
//
// Device tensors are made here directly (the CudaBackend class is tested
// elsewhere): cudaMalloc'd memory wrapped as Tensor(..., Device::CUDA).
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/attention.cuh"
#include "kernels/math.hpp"
#include "runtime/backend.hpp"

using namespace shardlm;

namespace {

void check_cuda(cudaError_t err, const char* what) {
  INFO(what << ": " << cudaGetErrorString(err));
  REQUIRE(err == cudaSuccess);
}

Tensor device_tensor(const Shape& shape, DType dtype) {
  void* ptr = nullptr;
  const size_t bytes = std::max<size_t>(size_t(numel_of(shape)) * dtype_size(dtype), 1);
  check_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc");
  std::shared_ptr<void> memory(ptr, [](void* p) { cudaFree(p); });
  return Tensor(memory, 0, shape, dtype, Device::CUDA);
}

template <typename T>
std::shared_ptr<T> device_array(const std::vector<T>& host) {
  void* ptr = nullptr;
  check_cuda(cudaMalloc(&ptr, std::max<size_t>(host.size() * sizeof(T), 1)), "cudaMalloc");
  check_cuda(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
             "upload");
  return std::shared_ptr<T>(static_cast<T*>(ptr), [](T* p) { cudaFree(p); });
}

void upload(const std::vector<float>& host, const Tensor& dst) {
  check_cuda(
      cudaMemcpy(dst.raw(), host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice),
      "upload");
}

std::vector<char> download_bytes(const Tensor& src) {
  std::vector<char> host(src.nbytes());
  check_cuda(cudaMemcpy(host.data(), src.raw(), host.size(), cudaMemcpyDeviceToHost), "download");
  return host;
}

std::vector<float> random_values(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

float cache_value(const Tensor& cache, int64_t index) {
  switch (cache.dtype()) {
    case DType::BF16: return math::bf16_to_float(cache.data<uint16_t>()[index]);
    case DType::F16: return math::f16_to_float(cache.data<uint16_t>()[index]);
    default: return cache.data<float>()[index];
  }
}

// A batch on the device, as the CUDA backend builds it from a BatchLayout.
struct DeviceBatchHolder {
  std::shared_ptr<int32_t> slots, positions;
  cuda::DeviceBatch batch;
  DeviceBatchHolder(const BatchLayout& layout, bool decode) {
    std::vector<int32_t> token_slot;
    for (const Segment& s : layout.segments)
      token_slot.insert(token_slot.end(), s.num_tokens, s.slot);
    slots = device_array(token_slot);
    positions = device_array(layout.positions);
    batch.token_slot = slots.get();
    batch.token_pos = positions.get();
    batch.tokens = layout.num_tokens();
    for (int32_t p : layout.positions)
      batch.max_context = std::max<int64_t>(batch.max_context, p + 1);
    batch.decode = decode;
  }
};

// Which heads a rank holds, in the cache and in the queries.
struct HeadsCase {
  const char* name;
  int heads;     // local query heads
  int kv_heads;  // KV heads in the rank's cache
  int group;     // query heads per KV head in the whole model
  int q_offset, kv_offset;
};

const HeadsCase kHeadsCases[] = {
    {"MHA", 4, 4, 1, 0, 0},
    {"GQA", 8, 2, 4, 0, 0},
    // Global query heads 6..11 of a model with group 4: heads 6, 7 read KV
    // head 1 (local 0), heads 8..11 KV head 2 (local 1).
    {"GQA rank share", 6, 2, 4, 6, 1},
    // 12 query heads on one KV head: more than a decode block's 8.
    {"MQA", 12, 1, 12, 0, 0},
};

constexpr int kSlots = 9;
constexpr int64_t kCapacity = 4160;

// The largest difference allowed between the CPU's and the GPU's output for
// one query row and head, over `keys` keys. Both compute in F32 over the same
// cache values (checked bit for bit), so the difference comes only from the
// order of F32 sums and from exp. With u = 2^-24 (F32 unit roundoff):
// - score s_i = scale · q·k_i: each side's F32 dot product of head_dim terms
//   is within head_dim · u · S of the exact value, S = scale · sum_d |q_d k_id|
//   <= scale · |q| · |k_i| (Cauchy-Schwarz; the largest key norm of the
//   slot and KV head is taken); the two sides differ by at most
//   2 · head_dim · u · S.
// - weight p_i = exp(s_i - max): the CPU's vectorised exp is within 1e-6
//   relative, expf within 2u; a score error δ becomes a relative weight
//   error δ. So the normalised weights of the two sides differ relatively by
//   at most ε = 2 · head_dim · u · S + 1e-6 + 2u (the max cancels in the
//   ratio), which moves o = sum_i w_i v_i by sum_i w_i δ_i (v_i - o), at most
//   2 · ε · max|v|.
// - the sums sum_i p_i v_i and sum_i p_i over `keys` terms, in different
//   orders: each side within keys · u of sum_i p_i |v_i| and of sum_i p_i, so
//   numerator and denominator add 2 · 2 · keys · u · max|v| together.
// - the final division: 2u · max|v|.
// bound = max|v| · (2ε + 4 · keys · u + 2u). For a short context the bound is
// tight enough that a key too many or too few (weight about 1/keys) fails it;
// the long contexts check the splits and tiles, the short ones the masks.
double difference_bound(int64_t keys, int head_dim, double score_magnitude, double max_value) {
  const double u = std::ldexp(1.0, -24);
  const double epsilon = 2.0 * head_dim * u * score_magnitude + 1e-6 + 2.0 * u;
  return max_value * (2.0 * epsilon + 4.0 * double(keys) * u + 2.0 * u);
}

struct Fixture {
  DType kv_dtype;
  int head_dim;
  HeadsCase hc;
  std::unique_ptr<Backend> cpu;
  KVCacheLayer cpu_cache, gpu_cache;
  std::mt19937 rng;
  // Per (slot, local KV head): the largest key norm and |value| in the
  // cache, for difference_bound; recomputed after writes, before attention.
  std::vector<double> key_norm_max, value_abs_max;
  bool summary_stale = true;

  Fixture(DType dtype, int d, const HeadsCase& h)
      : kv_dtype(dtype), head_dim(d), hc(h), rng(uint32_t(d * 131 + h.heads * 7 + int(dtype))) {
    cpu = make_cpu_backend(CpuBackendOptions{1, std::nullopt, kv_dtype});
    const Shape shape{kSlots, hc.kv_heads, kCapacity, head_dim};
    cpu_cache = {cpu->alloc_kv_cache(shape), cpu->alloc_kv_cache(shape)};
    gpu_cache = {device_tensor(shape, kv_dtype), device_tensor(shape, kv_dtype)};
    // Zeros on both sides, so that whole caches compare.
    std::memset(cpu_cache.k.raw(), 0, cpu_cache.k.nbytes());
    std::memset(cpu_cache.v.raw(), 0, cpu_cache.v.nbytes());
    check_cuda(cudaMemset(gpu_cache.k.raw(), 0, gpu_cache.k.nbytes()), "cudaMemset");
    check_cuda(cudaMemset(gpu_cache.v.raw(), 0, gpu_cache.v.nbytes()), "cudaMemset");
  }

  // The same random k, v of the batch written by both backends.
  void write(const BatchLayout& layout) {
    if (layout.num_tokens() == 0) return;
    const int64_t width = int64_t(hc.kv_heads) * head_dim;
    const Shape shape{layout.num_tokens(), width};
    const auto k = random_values(size_t(layout.num_tokens() * width), rng);
    const auto v = random_values(size_t(layout.num_tokens() * width), rng);
    Tensor cpu_k = cpu->alloc(shape, DType::F32), cpu_v = cpu->alloc(shape, DType::F32);
    cpu->copy_from_host(k.data(), cpu_k);
    cpu->copy_from_host(v.data(), cpu_v);
    cpu->kv_write(cpu_k, cpu_v, cpu_cache, layout);
    Tensor gpu_k = device_tensor(shape, DType::F32), gpu_v = device_tensor(shape, DType::F32);
    upload(k, gpu_k);
    upload(v, gpu_v);
    DeviceBatchHolder batch(layout, false);
    cuda::kv_write(gpu_k, gpu_v, gpu_cache, batch.batch, nullptr);
    check_cuda(cudaDeviceSynchronize(), "kv_write");
    summary_stale = true;
  }

  void summarize_cache() {
    if (!summary_stale) return;
    summary_stale = false;
    key_norm_max.assign(size_t(kSlots * hc.kv_heads), 0.0);
    value_abs_max.assign(size_t(kSlots * hc.kv_heads), 0.0);
    for (int64_t sg = 0; sg < kSlots * hc.kv_heads; ++sg)
      for (int64_t pos = 0; pos < kCapacity; ++pos) {
        double norm2 = 0;
        for (int d = 0; d < head_dim; ++d) {
          const int64_t at = (sg * kCapacity + pos) * head_dim + d;
          const double k = cache_value(cpu_cache.k, at);
          norm2 += k * k;
          value_abs_max[size_t(sg)] =
              std::max(value_abs_max[size_t(sg)], double(std::fabs(cache_value(cpu_cache.v, at))));
        }
        key_norm_max[size_t(sg)] = std::max(key_norm_max[size_t(sg)], std::sqrt(norm2));
      }
  }

  // Writes each segment's cached prefix (positions 0 .. start_pos - 1), then
  // the segments themselves.
  void write_with_prefixes(const BatchLayout& layout) {
    std::vector<Segment> prefixes;
    for (const Segment& s : layout.segments)
      if (s.start_pos > 0) prefixes.push_back({s.slot, 0, s.start_pos});
    write(BatchLayout(prefixes));
    write(layout);
  }

  void require_same_caches() {
    for (auto [cpu_tensor, gpu_tensor] :
         {std::pair{cpu_cache.k, gpu_cache.k}, std::pair{cpu_cache.v, gpu_cache.v}}) {
      const std::vector<char> got = download_bytes(gpu_tensor);
      REQUIRE(got.size() == cpu_tensor.nbytes());
      REQUIRE(std::memcmp(got.data(), cpu_tensor.raw(), got.size()) == 0);
    }
  }

  // Attention of random queries over the batch on both backends, compared
  // row by row against difference_bound. `decode` is what the DeviceBatch
  // says (one token per segment): true takes the decode kernel where the
  // rows allow it, false the general kernel.
  void compare_attention(const BatchLayout& layout, int window, bool decode, float q_scale) {
    const AttentionHeads ah{head_dim, hc.q_offset, hc.kv_offset, hc.group, window};
    const int64_t tokens = layout.num_tokens(), width = int64_t(hc.heads) * head_dim;
    const Shape shape{tokens, width};
    const auto q = random_values(size_t(tokens * width), rng, q_scale);

    Tensor cpu_q = cpu->alloc(shape, DType::F32), cpu_out = cpu->alloc(shape, DType::F32);
    cpu->copy_from_host(q.data(), cpu_q);
    cpu->attention(cpu_q, cpu_cache, layout, ah, cpu_out);
    std::vector<float> want(size_t(tokens * width));
    cpu->copy_to_host(cpu_out, want.data());

    Tensor gpu_q = device_tensor(shape, DType::F32), gpu_out = device_tensor(shape, DType::F32);
    upload(q, gpu_q);
    check_cuda(cudaMemset(gpu_out.raw(), 0xff, gpu_out.nbytes()), "cudaMemset");  // NaN
    DeviceBatchHolder batch(layout, decode);
    const size_t scratch_bytes = cuda::attention_scratch_bytes(gpu_q, gpu_cache, batch.batch, ah);
    // A decode step over 4100 keys must be split over blocks (the rows of
    // 16-byte vectors go to the decode kernel, which alone splits).
    if (decode && window == 0 && (head_dim * dtype_size(kv_dtype)) % 16 == 0)
      REQUIRE(scratch_bytes > 0);
    Tensor scratch = device_tensor({int64_t(scratch_bytes + 3) / 4}, DType::F32);
    cuda::attention(gpu_q, gpu_cache, batch.batch, ah, gpu_out,
                    scratch_bytes ? scratch.raw() : nullptr, nullptr);
    check_cuda(cudaDeviceSynchronize(), "attention");
    std::vector<float> got(size_t(tokens * width));
    check_cuda(
        cudaMemcpy(got.data(), gpu_out.raw(), got.size() * sizeof(float), cudaMemcpyDeviceToHost),
        "download");

    const double scale = 1.0 / std::sqrt(double(head_dim));
    summarize_cache();
    int failures = 0;
    std::ostringstream first_failure;
    double worst_ratio = 0;
    int64_t token = 0;
    for (const Segment& seg : layout.segments)
      for (int t = 0; t < seg.num_tokens; ++t, ++token) {
        const int64_t pos = seg.start_pos + t;
        const int64_t first = window > 0 ? std::max<int64_t>(0, pos + 1 - window) : 0;
        for (int h = 0; h < hc.heads; ++h) {
          const size_t sg =
              size_t(seg.slot * hc.kv_heads + (hc.q_offset + h) / hc.group - hc.kv_offset);
          const float* qh = q.data() + token * width + int64_t(h) * head_dim;
          double q_norm2 = 0;
          for (int d = 0; d < head_dim; ++d) q_norm2 += double(qh[d]) * qh[d];
          const double bound =
              difference_bound(pos + 1 - first, head_dim,
                               scale * std::sqrt(q_norm2) * key_norm_max[sg], value_abs_max[sg]);
          for (int d = 0; d < head_dim; ++d) {
            const size_t i = size_t(token * width + int64_t(h) * head_dim + d);
            const double diff = std::fabs(double(got[i]) - double(want[i]));
            worst_ratio = std::max(worst_ratio, diff / bound);
            if (!(diff <= bound)) {  // NaN fails too
              if (failures++ == 0)
                first_failure << "token " << token << " (slot " << seg.slot << ", position " << pos
                              << ") head " << h << " dim " << d << ": gpu " << got[i] << " cpu "
                              << want[i] << " bound " << bound;
            }
          }
        }
      }
    INFO("kv " << dtype_name(kv_dtype) << " head_dim " << head_dim << " heads " << hc.name
               << " window " << window << (decode ? " decode" : " general") << " q_scale "
               << q_scale << " worst |diff|/bound " << worst_ratio);
    INFO(first_failure.str());
    REQUIRE(failures == 0);
  }
};

const DType kKvDtypes[] = {DType::F32, DType::BF16, DType::F16};
const int kHeadDims[] = {12, 64, 128, 256};
const int kWindows[] = {0, 1, 45, 1000};

// Prefill: slots 0..4, each segment continuing a cached prefix (or from 0),
// laid out so that the first tile of query rows holds several sequences.
BatchLayout prefill_layout() {
  return BatchLayout({{2, 283, 17},   // context 300
                      {4, 0, 1},      // context 1
                      {0, 4090, 10},  // context 4100
                      {3, 5, 12},     // context 17
                      {1, 0, 70}});   // context 70: query rows past one tile
}

// Decode: one token each on slots 5..8 (not in order), contexts 4100, 17, 1, 300.
BatchLayout decode_layout() {
  return BatchLayout({{8, 4099, 1}, {5, 16, 1}, {7, 0, 1}, {6, 299, 1}});
}

}  // namespace

TEST_CASE("CUDA kv_write stores what the CPU backend stores, and attention matches it",
          "[cuda][attention]") {
  for (DType kv_dtype : kKvDtypes)
    for (int head_dim : kHeadDims)
      for (const HeadsCase& hc : kHeadsCases) {
        Fixture f(kv_dtype, head_dim, hc);
        const BatchLayout prefill = prefill_layout(), decode = decode_layout();
        f.write_with_prefixes(prefill);
        f.write_with_prefixes(decode);
        {
          INFO("kv " << dtype_name(kv_dtype) << " head_dim " << head_dim << " heads " << hc.name);
          f.require_same_caches();
        }
        for (int window : kWindows) {
          // q_scale 4: sharp attention, a few keys carry nearly all weight.
          for (float q_scale : {1.0f, 4.0f}) f.compare_attention(prefill, window, false, q_scale);
          f.compare_attention(decode, window, true, 1.0f);
          f.compare_attention(decode, window, false, 1.0f);
        }
      }
}

TEST_CASE("CUDA decode attention splits long contexts for any batch width", "[cuda][attention]") {
  // Several sequences (fewer splits each) and one (many splits), one
  // context much longer than the others, so that most of its splits have
  // no counterpart in the short ones.
  for (int sequences : {1, 3, kSlots})
    for (DType kv_dtype : {DType::BF16, DType::F32}) {
      Fixture f(kv_dtype, 128, kHeadsCases[1]);
      std::vector<Segment> segments;
      for (int s = 0; s < sequences; ++s)
        segments.push_back({kSlots - 1 - s, s == 0 ? 4000 : 37 * s, 1});
      const BatchLayout layout(segments);
      f.write_with_prefixes(layout);
      f.compare_attention(layout, 0, true, 1.0f);
      f.compare_attention(layout, 700, true, 1.0f);
    }
}
