// The CPU backend's decode matmul alone: GFLOP/s and GB/s of
// cpu::matmul_streaming, cpu::matmul_panel (oneDNN), cpu::matmul_amx or the
// backend's choice among them (cpu::matmul) at
// several row counts, with the weights in cache (one matrix used again and
// again) or from memory (a ring of matrices larger than the last-level cache,
// each used once per pass, as a decode step uses its layers). With --shapes
// the ring cycles through several shapes (a layer's projections) and a pass
// is one cycle: 1b's decode step is
//   --shapes 2560x2048,2048x2048,11264x2048,2048x5632 --memory-mib 2048
// (2048 MiB holds 24 layers; the LM head aside). Medians of the
// repetitions, so that a slice taken by other work on the machine moves them
// little.
//
//   build/shardlm_matmul_bench [--weights bf16|f16|f32|int8] [--rows 1,8,32,64]
//                              [--n 2048] [--k 2048] [--shapes NxK,...]
//                              [--memory-mib 1024] [--reps 20]
//                              [--threads T] [--offset BYTES]
//                              [--path streaming|panel|amx|auto|read-strips|read-rows]
//   build/shardlm_matmul_bench --attention KEYS [--group G] [--head-dim D]
//                              [--kv-dtype bf16|f16|f32] [--caches N] [--threads T]
// The second form times decode attention alone (cpu::attention_rows): G
// query heads of one token over KEYS cached keys of one KV head, the cache in
// L2 as in a step's inner loop (one thread unless --threads says), or N
// caches per pass from memory as a decode step's sequences and KV heads, and
// prints GB/s of K and V read.
#include <fmt/format.h>
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_kernels.hpp"
#include "partitioning/calibrate.hpp"
#include "runtime/dtype.hpp"

using namespace shardlm;

namespace {

template <typename T>
struct StreamedAllocator {
  using value_type = T;
  StreamedAllocator() = default;
  template <typename U>
  StreamedAllocator(const StreamedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(cpu::allocate_streamed(n * sizeof(T))); }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const StreamedAllocator&) const { return true; }
};
using StreamedBytes = StreamedAllocator<uint8_t>;

int attention_bench(int64_t keys, int64_t group, int64_t head_dim, DType kv_dtype, int64_t reps,
                    int64_t caches) {
  const size_t elem = dtype_size(kv_dtype), cache_bytes = size_t(keys * head_dim) * elem;
  // Allocated as the backend allocates its KV cache; `caches` of them
  // one after the other (a decode step's sequences and KV heads).
  std::vector<uint8_t, StreamedBytes> k(cache_bytes * size_t(caches)), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = uint8_t(0x30 + (i * 2654435761u >> 24) % 12);  // normal numbers, as above
    v[i] = uint8_t(0x30 + (i * 40503u >> 8) % 12);
  }
  std::vector<float> q(size_t(group * head_dim), 0.05f);
  const cpu::AttentionQuery query{q.data(), head_dim, group, keys - 1, 0, 0};
  std::vector<double> seconds;
  for (int64_t r = 0; r <= reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    {
      std::vector<float> out(q.size());
      std::vector<float> scratch(size_t(cpu::attention_rows_scratch(group, head_dim)));
#pragma omp for schedule(static)
      for (int64_t c = 0; c < caches; ++c) {
        const cpu::KVView kv{k.data() + size_t(c) * cache_bytes, v.data() + size_t(c) * cache_bytes,
                             kv_dtype, head_dim, 0.125f};
        cpu::attention_rows(query, kv, out.data(), head_dim, scratch.data());
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) seconds.push_back(s);
  }
  const double t = median(seconds), best = *std::min_element(seconds.begin(), seconds.end());
  fmt::print(
      "# decode attention: {} query heads over {} keys, head_dim {}, {} cache; {} cache(s) "
      "per pass on {} thread(s)\n",
      group, keys, head_dim, dtype_name(kv_dtype), caches, omp_get_max_threads());
  fmt::print("median_us,kv_gbps,best_us\n{:.2f},{:.2f},{:.2f}\n", t * 1e6,
             2.0 * double(k.size()) / t / 1e9, best * 1e6);
  return 0;
}

// Vectors of 32 bytes, XORed together: a read with no arithmetic to wait on.
using Bytes32 = long long __attribute__((vector_size(32)));
inline void xor_in(Bytes32& acc, const uint8_t* p) {
  Bytes32 v;
  std::memcpy(&v, p, sizeof v);
  acc ^= v;
}

// A plain read of w, in the order the portable dots() reads it at one row of
// x (in_strips: 16-row strips, 256 columns at a time, 8 rows side by side 32
// bytes each) or in address order, the strips shared by the threads as
// dots() shares them. Returns the XOR of every byte group, so the reads stay.
Bytes32 plain_read(const cpu::WeightView& w, bool in_strips) {
  const auto* data = static_cast<const uint8_t*>(w.data);
  const int64_t row_bytes = w.k * int64_t(dtype_size(w.dtype)),
                chunk = 256 * int64_t(dtype_size(w.dtype));
  const int64_t strips = (w.n + 15) / 16, whole = row_bytes / 32 * 32;
  Bytes32 result = {};
#pragma omp parallel
  {
    Bytes32 acc[4] = {};
#pragma omp for schedule(static)
    for (int64_t s = 0; s < strips; ++s) {
      const int64_t r0 = 16 * s, rows = std::min<int64_t>(16, w.n - r0);
      const uint8_t* strip = data + r0 * row_bytes;
      if (!in_strips) {
        for (int64_t b = 0; b + 128 <= rows * row_bytes; b += 128)
          for (int j = 0; j < 4; ++j) xor_in(acc[j], strip + b + 32 * j);
        continue;
      }
      for (int64_t c0 = 0; c0 < whole; c0 += chunk)
        for (int64_t b = 0; b < rows; b += 8)
          for (int64_t c = c0; c < std::min(c0 + chunk, whole); c += 32)
            for (int64_t r = b; r < std::min<int64_t>(b + 8, rows); ++r)
              xor_in(acc[r % 4], strip + r * row_bytes + c);
    }
#pragma omp critical
    result ^= acc[0] ^ acc[1] ^ acc[2] ^ acc[3];
  }
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"the CPU backend's decode matmul (or decode attention) alone"};
  std::string weights_flag = "bf16", kv = "bf16";
  std::vector<int64_t> rows_list{1, 8, 32, 64};
  int64_t n = 2048, k = 2048, memory_mib = 1024, reps = 20, attention_keys = 0, group = 4,
          head_dim = 64, caches = 1;
  int threads = 0;
  size_t offset = 0;
  std::string path = "streaming";
  app.add_option("--weights", weights_flag, "weight storage: f32, bf16, f16 or int8");
  app.add_option("--rows", rows_list, "rows of x, comma-separated")
      ->delimiter(',')
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  app.add_option("--n", n, "weight rows (output features)")->check(CLI::PositiveNumber);
  app.add_option("--k", k, "weight columns (input features)")->check(CLI::PositiveNumber);
  app.add_option("--memory-mib", memory_mib, "size of the ring of matrices; 0: one, in cache")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--reps", reps, "timed passes (after one warm-up)")->check(CLI::PositiveNumber);
  app.add_option("--threads", threads, "OpenMP threads (0: OpenMP's default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--offset", offset, "bytes the weights start past a page boundary");
  std::vector<std::string> shape_flags;
  app.add_option("--shapes", shape_flags,
                 "weight shapes NxK, comma-separated, in place of --n/--k: the ring cycles "
                 "through them (a decode step's matmuls, layer after layer)")
      ->delimiter(',');
  app.add_option("--path", path,
                 "kernel: streaming, panel (oneDNN), amx or auto (the backend's choice); or no "
                 "kernel, a plain read of the weights in the portable dots()'s strips "
                 "(read-strips) or in address order (read-rows)")
      ->check(CLI::IsMember({"streaming", "panel", "amx", "auto", "read-strips", "read-rows"}));
  app.add_option("--attention", attention_keys, "time decode attention over this many keys")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--group", group, "query heads per KV head (--attention)")
      ->check(CLI::PositiveNumber);
  app.add_option("--head-dim", head_dim, "(--attention)")->check(CLI::PositiveNumber);
  app.add_option("--kv-dtype", kv, "KV cache: f32, bf16 or f16 (--attention)");
  app.add_option("--caches", caches,
                 "KV caches per pass, shared by the threads (--attention; 1: one, in L2)")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int printed = app.exit(e);
    return printed == 0 ? 0 : 2;  // help is not an error; a bad flag is a usage error
  }
  DType dtype = DType::BF16, kv_dtype = DType::BF16;
  try {
    const std::optional<DType> parsed = parse_weight_dtype(weights_flag);
    if (!parsed) throw std::invalid_argument("--weights: expected f32, bf16, f16 or int8");
    dtype = *parsed;
    kv_dtype = parse_kv_dtype(kv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "matmul_bench: {}\n", e.what());
    return 2;
  }
  if (attention_keys > 0) {
    omp_set_num_threads(threads > 0 ? threads : 1);
    return attention_bench(attention_keys, group, head_dim, kv_dtype, reps, caches);
  }
  if (threads > 0) omp_set_num_threads(threads);
  // The shapes the ring cycles through: --shapes, or one [n x k].
  struct Shape {
    int64_t n, k;
  };
  std::vector<Shape> shapes;
  for (const std::string& flag : shape_flags) {
    Shape shape{0, 0};
    char rest = 0;
    if (std::sscanf(flag.c_str(), "%ldx%ld%c", &shape.n, &shape.k, &rest) != 2 || shape.n <= 0 ||
        shape.k <= 0) {
      fmt::print(stderr, "matmul_bench: --shapes: expected NxK (e.g. 2048x5632), got '{}'\n", flag);
      return 2;
    }
    shapes.push_back(shape);
  }
  if (shapes.empty()) shapes.push_back({n, k});
  const size_t elem = dtype_size(dtype);
  size_t cycle_bytes = 0;  // one pass over the shapes
  for (const Shape& shape : shapes) cycle_bytes += size_t(shape.n * shape.k) * elem;
  // memory_mib 0: the shapes once, in cache after the first use.
  const int64_t cycles =
      std::max<int64_t>(1, int64_t((size_t(memory_mib) << 20) / std::max<size_t>(cycle_bytes, 1)));
  const int64_t matrices = cycles * int64_t(shapes.size());
  // Weights allocated as the CPU backend allocates them (page-aligned, huge
  // pages where granted), moved by --offset bytes (safetensors aligns tensors
  // to 8 bytes only).
  const size_t total = size_t(cycles) * cycle_bytes;
  std::unique_ptr<uint8_t, decltype(&std::free)> storage(
      static_cast<uint8_t*>(cpu::allocate_streamed(total + offset)), &std::free);
  uint8_t* weights = storage.get() + offset;
  for (size_t i = 0; i < total; ++i) {
    // Every byte in [0x30, 0x3b]: normal numbers of modest size in every dtype
    // (zero high bytes would make denormals, which take microcode assists).
    weights[i] = uint8_t(0x30 + (i * 2654435761u >> 24) % 12);
  }
  int64_t max_n = 0, max_k = 0;
  for (const Shape& shape : shapes) {
    max_n = std::max(max_n, shape.n);
    max_k = std::max(max_k, shape.k);
  }
  std::vector<float> scales(size_t(max_n), 0.01f);
  const int64_t max_rows = *std::max_element(rows_list.begin(), rows_list.end());
  std::vector<float> x(size_t(max_rows * max_k), 0.25f), out(size_t(max_rows * max_n));
  std::vector<cpu::WeightView> views;
  for (int64_t i = 0, at = 0; i < matrices; ++i) {
    const Shape& shape = shapes[size_t(i) % shapes.size()];
    views.push_back(cpu::WeightView{
        weights + at, dtype, dtype == DType::I8 ? scales.data() : nullptr, shape.n, shape.k});
    at += shape.n * shape.k * int64_t(elem);
  }
  fmt::print(
      "# {} weights, {} shape(s) ({} MiB a pass), {} matrices ({} MiB), {} thread(s), {} "
      "path\n",
      dtype_name(dtype), shapes.size(), cycle_bytes >> 20, matrices, total >> 20,
      omp_get_max_threads(), path);
  if (path == "amx")
    for (const cpu::WeightView& w : views)
      if (!cpu::amx_fits(w)) {
        fmt::print(stderr,
                   "matmul_bench: --path amx needs bf16 or int8 weights, k a multiple of 32, n >= "
                   "32 and a CPU with AMX\n");
        return 2;
      }
  // A pass: every shape once (one matrix with a single shape).
  fmt::print("rows,median_s_per_pass,gflops,weight_gbps\n");
  Bytes32 read_sum = {};
  for (int64_t rows : rows_list) {
    std::vector<double> per_pass;
    for (int64_t r = 0; r <= reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (const cpu::WeightView& w : views) {
        if (path == "panel")
          cpu::matmul_panel(x.data(), rows, w.k, w, out.data(), w.n, false);
        else if (path == "amx")
          cpu::matmul_amx(x.data(), rows, w.k, w, out.data(), w.n, false);
        else if (path == "auto")
          cpu::matmul(x.data(), rows, w.k, w, out.data(), w.n, false);
        else if (path == "read-strips" || path == "read-rows")
          read_sum ^= plain_read(w, path == "read-strips");
        else
          cpu::matmul_streaming(x.data(), rows, w.k, w, out.data(), w.n, false);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) per_pass.push_back(s / double(cycles));  // the first pass warms up
    }
    const double t = median(per_pass);
    fmt::print("{},{:.4g},{:.1f},{:.2f}\n", rows, t,
               2.0 * double(rows) * double(cycle_bytes / elem) / t / 1e9,
               double(cycle_bytes) / t / 1e9);
  }
  if (read_sum[0] == 1) fmt::print("#\n");  // keeps the plain reads
}
