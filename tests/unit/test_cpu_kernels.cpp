// The CPU backend's kernels against plain reference loops: matmul for every
// weight dtype on both paths (streaming and panel) and through the backend's
// dispatch, the int8 quantization, copy_2d and embedding of every dtype.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.hpp"
#include "kernels/math.hpp"
#include "runtime/backend.hpp"

using namespace shardlm;

namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// What a weight row holds once stored as `dtype`: the reference rounding.
std::vector<float> stored_values(const std::vector<float>& w, int64_t n, int64_t k, DType dtype) {
  std::vector<float> out(w.size());
  for (int64_t r = 0; r < n; ++r) {
    float max_abs = 0;
    for (int64_t c = 0; c < k; ++c) max_abs = std::max(max_abs, std::fabs(w[size_t(r * k + c)]));
    const float scale = math::int8_scale(max_abs);
    for (int64_t c = 0; c < k; ++c) {
      const float v = w[size_t(r * k + c)];
      float& o = out[size_t(r * k + c)];
      switch (dtype) {
        case DType::BF16: o = math::bf16_to_float(math::float_to_bf16(v)); break;
        case DType::F16: o = math::f16_to_float(math::float_to_f16(v)); break;
        case DType::I8: o = float(math::quantize_int8(v, scale)) * scale; break;
        default: o = v;
      }
    }
  }
  return out;
}

// out = x · wᵀ in double.
std::vector<double> reference_matmul(const std::vector<float>& x, const std::vector<float>& w,
                                     int64_t m, int64_t n, int64_t k) {
  std::vector<double> out(size_t(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0;
      for (int64_t c = 0; c < k; ++c)
        sum += double(x[size_t(i * k + c)]) * double(w[size_t(j * k + c)]);
      out[size_t(i * n + j)] = sum;
    }
  return out;
}

// F32 accumulation error bound: a few ulps of the sum of |products|.
double tolerance(const std::vector<float>& x, const std::vector<float>& w, int64_t i, int64_t j,
                 int64_t k) {
  double abs_sum = 0;
  for (int64_t c = 0; c < k; ++c)
    abs_sum += std::fabs(double(x[size_t(i * k + c)]) * double(w[size_t(j * k + c)]));
  return 1e-6 * double(k) * abs_sum + 1e-30;
}

// The I8 streaming path multiplies in int16 fixed point: each x value is
// rounded to a multiple of max|x row| / 32767, so a dot product may move by
// half that step times the sum of the |weights|.
double int16_activation_bound(const std::vector<float>& x, const std::vector<float>& w_stored,
                              int64_t i, int64_t j, int64_t k) {
  double largest = 0, weight_sum = 0;
  for (int64_t c = 0; c < k; ++c) {
    largest = std::max(largest, std::fabs(double(x[size_t(i * k + c)])));
    weight_sum += std::fabs(double(w_stored[size_t(j * k + c)]));
  }
  return 0.5 * largest / 32767.0 * weight_sum;
}

Tensor upload(Backend& backend, const std::vector<float>& w, int64_t n, int64_t k) {
  return backend.upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k});
}

cpu::WeightView view_of(const Tensor& t) {
  return {t.raw(), t.dtype(), t.scales() ? t.scales()->data<float>() : nullptr, t.dim(0), t.dim(1)};
}

// One query's attention output over keys [first, length), in double:
// softmax(q K^T scale) V; with `abs_sums`, also sum_j p_j |v_jd| per d.
std::vector<double> reference_attention(const float* query, int64_t length,
                                        const std::vector<float>& k, const std::vector<float>& v,
                                        int64_t head_dim, float scale, int64_t first = 0,
                                        std::vector<double>* abs_sums = nullptr) {
  std::vector<double> w(static_cast<size_t>(length)), out(static_cast<size_t>(head_dim), 0.0);
  if (abs_sums) abs_sums->assign(size_t(head_dim), 0.0);
  double top = -1e300, total = 0;
  for (int64_t j = first; j < length; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < head_dim; ++d) dot += double(query[d]) * k[size_t(j * head_dim + d)];
    w[size_t(j)] = dot * scale;
    top = std::max(top, w[size_t(j)]);
  }
  for (int64_t j = first; j < length; ++j) total += (w[size_t(j)] = std::exp(w[size_t(j)] - top));
  for (int64_t d = 0; d < head_dim; ++d)
    for (int64_t j = first; j < length; ++j) {
      out[size_t(d)] += w[size_t(j)] / total * v[size_t(j * head_dim + d)];
      if (abs_sums)
        (*abs_sums)[size_t(d)] += w[size_t(j)] / total * std::abs(v[size_t(j * head_dim + d)]);
    }
  return out;
}

const DType kWeightDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::I8};

}  // namespace

TEST_CASE("streamed allocations are aligned for vectors, large ones for huge pages",
          "[cpu_kernels]") {
  for (const size_t bytes : {size_t(1), size_t(100), (size_t(2) << 20) - 1, size_t(2) << 20,
                             (size_t(5) << 20) + 12345}) {
    auto* memory = static_cast<uint8_t*>(cpu::allocate_streamed(bytes));
    const auto address = reinterpret_cast<uintptr_t>(memory);
    CHECK(address % 64 == 0);
    if (bytes >= (size_t(2) << 20) && std::getenv("SHARDLM_HUGE_PAGES") == nullptr)
      CHECK(address % (size_t(2) << 20) == 0);
    // Every byte asked for is usable, up to the last.
    std::memset(memory, 0xab, bytes);
    CHECK(memory[bytes - 1] == 0xab);
    std::free(memory);
  }
}

TEST_CASE("int8 quantization rounds to nearest and clamps to +-127", "[cpu_kernels]") {
  const float scale = math::int8_scale(2.54f);
  CHECK(scale == Approx(0.02f));
  CHECK(math::quantize_int8(2.54f, scale) == 127);
  CHECK(math::quantize_int8(-2.54f, scale) == -127);
  CHECK(math::quantize_int8(-9.0f, scale) == -127);  // beyond the row's max clamps
  CHECK(math::quantize_int8(0.031f, scale) == 2);
  CHECK(math::quantize_int8(1.0f, 0.0f) == 0);  // an all-zero row
}

TEST_CASE("matmul of every weight dtype matches the reference on both paths", "[cpu_kernels]") {
  if (!cpu::amx_available())
    WARN("no AMX on this CPU or kernel (or SHARDLM_AMX=0): the AMX path is not tested here");
  for (DType dtype : kWeightDtypes) {
    auto backend = make_cpu_backend(CpuBackendOptions{2, dtype});
    // Rows of x: partial tiles of 1 and 2 rows, several tiles, and beyond the
    // default crossover and AMX's chunk of 128 rows; shapes with partial weight tiles, column tails
    // and (k = 4500) several column chunks for every dtype.
    for (int64_t m : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 65, 130}) {
      for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 1},
                          {5, 15},
                          {37, 16},
                          {8, 33},
                          {67, 100},
                          {130, 257},
                          {13, 4500},
                          // AMX shapes (k a multiple of 32): whole
                          // blocks of 32 weight rows with a streamed tail.
                          {70, 96},
                          {32, 2048}}) {
        const auto x = random_values(size_t(m * k), uint32_t(m * 131 + k));
        const auto w = random_values(size_t(n * k), uint32_t(n * 17 + k), 0.2f);
        const Tensor wt = upload(*backend, w, n, k);
        REQUIRE(wt.dtype() == dtype);
        REQUIRE((wt.scales() != nullptr) == (dtype == DType::I8));
        const auto stored = stored_values(w, n, k, dtype);
        const auto expect = reference_matmul(x, stored, m, n, k);
        const std::vector<float> prior = random_values(size_t(m * n), 7);
        // Paths: 0 streaming reading rows in order for decode, 4 streaming reading
        // tiles, 1 panel, 2 the backend's choice, 3 AMX.
        for (int path = 0; path < 5; ++path) {
          if (path == 3 && !cpu::amx_fits(view_of(wt))) continue;
          for (bool accumulate : {false, true}) {
            std::vector<float> out = prior;
            if (path == 0 || path == 4) {
              const bool default_order = cpu::decode_reads_rows_in_order();
              cpu::set_decode_reads_rows_in_order(path == 0);
              cpu::matmul_streaming(x.data(), m, k, view_of(wt), out.data(), n, accumulate);
              cpu::set_decode_reads_rows_in_order(default_order);
            }
            if (path == 1)
              cpu::matmul_panel(x.data(), m, k, view_of(wt), out.data(), n, accumulate);
            if (path == 3) cpu::matmul_amx(x.data(), m, k, view_of(wt), out.data(), n, accumulate);
            if (path == 2) {
              Tensor xt = backend->alloc({m, k}, DType::F32),
                     ot = backend->alloc({m, n}, DType::F32);
              backend->copy_from_host(x.data(), xt);
              backend->copy_from_host(prior.data(), ot);
              backend->matmul(xt, wt, ot, accumulate);
              backend->copy_to_host(ot, out.data());
            }
            for (int64_t i = 0; i < m; ++i)
              for (int64_t j = 0; j < n; ++j) {
                const double want =
                    expect[size_t(i * n + j)] + (accumulate ? prior[size_t(i * n + j)] : 0.0);
                INFO("dtype " << dtype_name(dtype) << " m " << m << " n " << n << " k " << k
                              << " path " << path << " accumulate " << accumulate);
                const bool int16_path =
                    dtype == DType::I8 &&
                    (path == 0 || path == 4 || (path == 2 && m <= cpu::kI8StreamingMaxRows));
                REQUIRE(std::fabs(out[size_t(i * n + j)] - want) <=
                        tolerance(x, w, i, j, k) + 1e-6 * std::fabs(want) +
                            (int16_path ? int16_activation_bound(x, stored, i, j, k) : 0.0));
              }
          }
        }
      }
    }
  }
}

TEST_CASE("BF16 activations with BF16 weights: the vdpbf16ps kernel matches the reference",
          "[cpu_kernels]") {
  if (!cpu::bf16_dot_available()) {
    WARN("no AVX512-BF16 in this build: matmul_bf16_dot is not tested here");
    return;
  }
  auto backend = make_cpu_backend(CpuBackendOptions{2, DType::BF16});
  // Rows of x within one group of 16, across groups, and up to the backend's
  // limit; column tails (k not a multiple of 32) and several 32-column steps.
  for (int64_t m : {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{16}, int64_t{17}, int64_t{40},
                    cpu::kBf16DotMaxRows}) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 1},
                        {5, 15},
                        {37, 32},
                        {67, 100},
                        {13, 2500},
                        {32, 2048}}) {
      INFO("m " << m << " n " << n << " k " << k);
      // x as BF16 activations hold it: the reference multiplies those values.
      const auto x =
          stored_values(random_values(size_t(m * k), uint32_t(m * 7 + k)), m, k, DType::BF16);
      const auto w = random_values(size_t(n * k), uint32_t(n * 29 + k), 0.2f);
      const Tensor wt = upload(*backend, w, n, k);
      const auto stored = stored_values(w, n, k, DType::BF16);
      const auto expect = reference_matmul(x, stored, m, n, k);
      std::vector<uint16_t> xb(x.size());
      convert_from_f32(x.data(), xb.data(), DType::BF16, x.size());  // exact: x is BF16 already
      const std::vector<float> prior = random_values(size_t(m * n), 11);
      for (bool accumulate : {false, true}) {
        std::vector<float> out = prior;
        cpu::matmul_bf16_dot(xb.data(), m, k, view_of(wt), out.data(), n, accumulate);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            const double want =
                expect[size_t(i * n + j)] + (accumulate ? prior[size_t(i * n + j)] : 0.0);
            REQUIRE(std::fabs(out[size_t(i * n + j)] - want) <=
                    tolerance(x, stored, i, j, k) + 1e-6 * std::fabs(want));
          }
      }
    }
  }
  // Through the backend: BF16 activations take the kernel where it suits
  // (1-3 and 16-64 rows), else the widened path; both round the F32 result
  // to BF16 once.
  CpuBackendOptions options{2, DType::BF16};
  options.activation_dtype = DType::BF16;
  auto bf16_backend = make_cpu_backend(options);
  const int64_t n = 67, k = 100;
  const Tensor wt = upload(*bf16_backend, random_values(size_t(n * k), 5, 0.2f), n, k);
  for (int64_t m : {int64_t{2}, int64_t{8}, cpu::kBf16DotMaxRows, cpu::kBf16DotMaxRows + 1}) {
    const auto x = random_values(size_t(m * k), 6);
    Tensor xt = bf16_backend->alloc({m, k}, DType::BF16),
           ot = bf16_backend->alloc({m, n}, DType::BF16);
    bf16_backend->copy_from_host(x.data(), xt);
    bf16_backend->matmul(xt, wt, ot, false);
    std::vector<float> got(size_t(m * n)), x_stored(x.size());
    bf16_backend->copy_to_host(ot, got.data());
    bf16_backend->copy_to_host(xt, x_stored.data());
    std::vector<float> w_stored(size_t(n * k));
    convert_to_f32(wt.raw(), DType::BF16, w_stored.data(), w_stored.size());
    const auto expect = reference_matmul(x_stored, w_stored, m, n, k);
    for (size_t i = 0; i < got.size(); ++i)  // one BF16 rounding of an F32-exact sum
      REQUIRE(std::fabs(got[i] - expect[i]) <= std::ldexp(std::fabs(expect[i]), -8) + 1e-5);
  }
}

TEST_CASE("16-bit weights are stored as 16-bit and int8 as int8", "[cpu_kernels]") {
  const int64_t n = 3, k = 40;
  const auto w = random_values(size_t(n * k), 3);
  for (DType dtype : kWeightDtypes) {
    auto backend = make_cpu_backend(CpuBackendOptions{1, dtype});
    const Tensor t = upload(*backend, w, n, k);
    CHECK(t.nbytes() == size_t(n * k) * dtype_size(dtype));
    // 1-D weights (norms) stay F32 whatever the weight dtype.
    const Tensor norm = backend->upload_weight(w.data(), DType::F32, {k}, {0, 1, 0, k});
    CHECK(norm.dtype() == DType::F32);
  }
  // Without a weight dtype the checkpoint's is kept.
  auto keep = make_cpu_backend(CpuBackendOptions{1, std::nullopt});
  std::vector<uint16_t> bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) bf16[i] = math::float_to_bf16(w[i]);
  CHECK(keep->upload_weight(bf16.data(), DType::BF16, {n, k}, {0, n, 0, k}).dtype() == DType::BF16);
  CHECK(keep->upload_weight(w.data(), DType::F32, {n, k}, {0, n, 0, k}).dtype() == DType::F32);
}

TEST_CASE("int8 column blocks share the scales of the whole row", "[cpu_kernels]") {
  const int64_t n = 6, k = 64;
  auto w = random_values(size_t(n * k), 11);
  w[size_t(2 * k + 50)] = 9.0f;  // row 2's maximum lies in the second column block
  auto backend = make_cpu_backend(CpuBackendOptions{2, DType::I8});
  const Tensor whole = upload(*backend, w, n, k);
  const Tensor left = backend->upload_weight(w.data(), DType::F32, {n, k}, {1, 4, 0, 32});
  const Tensor right = backend->upload_weight(w.data(), DType::F32, {n, k}, {1, 4, 32, 32});
  for (int64_t r = 0; r < 4; ++r) {
    CHECK(left.scales()->data<float>()[r] == whole.scales()->data<float>()[r + 1]);
    CHECK(right.scales()->data<float>()[r] == whole.scales()->data<float>()[r + 1]);
    for (int64_t c = 0; c < 32; ++c) {
      CHECK(left.data<int8_t>()[r * 32 + c] == whole.data<int8_t>()[(r + 1) * k + c]);
      CHECK(right.data<int8_t>()[r * 32 + c] == whole.data<int8_t>()[(r + 1) * k + 32 + c]);
    }
  }
  CHECK(whole.scales()->data<float>()[2] == Approx(9.0f / 127));
  // Row views carry their scales along.
  CHECK(whole.rows(2, 3).scales()->data<float>()[0] == whole.scales()->data<float>()[2]);
}

TEST_CASE("copy_2d and embedding work for every weight dtype", "[cpu_kernels]") {
  const int64_t n = 7, k = 24;
  const auto w = random_values(size_t(n * k), 5);
  for (DType dtype : kWeightDtypes) {
    auto backend = make_cpu_backend(CpuBackendOptions{1, dtype});
    const Tensor t = upload(*backend, w, n, k);
    const auto stored = stored_values(w, n, k, dtype);
    // A 3 x 5 rectangle moved in the stored dtype.
    Tensor dst = backend->zeros({4, 10}, dtype);
    backend->copy_2d(t, 2, 3, dst, 1, 4, 3, 5);
    const size_t elem = dtype_size(dtype);
    for (int64_t r = 0; r < 3; ++r)
      for (int64_t c = 0; c < 5; ++c)
        CHECK(std::memcmp(static_cast<const char*>(dst.raw()) + size_t((1 + r) * 10 + 4 + c) * elem,
                          static_cast<const char*>(t.raw()) + size_t((2 + r) * k + 3 + c) * elem,
                          elem) == 0);
    // Embedding rows come back as F32 values of the stored weights.
    const int32_t ids[] = {6, 0, 3, 3};
    Tensor out = backend->alloc({4, k}, DType::F32);
    backend->embedding(t, ids, out);
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t c = 0; c < k; ++c)
        CHECK(out.data<float>()[i * k + c] == Approx(stored[size_t(ids[i] * k + c)]).epsilon(1e-6));
  }
}

TEST_CASE("add_and_sum_squares adds into the rows and sums the new squares", "[cpu_kernels]") {
  // Rows 1..3 of a 5-row residual: the rows outside the view stay as they were.
  for (const int64_t width : {5, 64, 67}) {
    INFO("width " << width);
    const int64_t rows = 5;
    auto backend = make_cpu_backend(1);
    const auto r = random_values(size_t(rows * width), 11),
               x = random_values(size_t(rows * width), 12);
    Tensor residual = backend->alloc({rows, width}, DType::F32),
           addend = backend->alloc({rows, width}, DType::F32);
    std::memcpy(residual.raw(), r.data(), residual.nbytes());
    std::memcpy(addend.raw(), x.data(), addend.nbytes());
    Tensor sums = backend->alloc({3}, DType::F32);
    backend->add_and_sum_squares(addend.rows(1, 3), residual.rows(1, 3), sums);
    for (int64_t i = 0; i < rows * width; ++i) {
      const bool inside = i >= width && i < 4 * width;
      CHECK(residual.data<float>()[i] == (inside ? r[size_t(i)] + x[size_t(i)] : r[size_t(i)]));
    }
    // Against the sum in double: F32 sums of `width` positive terms are
    // within width·u of it relative (u = 2^-24; doubled for slack).
    for (int64_t row = 0; row < 3; ++row) {
      double exact = 0;
      for (int64_t c = 0; c < width; ++c) {
        const double v = double(residual.data<float>()[(row + 1) * width + c]);
        exact += v * v;
      }
      CHECK(std::fabs(double(sums.data<float>()[row]) - exact) <=
            2 * double(width) * std::ldexp(1.0, -24) * exact);
    }
  }
}

TEST_CASE("vectorised exp and silu match libm", "[cpu_kernels]") {
  std::vector<float> x;
  for (float v = -100.0f; v <= 88.5f; v += 0.37f) x.push_back(v);  // above 88.72 exp saturates
  std::vector<float> e = x;
  cpu::exp_inplace(e.data(), int64_t(e.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    INFO("x = " << x[i]);
    CHECK(e[i] == Approx(std::exp(x[i])).epsilon(1e-6).margin(1e-37));
  }
  const auto up = random_values(x.size(), 9);
  std::vector<float> out(x.size());
  cpu::silu_mul(x.data(), up.data(), out.data(), int64_t(x.size()));
  for (size_t i = 0; i < x.size(); ++i)
    CHECK(out[i] == Approx(math::silu(x[i]) * up[i]).epsilon(1e-6).margin(1e-30));
}

namespace {

// K or V values stored as `dtype` (rounded as the cache rounds them), and
// those stored values widened back for the reference.
struct CachedValues {
  std::vector<char> stored;
  std::vector<float> values;
};

CachedValues cache_values(const std::vector<float>& v, DType dtype) {
  CachedValues c;
  c.stored.resize(v.size() * dtype_size(dtype));
  convert_from_f32(v.data(), c.stored.data(), dtype, v.size());
  c.values.resize(v.size());
  convert_to_f32(c.stored.data(), dtype, c.values.data(), v.size());
  return c;
}

const DType kKvDtypes[] = {DType::F32, DType::BF16, DType::F16};

// One decode query row of a group of `rows` that share a KV head, as the
// kernel that attention_partial picks must give it: the output and, per d,
// how far from it the kernel may be. The kernels that round Q and P to BF16
// (cpu::decode_attention_rounds: AMX, and the vector kernel with AVX512-BF16
// on a BF16 cache): the reference rounds Q the same way (the products are
// then exact in F32 on both sides) and allows P's rounding, 2^-8 sum_j p_j
// |v_jd|, above the F32 summation order's 2e-5.
struct ExpectedRow {
  std::vector<double> out, margin;
};

ExpectedRow expected_decode_row(const float* query, int64_t rows, const cpu::KVView& kv,
                                int64_t length, const std::vector<float>& k,
                                const std::vector<float>& v, int64_t first = 0) {
  const int64_t head_dim = kv.head_dim;
  const bool rounded = cpu::decode_attention_rounds(kv, rows);
  std::vector<float> q(query, query + head_dim);
  if (rounded) q = cache_values(q, DType::BF16).values;  // as the kernel rounds it
  ExpectedRow e;
  std::vector<double> abs_sums;
  e.out = reference_attention(q.data(), length, k, v, head_dim, kv.scale, first, &abs_sums);
  for (const double a : abs_sums) e.margin.push_back(2e-5 + (rounded ? std::ldexp(a, -8) : 0.0));
  return e;
}

}  // namespace

TEST_CASE("tiled attention matches a plain causal softmax reference", "[cpu_kernels]") {
  const int64_t head_dim = 40;  // not a multiple of 16: masked tails
  const float scale = 1.0f / std::sqrt(float(head_dim));
  // Prefill from 0 (blocks of queries, some past the first block; keys past
  // the first key block), a chunk continuing a cached prefix, and
  // single-query decode steps; without a sliding window (0) and with
  // windows shorter and longer than a block of queries or of keys.
  for (DType kv_dtype : kKvDtypes)
    for (int64_t window : {0, 1, 7, 64, 300})
      for (auto [tokens, first_pos] : {std::pair<int64_t, int64_t>{1, 0},
                                       {5, 0},
                                       {70, 0},
                                       {300, 0},
                                       {9, 13},
                                       {40, 500},
                                       {1, 37},
                                       {1, 600}}) {
        const int64_t keys = first_pos + tokens, ldq = 3 * head_dim;
        const auto q = random_values(size_t(tokens * ldq), uint32_t(tokens * 7 + first_pos));
        const auto k =
            cache_values(random_values(size_t(keys * head_dim), uint32_t(keys + 1)), kv_dtype);
        const auto v =
            cache_values(random_values(size_t(keys * head_dim), uint32_t(keys + 2)), kv_dtype);
        std::vector<float> out(size_t(tokens * ldq), -1.0f);
        std::vector<float> scratch(size_t(cpu::attention_rows_scratch(tokens, head_dim)));
        const cpu::KVView kv{k.stored.data(), v.stored.data(), kv_dtype, head_dim, scale};
        cpu::attention_rows({q.data(), ldq, tokens, first_pos, 1, window}, kv, out.data(), ldq,
                            scratch.data());
        for (int64_t i = 0; i < tokens; ++i) {
          const int64_t position = first_pos + i;
          const int64_t first_key = window > 0 ? std::max<int64_t>(0, position + 1 - window) : 0;
          const auto want = reference_attention(q.data() + i * ldq, position + 1, k.values,
                                                v.values, head_dim, scale, first_key);
          for (int64_t d = 0; d < head_dim; ++d) {
            INFO("kv " << dtype_name(kv_dtype) << " window " << window << " tokens " << tokens
                       << " first_pos " << first_pos << " query " << i << " d " << d);
            REQUIRE(out[size_t(i * ldq + d)] == Approx(want[size_t(d)]).margin(2e-5));
          }
          // Only this head's columns are written.
          REQUIRE(out[size_t(i * ldq + head_dim)] == -1.0f);
        }
      }
}

TEST_CASE("grouped decode attention matches a plain reference for every head", "[cpu_kernels]") {
  // BF16 caches with head_dim 32, 64, 96 or 128 take the AMX kernel where
  // the CPU has it (one or two groups of value tiles; 20 heads: two row groups).
  for (DType kv_dtype : kKvDtypes)
    for (int64_t head_dim : {16, 24, 32, 64, 96, 128})
      for (int64_t heads : {1, 2, 3, 5, 8, 20})
        for (int64_t keys : {1, 17, 130, 700}) {
          const auto q = random_values(size_t(heads * head_dim), uint32_t(heads * 7 + keys));
          const auto k = cache_values(
              random_values(size_t(keys * head_dim), uint32_t(keys * 3 + 1)), kv_dtype);
          const auto v = cache_values(
              random_values(size_t(keys * head_dim), uint32_t(keys * 5 + 2)), kv_dtype);
          const float scale = 1.0f / std::sqrt(float(head_dim));
          std::vector<float> out(q.size());
          std::vector<float> scratch(size_t(cpu::attention_rows_scratch(heads, head_dim)));
          const cpu::KVView kv{k.stored.data(), v.stored.data(), kv_dtype, head_dim, scale};
          // Every head is the same token at position keys - 1: pos_step 0.
          cpu::attention_rows({q.data(), head_dim, heads, keys - 1, 0, 0}, kv, out.data(), head_dim,
                              scratch.data());
          for (int64_t h = 0; h < heads; ++h) {
            const auto want =
                expected_decode_row(q.data() + h * head_dim, heads, kv, keys, k.values, v.values);
            INFO("kv " << dtype_name(kv_dtype) << " head_dim " << head_dim << " heads " << heads
                       << " keys " << keys << " head " << h);
            for (int64_t d = 0; d < head_dim; ++d)
              REQUIRE(out[size_t(h * head_dim + d)] ==
                      Approx(want.out[size_t(d)]).margin(want.margin[size_t(d)]));
          }
        }
}

TEST_CASE("online-softmax merge of key ranges equals attention over all keys", "[cpu_kernels]") {
  // Flash-decoding: the keys are cut into ranges (empty ones, ranges not on
  // block boundaries, ranges beyond a sliding window), each range's state is
  // computed apart and the states are merged in order; the result must be
  // the plain softmax over every key.
  const int64_t head_dim = 64, heads = 4, keys = 2000;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  const auto q = random_values(size_t(heads * head_dim), 11, 3.0f);  // peaked softmax
  const auto k = cache_values(random_values(size_t(keys * head_dim), 12), DType::BF16);
  const auto v = cache_values(random_values(size_t(keys * head_dim), 13), DType::BF16);
  const cpu::KVView kv{k.stored.data(), v.stored.data(), DType::BF16, head_dim, scale};
  const std::vector<std::vector<int64_t>> cuts = {
      {0, keys}, {0, 1000, keys}, {0, 0, 256, 300, 1999, keys}, {0, 700, 700, 1500, keys}};
  for (int64_t window : {0, 900})
    for (const auto& cut : cuts) {
      std::vector<float> scratch(size_t(cpu::attention_scratch(heads, head_dim)));
      std::vector<float> acc(size_t(2 * heads * head_dim)), stats(size_t(4 * heads));
      const cpu::AttentionState total{acc.data(), head_dim, stats.data(), stats.data() + heads};
      const cpu::AttentionState part{acc.data() + heads * head_dim, head_dim,
                                     stats.data() + 2 * heads, stats.data() + 3 * heads};
      cpu::attention_state_init(total, heads, head_dim);
      const cpu::AttentionQuery query{q.data(), head_dim, heads, keys - 1, 0, window};
      for (size_t c = 0; c + 1 < cut.size(); ++c) {
        cpu::attention_state_init(part, heads, head_dim);
        cpu::attention_partial(query, kv, cut[c], cut[c + 1], part, scratch.data());
        cpu::attention_merge(total, part, heads, head_dim);
      }
      std::vector<float> out(size_t(heads * head_dim));
      cpu::attention_finish(total, heads, head_dim, out.data(), head_dim);
      const int64_t first_key = window > 0 ? keys - window : 0;
      for (int64_t h = 0; h < heads; ++h) {
        const auto want = expected_decode_row(q.data() + h * head_dim, heads, kv, keys, k.values,
                                              v.values, first_key);
        INFO("window " << window << " ranges " << cut.size() - 1 << " head " << h);
        for (int64_t d = 0; d < head_dim; ++d)
          REQUIRE(out[size_t(h * head_dim + d)] ==
                  Approx(want.out[size_t(d)]).margin(want.margin[size_t(d)]));
      }
    }
}
