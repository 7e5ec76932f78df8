// The CUDA backend's operations against the CPU backend on random inputs of
// odd sizes. Each comparison states its bound and how it follows from the
// arithmetic of the two sides; where both sides do the same F32 operations
// the results must agree exactly.
//
// Notation: u = 2^-24, the unit roundoff of F32. A sum of K products
// accumulated in F32 in any order is within K·2u·Σ|terms| of the exact sum
// (γ_K ≤ K·u/(1 - K·u), doubled for slack: tensor-core accumulation may
// truncate instead of rounding to nearest). Rounding to bf16 (8 significant
// bits) moves a value by at most 2^-9 of itself, to f16 (11 bits) by 2^-11
// of itself for normal values and by 2^-25 for subnormal ones.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.hpp"
#include "kernels/math.hpp"
#include "runtime/backend.hpp"
#include "runtime/dtype.hpp"
#include "tests/gpu/backend_test_util.hpp"

using namespace shardlm;
using namespace shardlm::test;

namespace {

constexpr double kU = 1.0 / (1 << 24);  // F32 unit roundoff

std::unique_ptr<Backend> cpu_backend(std::optional<DType> weights, DType kv = DType::F32) {
  return make_cpu_backend(CpuBackendOptions{1, weights, kv});
}

std::unique_ptr<Backend> gpu_backend(std::optional<DType> weights, DType kv = DType::BF16,
                                     int64_t memory_limit = 0) {
  CudaBackendOptions options;
  options.device = 0;
  options.weight_dtype = weights;
  options.kv_dtype = kv;
  options.memory_limit = memory_limit;
  return make_cuda_backend(options);
}

// The weight values both backends hold, from the CPU backend's stored
// tensor: the CUDA backend stores what the CPU backend converts (checked
// bit for bit in "upload_weight stores the CPU backend's values").
std::vector<float> stored_values(const Tensor& w) {
  const int64_t n = w.dim(0), k = w.rank() == 2 ? w.dim(1) : 1;
  std::vector<float> values(size_t(n * k));
  if (w.dtype() == DType::I8) {
    const auto* q = w.data<int8_t>();
    const float* scales = w.scales()->data<float>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c)
        values[size_t(r * k + c)] = float(q[r * k + c]) * scales[r];  // as both widen it
  } else {
    convert_to_f32(w.raw(), w.dtype(), values.data(), values.size());
  }
  return values;
}

// x rounded to a 16-bit dtype and back, as the CUDA matmul feeds the tensor cores.
std::vector<float> rounded(const std::vector<float>& x, DType dtype) {
  if (dtype == DType::F32) return x;
  std::vector<uint16_t> bits(x.size());
  convert_from_f32(x.data(), bits.data(), dtype, x.size());
  std::vector<float> back(x.size());
  convert_to_f32(bits.data(), dtype, back.data(), x.size());
  return back;
}

// The worst |a - b| / bound over a comparison, and where.
struct Worst {
  double ratio = 0;
  size_t index = 0;
  double a = 0, b = 0, bound = 0;
  void add(size_t i, double x, double y, double limit) {
    const double r = std::fabs(x - y) / limit;
    if (!(r <= ratio)) *this = {r, i, x, y, limit};  // NaN is worst of all
  }
  std::string str() const {
    return "index " + std::to_string(index) + ": " + std::to_string(a) + " vs " +
           std::to_string(b) + " (bound " + std::to_string(bound) + ", ratio " +
           std::to_string(ratio) + ")";
  }
};

// ---------------------------------------------------------------------------
// Matmul.

// One configuration: the GPU result is checked twice.
// 1. Against a host reference that rounds its operands exactly as the GPU
//    does (x to the weight's 16-bit type; for I8 with more than 16 rows the
//    weight to bf16(q·scale) as the dequantised panels hold it), summed in
//    double: only F32 accumulation separates them, so
//      |gpu - ref| ≤ (K + 2)·2u·(Σ|x̃||w̃| + |out₀|)
//    (+2: the final rounding and the accumulate addition). A wrong layout,
//    transposition or stride is off by O(|out|), far above it.
// 2. Against the CPU backend, through the exact product e = Σ x·w (+ out₀)
//    of the stored weights: |gpu - cpu| ≤ |gpu - e| + |cpu - e| with
//      |gpu - e| ≤ ρx·S + ρw·S + ρx·ρw·S + (K + 2)·2u·(S + |out₀|) + K·2^-25·max|w|
//      (ρx = 2^-9 bf16, 2^-11 f16, 0 for F32 weights and the int8 GEMV;
//       ρw = 2^-9 for the dequantised int8 panels, else 0; the last term is
//       f16's subnormal rounding of small x),
//      |cpu - e| ≤ (K + 2)·2u·(S + |out₀|) + [I8, m ≤ 16] 2^-16·max|x_m|·Σ|w_n|
//      (the CPU's int8 path rounds each row of x to int16: |δx| ≤ max|x|/65534),
//    where S = Σ|x||w|.
struct MatmulCase {
  DType dtype;
  int64_t m, k, n;
  bool accumulate;
};

std::string case_str(const MatmulCase& c) {
  return std::string(dtype_name(c.dtype)) + " m=" + std::to_string(c.m) +
         " k=" + std::to_string(c.k) + " n=" + std::to_string(c.n) +
         (c.accumulate ? " accumulate" : "");
}

void check_matmul(const MatmulCase& c, const std::vector<float>& x, const std::vector<float>& out0,
                  const std::vector<float>& w_stored, const std::vector<float>& gpu,
                  const std::vector<float>& cpu) {
  const int64_t m = c.m, k = c.k, n = c.n;
  const bool int8_gemv = c.dtype == DType::I8 && m <= 16;
  const bool int8_panels = c.dtype == DType::I8 && m > 16;
  // What the GPU multiplies.
  const DType x_type = c.dtype == DType::BF16 || c.dtype == DType::F16 ? c.dtype
                       : int8_panels                                   ? DType::BF16
                                                                       : DType::F32;
  const std::vector<float> x_gpu = rounded(x, x_type);
  const std::vector<float> w_gpu = int8_panels ? rounded(w_stored, DType::BF16) : w_stored;
  const double rho_x = x_type == DType::BF16 ? 1.0 / 512 : x_type == DType::F16 ? 1.0 / 2048 : 0;
  const double rho_w = int8_panels ? 1.0 / 512 : 0;
  double max_w = 0;
  for (float v : w_stored) max_w = std::max(max_w, double(std::fabs(v)));

  Worst vs_reference, vs_cpu;
  for (int64_t i = 0; i < m; ++i) {
    double max_x = 0;
    for (int64_t p = 0; p < k; ++p)
      max_x = std::max(max_x, double(std::fabs(x[size_t(i * k + p)])));
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0, s_ref = 0, s = 0, w_abs = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double xv = x[size_t(i * k + p)], wv = w_stored[size_t(j * k + p)];
        const double xg = x_gpu[size_t(i * k + p)], wg = w_gpu[size_t(j * k + p)];
        ref += xg * wg;
        s_ref += std::fabs(xg * wg);
        s += std::fabs(xv * wv);
        w_abs += std::fabs(wv);
      }
      const size_t o = size_t(i * n + j);
      const double prior = c.accumulate ? double(out0[o]) : 0.0;
      const double accumulation = double(k + 2) * 2 * kU;
      vs_reference.add(o, gpu[o], ref + prior, accumulation * (s_ref + std::fabs(prior)) + 1e-30);
      const double gpu_bound = (rho_x + rho_w + rho_x * rho_w) * s +
                               accumulation * (s + std::fabs(prior)) +
                               double(k) * std::ldexp(1.0, -25) * max_w;
      const double cpu_bound = accumulation * (s + std::fabs(prior)) +
                               (int8_gemv ? std::ldexp(1.0, -16) * max_x * w_abs : 0.0);
      vs_cpu.add(o, gpu[o], cpu[o], gpu_bound + cpu_bound + 1e-30);
    }
  }
  INFO(case_str(c));
  INFO("GPU vs its rounding's reference: " << vs_reference.str());
  CHECK(vs_reference.ratio <= 1.0);
  INFO("GPU vs CPU backend: " << vs_cpu.str());
  CHECK(vs_cpu.ratio <= 1.0);
}

}  // namespace

TEST_CASE("matmul matches the CPU backend for every weight dtype, shape and path",
          "[cuda][matmul]") {
  for (const DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
    auto cpu = cpu_backend(dtype);
    auto gpu = gpu_backend(dtype);
    for (const int64_t k : {64, 200})
      for (const int64_t n : {96, 257}) {
        const std::vector<float> w = random_values(size_t(n * k), uint32_t(n * 31 + k));
        const Shape shape{n, k};
        const Block2D whole{0, n, 0, k};
        const Tensor cpu_w = cpu->upload_weight(w.data(), DType::F32, shape, whole);
        const Tensor gpu_w = gpu->upload_weight(w.data(), DType::F32, shape, whole);
        REQUIRE(gpu_w.dtype() == dtype);
        const std::vector<float> w_stored = stored_values(cpu_w);
        for (const int64_t m : {1, 3, 16, 17, 130})
          for (const bool accumulate : {false, true}) {
            const MatmulCase c{dtype, m, k, n, accumulate};
            const auto x = random_values(size_t(m * k), uint32_t(m * 7 + k + n));
            const auto out0 = random_values(size_t(m * n), uint32_t(m + 3 * n));
            const Tensor cx = upload(*cpu, x, {m, k}), gx = upload(*gpu, x, {m, k});
            const Tensor co = upload(*cpu, out0, {m, n}), go = upload(*gpu, out0, {m, n});
            cpu->matmul(cx, cpu_w, co, accumulate);
            gpu->matmul(gx, gpu_w, go, accumulate);
            check_matmul(c, x, out0, w_stored, download(*gpu, go), download(*cpu, co));
          }
      }
  }
}

TEST_CASE("matmul on row views at unaligned offsets", "[cuda][matmul]") {
  // K = 67: a view starting at row 1 is 268 bytes in (4-byte aligned only),
  // and the output view N = 33 floats in: cuBLASLt must be told, and the
  // int8 GEMV must take its scalar path.
  const int64_t m_total = 20, k = 67, n = 33;
  for (const DType dtype : {DType::F32, DType::BF16, DType::I8}) {
    auto cpu = cpu_backend(dtype);
    auto gpu = gpu_backend(dtype);
    const auto w = random_values(size_t(n * k), 5);
    const Tensor cpu_w = cpu->upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k});
    const Tensor gpu_w = gpu->upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k});
    const auto w_stored = stored_values(cpu_w);
    for (const int64_t m : {5, 18}) {
      const auto x_all = random_values(size_t(m_total * k), 9);
      const auto out_all = random_values(size_t(m_total * n), 10);
      const Tensor cx = upload(*cpu, x_all, {m_total, k}), gx = upload(*gpu, x_all, {m_total, k});
      const Tensor co = upload(*cpu, out_all, {m_total, n}),
                   go = upload(*gpu, out_all, {m_total, n});
      cpu->matmul(cx.rows(1, m), cpu_w, co.rows(1, m), true);
      gpu->matmul(gx.rows(1, m), gpu_w, go.rows(1, m), true);
      const std::vector<float> x(x_all.begin() + k, x_all.begin() + (1 + m) * k);
      const std::vector<float> out0(out_all.begin() + n, out_all.begin() + (1 + m) * n);
      const auto gpu_all = download(*gpu, go), cpu_all = download(*cpu, co);
      check_matmul({dtype, m, k, n, true}, x, out0, w_stored,
                   std::vector<float>(gpu_all.begin() + n, gpu_all.begin() + (1 + m) * n),
                   std::vector<float>(cpu_all.begin() + n, cpu_all.begin() + (1 + m) * n));
      // The rows around the views are untouched.
      CHECK(std::equal(gpu_all.begin(), gpu_all.begin() + n, out_all.begin()));
      CHECK(
          std::equal(gpu_all.begin() + (1 + m) * n, gpu_all.end(), out_all.begin() + (1 + m) * n));
    }
  }
}

TEST_CASE("matmul with k = 0 and empty shapes", "[cuda][matmul]") {
  auto gpu = gpu_backend(DType::BF16);
  const std::vector<float> w(1, 0.f);
  const Tensor w0 = gpu->upload_weight(w.data(), DType::F32, {4, 0}, {0, 4, 0, 0});
  const auto out0 = random_values(12, 1);
  const Tensor out = upload(*gpu, out0, {3, 4});
  gpu->matmul(gpu->alloc({3, 0}, DType::F32), w0, out, true);
  check_equal(download(*gpu, out), out0);  // adds nothing
  gpu->matmul(gpu->alloc({3, 0}, DType::F32), w0, out, false);
  check_equal(download(*gpu, out), std::vector<float>(12, 0.f));
}

TEST_CASE("upload_weight stores the CPU backend's values", "[cuda][weights]") {
  const int64_t rows = 37, cols = 91;
  const auto full = random_values(size_t(rows * cols), 21);
  // A column block of the middle rows, as a tensor-parallel shard is read.
  const Block2D block{5, 20, 13, 40};
  for (const DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
    INFO(dtype_name(dtype));
    auto cpu = cpu_backend(dtype);
    auto gpu = gpu_backend(dtype);
    const Tensor c = cpu->upload_weight(full.data(), DType::F32, {rows, cols}, block);
    const Tensor g = gpu->upload_weight(full.data(), DType::F32, {rows, cols}, block);
    CHECK(g.shape() == c.shape());
    CHECK(g.dtype() == dtype);
    CHECK(g.device() == Device::CUDA);
    CHECK(bytes_of(g) == bytes_of(c));
    REQUIRE((g.scales() != nullptr) == (dtype == DType::I8));
    if (g.scales()) CHECK(bytes_of(*g.scales()) == bytes_of(*c.scales()));
  }
  // Checkpoint dtypes: F32 matrices become BF16, others stay; 1-D stays F32.
  auto gpu = gpu_backend(std::nullopt);
  std::vector<uint16_t> f16(size_t(rows * cols));
  convert_from_f32(full.data(), f16.data(), DType::F16, f16.size());
  CHECK(gpu->upload_weight(full.data(), DType::F32, {rows, cols}, {0, rows, 0, cols}).dtype() ==
        DType::BF16);
  CHECK(gpu->upload_weight(f16.data(), DType::F16, {rows, cols}, {0, rows, 0, cols}).dtype() ==
        DType::F16);
  const Tensor norm = gpu->upload_weight(full.data(), DType::F32, {cols}, {0, 1, 10, 30});
  CHECK(norm.dtype() == DType::F32);
  CHECK(norm.shape() == Shape{30});
  check_equal(download(*gpu, norm), std::vector<float>(full.begin() + 10, full.begin() + 40));
}

// ---------------------------------------------------------------------------
// Element-wise and row-wise operations.

TEST_CASE("embedding of every table dtype equals the CPU backend's", "[cuda][elementwise]") {
  // Both widen the same stored values (bf16/f16 exactly, int8 as one F32
  // product q·scale): the rows must be equal bit for bit.
  const int64_t vocab = 50, width = 67;
  const auto table = random_values(size_t(vocab * width), 4);
  const std::vector<int32_t> ids = {0, 49, 7, 7, 23, 1, 48, 30, 12, 0, 5};
  const int64_t tokens = int64_t(ids.size());
  for (const DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
    INFO(dtype_name(dtype));
    auto cpu = cpu_backend(dtype);
    auto gpu = gpu_backend(dtype);
    const Tensor ct =
        cpu->upload_weight(table.data(), DType::F32, {vocab, width}, {0, vocab, 0, width});
    const Tensor gt =
        gpu->upload_weight(table.data(), DType::F32, {vocab, width}, {0, vocab, 0, width});
    const Tensor co = cpu->alloc({tokens, width}, DType::F32);
    const Tensor go = gpu->alloc({tokens, width}, DType::F32);
    cpu->embedding(ct, ids.data(), co);
    gpu->embedding(gt, ids.data(), go);
    check_equal(download(*gpu, go), download(*cpu, co));
  }
  auto gpu = gpu_backend(DType::BF16);
  const Tensor gt =
      gpu->upload_weight(table.data(), DType::F32, {vocab, width}, {0, vocab, 0, width});
  const int32_t bad = int32_t(vocab);
  CHECK_THROWS_WITH(gpu->embedding(gt, &bad, gpu->alloc({1, width}, DType::F32)),
                    Catch::Contains("outside the table"));
}

TEST_CASE("row sums of squares and RMSNorm match the CPU backend", "[cuda][elementwise]") {
  auto cpu = cpu_backend(DType::F32);
  auto gpu = gpu_backend(DType::BF16);
  for (const int64_t width : {67, 256, 4096}) {
    const int64_t rows = 5;
    INFO("width " << width);
    const auto x = random_values(size_t(rows * width), uint32_t(width), -3.f, 3.f);
    const auto weight = random_values(size_t(width), uint32_t(width + 1), 0.5f, 1.5f);
    const Tensor cx = upload(*cpu, x, {rows, width}), gx = upload(*gpu, x, {rows, width});
    const Tensor cw = upload(*cpu, weight, {width}), gw = upload(*gpu, weight, {width});

    // Sums of squares: positive terms in different orders, each within
    // width·u·Σx² of the exact sum (2u for slack).
    const Tensor cs = cpu->alloc({rows}, DType::F32), gs = gpu->alloc({rows}, DType::F32);
    cpu->row_sum_squares(cx, cs);
    gpu->row_sum_squares(gx, gs);
    const auto cpu_sums = download(*cpu, cs), gpu_sums = download(*gpu, gs);
    Worst sums;
    for (size_t r = 0; r < size_t(rows); ++r)
      sums.add(r, gpu_sums[r], cpu_sums[r], 2 * double(width) * 2 * kU * cpu_sums[r]);
    INFO("sums: " << sums.str());
    CHECK(sums.ratio <= 1.0);

    // rmsnorm_scale from the same sums: the same F32 operations in the same
    // order (IEEE division and square root on both), so equal results.
    const float eps = 1e-5f;
    const int64_t full_width = width * 3;  // as when x holds a third of each row
    const Tensor gs_cpu = upload(*gpu, cpu_sums, {rows});
    const Tensor co = cpu->alloc({rows, width}, DType::F32),
                 go = gpu->alloc({rows, width}, DType::F32);
    cpu->rmsnorm_scale(cx, cs, full_width, cw, eps, co);
    gpu->rmsnorm_scale(gx, gs_cpu, full_width, gw, eps, go);
    check_equal(download(*gpu, go), download(*cpu, co));

    // The whole RMSNorm: the sums differ by at most 2·width·u relative (the
    // bound above without its slack), which moves 1/sqrt by half as much:
    // width·u; each side then rounds a division, an addition, a square root,
    // a reciprocal and two products (6u), 12u for both.
    cpu->rmsnorm(cx, cw, eps, co);
    gpu->rmsnorm(gx, gw, eps, go);
    const auto a = download(*gpu, go), b = download(*cpu, co);
    Worst norm;
    for (size_t i = 0; i < a.size(); ++i)
      norm.add(i, a[i], b[i], (double(width) * 2 * kU + 12 * kU) * std::fabs(b[i]) + 1e-30);
    INFO("rmsnorm: " << norm.str());
    CHECK(norm.ratio <= 1.0);
  }
}

TEST_CASE("add_and_sum_squares: the residual add and its sums of squares in one pass",
          "[cuda][elementwise]") {
  auto cpu = cpu_backend(DType::F32);
  auto gpu = gpu_backend(DType::BF16);
  // 67: the scalar path; 256 and 4096: 16-byte loads; rows 1..4 of a larger
  // tensor: a view that starts one row in, as the engine's row views do.
  for (const int64_t width : {67, 256, 4096}) {
    const int64_t rows = 6;
    INFO("width " << width);
    const auto residual = random_values(size_t(rows * width), uint32_t(width + 2), -3.f, 3.f);
    const auto x = random_values(size_t(rows * width), uint32_t(width + 3), -3.f, 3.f);
    const Tensor cr = upload(*cpu, residual, {rows, width}),
                 gr = upload(*gpu, residual, {rows, width});
    const Tensor cx = upload(*cpu, x, {rows, width}), gx = upload(*gpu, x, {rows, width});
    const Tensor cs = cpu->alloc({rows - 2}, DType::F32), gs = gpu->alloc({rows - 2}, DType::F32);
    cpu->add_and_sum_squares(cx.rows(1, rows - 2), cr.rows(1, rows - 2), cs);
    gpu->add_and_sum_squares(gx.rows(1, rows - 2), gr.rows(1, rows - 2), gs);

    // The residual: one F32 addition per element on both sides, and rows
    // outside the view untouched: equal.
    const auto gpu_residual = download(*gpu, gr);
    check_equal(gpu_residual, download(*cpu, cr));
    for (int64_t i = 0; i < width; ++i) {
      CHECK(gpu_residual[size_t(i)] == residual[size_t(i)]);
      CHECK(gpu_residual[size_t((rows - 1) * width + i)] ==
            residual[size_t((rows - 1) * width + i)]);
    }
    // The sums: the CPU's bound of row_sum_squares (above) against the CPU,
    // and term for term what row_sum_squares of the new residual gives on
    // the device (the same loop and order): equal.
    const auto cpu_sums = download(*cpu, cs), gpu_sums = download(*gpu, gs);
    Worst sums;
    for (size_t r = 0; r < cpu_sums.size(); ++r)
      sums.add(r, gpu_sums[r], cpu_sums[r], 2 * double(width) * 2 * kU * cpu_sums[r]);
    INFO("sums: " << sums.str());
    CHECK(sums.ratio <= 1.0);
    const Tensor separate = gpu->alloc({rows - 2}, DType::F32);
    gpu->row_sum_squares(gr.rows(1, rows - 2), separate);
    check_equal(gpu_sums, download(*gpu, separate));
  }
}

TEST_CASE("rope matches the CPU backend", "[cuda][elementwise]") {
  // Each output is a·c - b·s (or b·c + a·s) from the same a, b, c, s on both
  // sides. Unfused, fl(fl(a·c) - fl(b·s)) is within u·|a·c| + u·|b·s| + u·|result|
  // of the exact value; fused (an FMA, which either compiler may form) within
  // u·|b·s| + u·|result|: either way within 2u·(|a| + |b|) as |c|, |s| ≤ 1,
  // so the two sides within 4u·(|a| + |b|), doubled for slack.
  const int64_t positions = 40;
  for (const int head_dim : {64, 6}) {
    INFO("head_dim " << head_dim);
    const int64_t tokens = 7, heads = 3, half = head_dim / 2;
    std::vector<float> cos(size_t(positions * half)), sin(cos.size());
    for (int64_t p = 0; p < positions; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const double angle = double(p) * math::rope_inv_freq(int(i), head_dim, 10000.0);
        cos[size_t(p * half + i)] = float(std::cos(angle));
        sin[size_t(p * half + i)] = float(std::sin(angle));
      }
    const std::vector<int32_t> pos = {0, 39, 5, 6, 7, 20, 3};
    const auto x = random_values(size_t(tokens * heads * head_dim), 8);
    auto cpu = cpu_backend(DType::F32);
    auto gpu = gpu_backend(DType::BF16);
    const Tensor cx = upload(*cpu, x, {tokens, heads * head_dim});
    const Tensor gx = upload(*gpu, x, {tokens, heads * head_dim});
    cpu->rope(cx, head_dim, pos.data(), upload(*cpu, cos, {positions, half}),
              upload(*cpu, sin, {positions, half}));
    gpu->rope(gx, head_dim, pos.data(), upload(*gpu, cos, {positions, half}),
              upload(*gpu, sin, {positions, half}));
    const auto a = download(*gpu, gx), b = download(*cpu, cx);
    Worst worst;
    for (size_t i = 0; i < a.size(); ++i) {
      const size_t head = i / size_t(head_dim), lane = i % size_t(head_dim) % size_t(half);
      const double pair =
          std::fabs(x[head * head_dim + lane]) + std::fabs(x[head * head_dim + lane + half]);
      worst.add(i, a[i], b[i], 2 * 4 * kU * pair + 1e-30);
    }
    INFO(worst.str());
    CHECK(worst.ratio <= 1.0);
  }
}

TEST_CASE("silu_mul, add and add_bias match the CPU backend", "[cuda][elementwise]") {
  auto cpu = cpu_backend(DType::F32);
  auto gpu = gpu_backend(DType::BF16);
  for (const int64_t cols : {64, 67}) {
    const int64_t rows = 31, n = rows * cols;
    INFO("cols " << cols);
    const auto g = random_values(size_t(n), 1, -8.f, 8.f), u = random_values(size_t(n), 2);
    const auto x = random_values(size_t(n), 3), bias = random_values(size_t(cols), 4);

    // silu(g)·u: the CPU's vector exp is within 1e-6 relative, the GPU's
    // expf within 2 ulp; g/(1 + e) moves by at most e's relative error,
    // then a division and a product round: 1e-6 + 4u relative, doubled.
    const Tensor cg = upload(*cpu, g, {rows, cols}), gg = upload(*gpu, g, {rows, cols});
    const Tensor cu = upload(*cpu, u, {rows, cols}), gu = upload(*gpu, u, {rows, cols});
    const Tensor co = cpu->alloc({rows, cols}, DType::F32),
                 go = gpu->alloc({rows, cols}, DType::F32);
    cpu->silu_mul(cg, cu, co);
    gpu->silu_mul(gg, gu, go);
    const auto a = download(*gpu, go), b = download(*cpu, co);
    Worst silu;
    for (size_t i = 0; i < a.size(); ++i)
      silu.add(i, a[i], b[i], 2 * (1e-6 + 4 * kU) * std::fabs(b[i]) + 1e-30);
    INFO("silu_mul: " << silu.str());
    CHECK(silu.ratio <= 1.0);
    // In place (out is gate), as the decoder block calls it: the same values.
    gpu->silu_mul(gg, gu, gg);
    check_equal(download(*gpu, gg), a);

    // One F32 addition per element on both sides: equal.
    const Tensor cx = upload(*cpu, x, {rows, cols}), gx = upload(*gpu, x, {rows, cols});
    cpu->add(cx, cu);
    gpu->add(gx, gu);
    check_equal(download(*gpu, gu), download(*cpu, cu));
    const Tensor cb = upload(*cpu, bias, {cols}), gb = upload(*gpu, bias, {cols});
    cpu->add_bias(cb, cx);
    gpu->add_bias(gb, gx);
    check_equal(download(*gpu, gx), download(*cpu, cx));
  }
}

TEST_CASE("copy_2d moves rectangles of any dtype as the CPU backend does", "[cuda][copy]") {
  const auto src_values = random_values(7 * 13, 1), dst_values = random_values(9 * 11, 2);
  auto cpu = cpu_backend(DType::BF16);
  auto gpu = gpu_backend(DType::BF16);
  // F32 activations.
  const Tensor cs = upload(*cpu, src_values, {7, 13}), gs = upload(*gpu, src_values, {7, 13});
  const Tensor cd = upload(*cpu, dst_values, {9, 11}), gd = upload(*gpu, dst_values, {9, 11});
  cpu->copy_2d(cs, 2, 3, cd, 1, 4, 4, 5);
  gpu->copy_2d(gs, 2, 3, gd, 1, 4, 4, 5);
  check_equal(download(*gpu, gd), download(*cpu, cd));
  // BF16 weights (as gather_weight joins blocks).
  const Tensor cws = cpu->upload_weight(src_values.data(), DType::F32, {7, 13}, {0, 7, 0, 13});
  const Tensor gws = gpu->upload_weight(src_values.data(), DType::F32, {7, 13}, {0, 7, 0, 13});
  const Tensor cwd = cpu->upload_weight(dst_values.data(), DType::F32, {9, 11}, {0, 9, 0, 11});
  const Tensor gwd = gpu->upload_weight(dst_values.data(), DType::F32, {9, 11}, {0, 9, 0, 11});
  cpu->copy_2d(cws, 0, 0, cwd, 5, 0, 2, 11);
  gpu->copy_2d(gws, 0, 0, gwd, 5, 0, 2, 11);
  CHECK(bytes_of(gwd) == bytes_of(cwd));
  CHECK_THROWS(gpu->copy_2d(gs, 0, 10, gd, 0, 0, 1, 5));  // past the source's columns
}

TEST_CASE("host copies through the staging ring arrive intact", "[cuda][copy]") {
  // More copies than the ring has slots, without a sync between them, and
  // one larger than a chunk: a slot reused too early would corrupt a copy.
  auto gpu = gpu_backend(DType::BF16);
  std::vector<Tensor> tensors;
  std::vector<std::vector<float>> expected;
  std::vector<float> source;
  for (int i = 0; i < 200; ++i) {
    const int64_t n = i == 100 ? (int64_t(3) << 20) / 4 + 5 : 17 + i;  // 3 MiB: three chunks
    source = random_values(size_t(n), uint32_t(i));
    expected.push_back(source);
    tensors.push_back(upload(*gpu, source, {n}));
    std::fill(source.begin(), source.end(), -1.f);  // the caller reuses its memory at once
  }
  for (size_t i = 0; i < tensors.size(); ++i) check_equal(download(*gpu, tensors[i]), expected[i]);
}

// ---------------------------------------------------------------------------
// KV cache, attention and sampling through the backend.

TEST_CASE("kv_write fills the cache as the CPU backend does", "[cuda][attention]") {
  // Both round k and v to bf16 to nearest even: equal bytes.
  const int64_t slots = 3, kv_heads = 2, capacity = 24, head_dim = 64;
  const Shape shape{slots, kv_heads, capacity, head_dim};
  auto cpu = cpu_backend(DType::F32, DType::BF16);
  auto gpu = gpu_backend(DType::BF16, DType::BF16);
  const KVCacheLayer cc{cpu->alloc_kv_cache(shape), cpu->alloc_kv_cache(shape)};
  const KVCacheLayer gc{gpu->alloc_kv_cache(shape), gpu->alloc_kv_cache(shape)};
  std::memset(cc.k.raw(), 0, cc.k.nbytes());  // the GPU's cache starts zeroed
  std::memset(cc.v.raw(), 0, cc.v.nbytes());
  const BatchLayout batch({{2, 0, 5}, {0, 3, 4}});
  const int64_t tokens = batch.num_tokens(), width = kv_heads * head_dim;
  const auto k = random_values(size_t(tokens * width), 1),
             v = random_values(size_t(tokens * width), 2);
  cpu->kv_write(upload(*cpu, k, {tokens, width}), upload(*cpu, v, {tokens, width}), cc, batch);
  gpu->kv_write(upload(*gpu, k, {tokens, width}), upload(*gpu, v, {tokens, width}), gc, batch);
  CHECK(bytes_of(gc.k) == bytes_of(cc.k));
  CHECK(bytes_of(gc.v) == bytes_of(cc.v));
  CHECK_THROWS_WITH(gpu->kv_write(upload(*gpu, k, {1, width}), upload(*gpu, v, {1, width}), gc,
                                  BatchLayout({{1, capacity, 1}})),
                    Catch::Contains("capacity"));
}

TEST_CASE("attention over the cache matches the CPU backend", "[cuda][attention]") {
  // Values carry their slot: v = 4·slot + U(-1, 1), so reading another
  // sequence's cache is off by about 4. The bound allows what a
  // tensor-core kernel may round: q to bf16 moves each score by at most
  // ε = 2^-9·Σ|q||k|/√d ≤ 2^-9·√d·max|q|·max|k|, the softmax weights by a
  // factor within e^(±2ε), so the output (a convex combination of values)
  // by 4ε·spread, spread = 2 the range of a slot's values; the weights
  // rounded to bf16 for P·V move it by 2^-9·max|v|; F32 accumulation and
  // exp approximations add well under 1e-5·max|v|.
  const int64_t slots = 3, kv_heads = 2, capacity = 40, head_dim = 64, group = 2;
  const int64_t heads = kv_heads * group;
  const Shape shape{slots, kv_heads, capacity, head_dim};
  for (const int window : {0, 6}) {
    INFO("window " << window);
    auto cpu = cpu_backend(DType::F32, DType::BF16);
    auto gpu = gpu_backend(DType::BF16, DType::BF16);
    const KVCacheLayer cc{cpu->alloc_kv_cache(shape), cpu->alloc_kv_cache(shape)};
    const KVCacheLayer gc{gpu->alloc_kv_cache(shape), gpu->alloc_kv_cache(shape)};
    const AttentionHeads ah{int(head_dim), 0, 0, int(group), window};
    uint32_t seed = 100;
    auto step = [&](const BatchLayout& batch) {
      const int64_t tokens = batch.num_tokens(), kv_width = kv_heads * head_dim;
      const float q_scale = 0.25f;
      const auto q = random_values(size_t(tokens * heads * head_dim), seed++, -q_scale, q_scale);
      const auto k = random_values(size_t(tokens * kv_width), seed++);
      auto v = random_values(size_t(tokens * kv_width), seed++);
      int64_t t = 0;
      for (const Segment& seg : batch.segments)
        for (int i = 0; i < seg.num_tokens; ++i, ++t)
          for (int64_t c = 0; c < kv_width; ++c)
            v[size_t(t * kv_width + c)] += 4.0f * float(seg.slot);
      const double max_v = 4.0 * double(slots - 1) + 1.0;  // over every slot's values
      cpu->kv_write(upload(*cpu, k, {tokens, kv_width}), upload(*cpu, v, {tokens, kv_width}), cc,
                    batch);
      gpu->kv_write(upload(*gpu, k, {tokens, kv_width}), upload(*gpu, v, {tokens, kv_width}), gc,
                    batch);
      const Tensor co = cpu->alloc({tokens, heads * head_dim}, DType::F32);
      const Tensor go = gpu->alloc({tokens, heads * head_dim}, DType::F32);
      cpu->attention(upload(*cpu, q, {tokens, heads * head_dim}), cc, batch, ah, co);
      gpu->attention(upload(*gpu, q, {tokens, heads * head_dim}), gc, batch, ah, go);
      const double epsilon = std::ldexp(1.0, -9) * std::sqrt(double(head_dim)) * q_scale * 1.0;
      const double bound = 4 * epsilon * 2.0 + std::ldexp(1.0, -9) * max_v + 1e-5 * max_v;
      const auto a = download(*gpu, go), b = download(*cpu, co);
      Worst worst;
      for (size_t i = 0; i < a.size(); ++i) worst.add(i, a[i], b[i], bound);
      INFO(worst.str());
      CHECK(worst.ratio <= 1.0);
    };
    step(BatchLayout({{0, 0, 9}, {2, 0, 17}}));              // prefill of two sequences
    step(BatchLayout({{0, 9, 1}, {1, 0, 3}, {2, 17, 1}}));   // mixed
    step(BatchLayout({{0, 10, 1}, {1, 3, 1}, {2, 18, 1}}));  // decode
  }
}

TEST_CASE("sample on the device picks the CPU backend's tokens", "[cuda][sampling]") {
  // Greedy, and top-k 1 at any temperature, take the largest logit: random
  // logits have a unique maximum, so both must pick it.
  const int64_t rows = 5, vocab = 1003;
  const auto logits = random_values(size_t(rows * vocab), 77, -5.f, 5.f);
  const std::vector<double> uniforms = {0.1, 0.5, 0.9, 0.0, 0.999};
  auto cpu = cpu_backend(DType::F32);
  auto gpu = gpu_backend(DType::BF16);
  const Tensor cl = upload(*cpu, logits, {rows, vocab}), gl = upload(*gpu, logits, {rows, vocab});
  for (const SamplingParams params :
       {SamplingParams{0.f, 0, 1.f, 0}, SamplingParams{0.8f, 1, 1.f, 0}}) {
    std::vector<int32_t> a(size_t(rows), -1), b(size_t(rows), -2);
    gpu->sample(gl, params, uniforms.data(), a.data());
    cpu->sample(cl, params, uniforms.data(), b.data());
    CHECK(a == b);
  }
}

// ---------------------------------------------------------------------------
// Memory.

TEST_CASE("memory is accounted by purpose, exactly", "[cuda][memory]") {
  auto gpu = gpu_backend(std::nullopt);
  const MemoryUsage start = gpu->memory_usage();
  CHECK(start.weights == 0);
  CHECK(start.kv_cache == 0);
  CHECK(start.workspace >= int64_t(32) << 20);  // the cuBLASLt workspace
  const int64_t n = 257, k = 200;
  const auto w = random_values(size_t(n * k), 3);
  {
    const Tensor bf16 = gpu->upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k});
    CHECK(gpu->memory_usage().weights == n * k * 2);
    const Tensor norm = gpu->upload_weight(w.data(), DType::F32, {k}, {0, 1, 0, k});
    CHECK(gpu->memory_usage().weights == n * k * 2 + k * 4);
    auto int8 = gpu_backend(DType::I8);
    const Tensor q = int8->upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k});
    CHECK(int8->memory_usage().weights == n * k + n * 4);  // values and per-row scales
    const Shape cache{2, 4, 33, 64};
    const Tensor kv = gpu->alloc_kv_cache(cache);
    CHECK(gpu->memory_usage().kv_cache == 2 * 4 * 33 * 64 * 2);  // bf16 by default
    const int64_t peak = gpu->memory_usage().activations_peak;
    {
      const Tensor a = gpu->alloc({1000, 250}, DType::F32);
      CHECK(gpu->memory_usage().activations_peak >= 1000 * 250 * 4);
    }
    CHECK(gpu->memory_usage().activations_peak >= peak);
  }
  // Released tensors are no longer held.
  CHECK(gpu->memory_usage().weights == 0);
  CHECK(gpu->memory_usage().kv_cache == 0);
}

TEST_CASE("allocations past the limit or the device throw naming their purpose", "[cuda][memory]") {
  {
    auto gpu = gpu_backend(DType::BF16, DType::BF16, int64_t(64) << 20);
    const MemoryUsage before = gpu->memory_usage();
    CHECK_THROWS_WITH(gpu->alloc_kv_cache({16, 8, 4096, 128}),
                      Catch::Contains("for the KV cache does not fit under the memory limit"));
    CHECK_THROWS_WITH(gpu->alloc({8192, 8192}, DType::F32),
                      Catch::Contains("for activations does not fit"));
    // 64 MiB once stored as bf16: over the limit with the 32 MiB workspace held.
    const auto w = random_values(size_t(8192 * 4096), 1);
    CHECK_THROWS_WITH(gpu->upload_weight(w.data(), DType::F32, {8192, 4096}, {0, 8192, 0, 4096}),
                      Catch::Contains("for weights does not fit"));
    CHECK(gpu->memory_usage().kv_cache == before.kv_cache);
    CHECK(gpu->memory_usage().weights == before.weights);
    // What fits still does.
    CHECK_NOTHROW(gpu->alloc({1024, 1024}, DType::F32));
  }
  auto gpu = gpu_backend(DType::BF16);
  // A KV cache of bf16 values 1 GiB larger than the whole device.
  size_t free_bytes = 0, total_bytes = 0;
  REQUIRE(cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess);
  const int64_t planes = int64_t((total_bytes + (size_t(1) << 30)) / (1024 * 512 * 2)) + 1;
  CHECK_THROWS_WITH(gpu->alloc_kv_cache({planes, 1, 1024, 512}),
                    Catch::Contains("for the KV cache does not fit") && Catch::Contains("free of"));
  CHECK_NOTHROW(gpu->alloc({1024, 1024}, DType::F32));  // the backend still works
}

TEST_CASE("describe names the device, the architecture and the dtypes", "[cuda]") {
  auto gpu = gpu_backend(DType::I8, DType::F16);
  const std::string text = gpu->describe();
  INFO(text);
  CHECK(text.rfind("cuda (", 0) == 0);
  CHECK(text.find("sm_") != std::string::npos);
  CHECK(text.find("cuBLASLt ") != std::string::npos);
  CHECK(text.find("int8 weights, f16 KV cache") != std::string::npos);
  CHECK(gpu->kv_dtype() == DType::F16);
  CHECK(gpu->device() == Device::CUDA);
  CHECK(cuda_backend_stream(*gpu) != nullptr);
}
