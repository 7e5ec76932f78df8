// BF16 activations: the CUDA backend's operations on BF16 tensors against
// the CPU backend's on the same BF16 tensors (CpuBackendOptions::
// activation_dtype = BF16). Both widen their inputs, compute in F32 and
// round what they write to BF16 (to nearest even), so:
// - where test_cuda_backend_ops.cpp finds the F32 results equal (add,
//   add_bias, embedding, rmsnorm_scale from given sums, kv_write), the BF16
//   results are equal bit for bit;
// - where the F32 results differ by a few F32 ulps (silu_mul, rope, sums in
//   another order), a rounding may go the other way: within one BF16 ulp,
//   2^-7 of the value (2^-8 for an ulp, doubled as the two F32 results
//   straddle a rounding boundary);
// - matmul and attention: the F32 bounds of test_cuda_backend_ops.cpp on the
//   widened operands, plus one BF16 ulp of the result.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.hpp"
#include "runtime/backend.hpp"
#include "runtime/dtype.hpp"
#include "tests/gpu/backend_test_util.hpp"

using namespace shardlm;
using namespace shardlm::test;

namespace {

constexpr double kBf16Ulp = 1.0 / 128;  // one BF16 ulp, relative, at most

std::unique_ptr<Backend> cpu_bf16() {
  CpuBackendOptions options;
  options.threads = 1;
  options.weight_dtype = DType::BF16;
  options.kv_dtype = DType::BF16;
  options.activation_dtype = DType::BF16;
  return make_cpu_backend(options);
}

std::unique_ptr<Backend> gpu_bf16() {
  CudaBackendOptions options;
  options.device = 0;
  options.weight_dtype = DType::BF16;
  options.kv_dtype = DType::BF16;
  options.activation_dtype = DType::BF16;
  return make_cuda_backend(options);
}

// Host floats as a BF16 activation (rounded on the way in).
Tensor upload_bf16(Backend& backend, const std::vector<float>& values, const Shape& shape) {
  return upload(backend, values, shape, DType::BF16);
}

// |a - b| <= relative · max(|a|, |b|) + absolute everywhere.
void check_close(const std::vector<float>& a, const std::vector<float>& b, double relative,
                 double absolute = 1e-30) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double bound = relative * std::max(std::fabs(a[i]), std::fabs(b[i])) + absolute;
    const double ratio = std::fabs(double(a[i]) - b[i]) / bound;
    if (!(ratio <= worst)) worst = ratio, at = i;
  }
  INFO("worst at " << at << ": " << a[at] << " vs " << b[at] << " (ratio " << worst << ")");
  CHECK(worst <= 1.0);
}

TEST_CASE("BF16 activations: host copies round on the way in and widen exactly on the way out",
          "[cuda][bf16]") {
  auto gpu = gpu_bf16();
  CHECK(gpu->activation_dtype() == DType::BF16);
  const auto x = random_values(1001, 1, -100.f, 100.f);
  std::vector<uint16_t> bits(x.size());
  convert_from_f32(x.data(), bits.data(), DType::BF16, x.size());
  std::vector<float> expected(x.size());
  convert_to_f32(bits.data(), DType::BF16, expected.data(), x.size());
  check_equal(download(*gpu, upload_bf16(*gpu, x, {7, 143})), expected);
}

TEST_CASE("BF16 activations: element-wise operations equal the CPU backend's", "[cuda][bf16]") {
  auto cpu = cpu_bf16();
  auto gpu = gpu_bf16();
  for (const int64_t cols : {64, 67}) {  // 8-byte loads, and the scalar path
    INFO("cols " << cols);
    const int64_t rows = 9, n = rows * cols;
    const auto g = random_values(size_t(n), 1, -8.f, 8.f), u = random_values(size_t(n), 2);
    const auto x = random_values(size_t(n), 3), bias = random_values(size_t(cols), 4);

    const Tensor cx = upload_bf16(*cpu, x, {rows, cols}), gx = upload_bf16(*gpu, x, {rows, cols});
    const Tensor cu = upload_bf16(*cpu, u, {rows, cols}), gu = upload_bf16(*gpu, u, {rows, cols});
    cpu->add(cx, cu);
    gpu->add(gx, gu);
    check_equal(download(*gpu, gu), download(*cpu, cu));

    Tensor cb = cpu->alloc({cols}, DType::F32), gb = gpu->alloc({cols}, DType::F32);
    cpu->copy_from_host(bias.data(), cb);
    gpu->copy_from_host(bias.data(), gb);
    cpu->add_bias(cb, cx);
    gpu->add_bias(gb, gx);
    check_equal(download(*gpu, gx), download(*cpu, cx));

    const Tensor cg = upload_bf16(*cpu, g, {rows, cols}), gg = upload_bf16(*gpu, g, {rows, cols});
    const Tensor co = cpu->alloc({rows, cols}, DType::BF16),
                 go = gpu->alloc({rows, cols}, DType::BF16);
    cpu->silu_mul(cg, cu, co);
    gpu->silu_mul(gg, gu, go);
    check_close(download(*gpu, go), download(*cpu, co), kBf16Ulp);

    // The residual add and its sums: the residual equal, the sums (of the
    // stored BF16 values, F32 in another order) within cols·4u.
    const Tensor cs = cpu->alloc({rows}, DType::F32), gs = gpu->alloc({rows}, DType::F32);
    cpu->add_and_sum_squares(cx, cu, cs);
    gpu->add_and_sum_squares(gx, gu, gs);
    check_equal(download(*gpu, gu), download(*cpu, cu));
    const auto cpu_sums = download(*cpu, cs);
    check_close(download(*gpu, gs), cpu_sums, double(cols) * 4.0 / (1 << 24));

    // RMSNorm from the same sums: equal.
    std::vector<float> weight = random_values(size_t(cols), 5, 0.5f, 1.5f);
    Tensor cw = cpu->alloc({cols}, DType::F32), gw = gpu->alloc({cols}, DType::F32);
    cpu->copy_from_host(weight.data(), cw);
    gpu->copy_from_host(weight.data(), gw);
    Tensor gs_cpu = gpu->alloc({rows}, DType::F32);
    gpu->copy_from_host(cpu_sums.data(), gs_cpu);
    cpu->rmsnorm_scale(cu, cs, cols * 2, cw, 1e-5f, co);
    gpu->rmsnorm_scale(gu, gs_cpu, cols * 2, gw, 1e-5f, go);
    check_equal(download(*gpu, go), download(*cpu, co));

    // Embedding from a BF16 table into BF16 rows (the head's row gather):
    // copies, equal.
    const std::vector<int32_t> ids = {3, 0, 8, 8};
    const Tensor ce = cpu->alloc({4, cols}, DType::BF16), ge = gpu->alloc({4, cols}, DType::BF16);
    cpu->embedding(cu, ids.data(), ce);
    gpu->embedding(gu, ids.data(), ge);
    check_equal(download(*gpu, ge), download(*cpu, ce));
  }
}

TEST_CASE("BF16 activations: rope, matmul, kv_write and attention", "[cuda][bf16]") {
  auto cpu = cpu_bf16();
  auto gpu = gpu_bf16();
  const int64_t tokens = 6, kv_heads = 2, group = 2, head_dim = 64, hidden = 96;
  const int64_t heads = kv_heads * group, q_width = heads * head_dim,
                kv_width = kv_heads * head_dim;

  // Matmul of BF16 x and BF16 weights into BF16: the F32 sums differ by at
  // most (K + 2)·4u·Σ|x||w| (F32 accumulation in any order on both sides,
  // doubled), then each rounds once to BF16: one BF16 ulp of the result,
  // plus the F32 difference. Σ|x||w| ≤ K for |x|, |w| ≤ 1.
  const auto x = random_values(size_t(tokens * hidden), 11);
  const auto w = random_values(size_t(q_width * hidden), 12);
  const Block2D whole{0, q_width, 0, hidden};
  const Tensor cw = cpu->upload_weight(w.data(), DType::F32, {q_width, hidden}, whole);
  const Tensor gw = gpu->upload_weight(w.data(), DType::F32, {q_width, hidden}, whole);
  const Tensor cx = upload_bf16(*cpu, x, {tokens, hidden}),
               gx = upload_bf16(*gpu, x, {tokens, hidden});
  for (const bool accumulate : {false, true}) {
    INFO("accumulate " << accumulate);
    const Tensor cq =
        upload_bf16(*cpu, random_values(size_t(tokens * q_width), 13), {tokens, q_width});
    const Tensor gq =
        upload_bf16(*gpu, random_values(size_t(tokens * q_width), 13), {tokens, q_width});
    cpu->matmul(cx, cw, cq, accumulate);
    gpu->matmul(gx, gw, gq, accumulate);
    const double k = double(hidden);
    check_close(download(*gpu, gq), download(*cpu, cq), kBf16Ulp,
                (k + 2) * 4.0 / (1 << 24) * (k + 1));
  }
  // F32 logits from BF16 activations: no rounding of the result.
  const Tensor cl = cpu->alloc({tokens, q_width}, DType::F32),
               gl = gpu->alloc({tokens, q_width}, DType::F32);
  cpu->matmul(cx, cw, cl, false);
  gpu->matmul(gx, gw, gl, false);
  check_close(download(*gpu, gl), download(*cpu, cl), 0, (hidden + 2) * 4.0 / (1 << 24) * hidden);

  // RoPE in place: the rotated F32 values within a few F32 ulps, then one
  // BF16 rounding each.
  const int64_t positions = 16, half = head_dim / 2;
  std::vector<float> cos(size_t(positions * half)), sin(cos.size());
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(p) / std::pow(10000.0, 2.0 * double(i) / double(head_dim));
      cos[size_t(p * half + i)] = float(std::cos(angle));
      sin[size_t(p * half + i)] = float(std::sin(angle));
    }
  Tensor ccos = cpu->alloc({positions, half}, DType::F32),
         csin = cpu->alloc({positions, half}, DType::F32);
  Tensor gcos = gpu->alloc({positions, half}, DType::F32),
         gsin = gpu->alloc({positions, half}, DType::F32);
  cpu->copy_from_host(cos.data(), ccos);
  cpu->copy_from_host(sin.data(), csin);
  gpu->copy_from_host(cos.data(), gcos);
  gpu->copy_from_host(sin.data(), gsin);
  const std::vector<int32_t> pos = {0, 1, 2, 3, 4, 5};
  const auto q = random_values(size_t(tokens * q_width), 14, -0.25f, 0.25f);
  const Tensor cq = upload_bf16(*cpu, q, {tokens, q_width}),
               gq = upload_bf16(*gpu, q, {tokens, q_width});
  cpu->rope(cq, int(head_dim), pos.data(), ccos, csin);
  gpu->rope(gq, int(head_dim), pos.data(), gcos, gsin);
  check_close(download(*gpu, gq), download(*cpu, cq), kBf16Ulp, 1e-6);

  // The cache from BF16 k and v: BF16 values stored as they are, equal bytes.
  const Shape shape{1, kv_heads, positions, head_dim};
  const KVCacheLayer cc{cpu->alloc_kv_cache(shape), cpu->alloc_kv_cache(shape)};
  const KVCacheLayer gc{gpu->alloc_kv_cache(shape), gpu->alloc_kv_cache(shape)};
  std::memset(cc.k.raw(), 0, cc.k.nbytes());  // the GPU's cache starts zeroed
  std::memset(cc.v.raw(), 0, cc.v.nbytes());
  const auto kv = random_values(size_t(tokens * kv_width), 15);
  const BatchLayout batch({{0, 0, int(tokens)}});
  cpu->kv_write(upload_bf16(*cpu, kv, {tokens, kv_width}),
                upload_bf16(*cpu, kv, {tokens, kv_width}), cc, batch);
  gpu->kv_write(upload_bf16(*gpu, kv, {tokens, kv_width}),
                upload_bf16(*gpu, kv, {tokens, kv_width}), gc, batch);
  CHECK(bytes_of(gc.k) == bytes_of(cc.k));
  CHECK(bytes_of(gc.v) == bytes_of(cc.v));

  // Attention of the rotated BF16 queries, output rounded to BF16: the F32
  // bound of "attention over the cache matches the CPU backend" (values in
  // [-1, 1]: 2^-9·√d·max|q|·8 + 2^-9 + 1e-5), plus one BF16 ulp.
  const AttentionHeads ah{int(head_dim), 0, 0, int(group), 0};
  const Tensor co = cpu->alloc({tokens, q_width}, DType::BF16),
               go = gpu->alloc({tokens, q_width}, DType::BF16);
  cpu->attention(cq, cc, batch, ah, co);
  gpu->attention(gq, gc, batch, ah, go);
  const double bound =
      std::ldexp(1.0, -9) * std::sqrt(double(head_dim)) * 0.25 * 8 + std::ldexp(1.0, -9) + 1e-5;
  check_close(download(*gpu, go), download(*cpu, co), kBf16Ulp, bound);
}

}  // namespace
