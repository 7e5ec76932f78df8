// The CPU backend's decode matmul alone: GFLOP/s and GB/s of
// cpu::matmul_streaming (and cpu::matmul_panel, oneDNN, for comparison) at
// several row counts, with the weights in cache (one matrix used again and
// again) or from memory (a ring of matrices larger than the last-level cache,
// each used once per pass, as a decode step uses its layers). Medians of the
// repetitions, so that a slice taken by other work on the machine moves them
// little.
//
//   build/shardlm_matmul_bench [--dtype bf16|f16|f32|int8] [--rows 1,8,32,64]
//                              [--n 2048] [--k 2048] [--memory-mib 1024] [--reps 20]
//                              [--threads T] [--offset BYTES] [--panel]
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_kernels.hpp"
#include "runtime/dtype.hpp"

using namespace shardlm;

namespace {

std::vector<int64_t> parse_list(const char* text) {
  std::vector<int64_t> out;
  for (const char* p = text; *p;) {
    char* end = nullptr;
    out.push_back(std::strtoll(p, &end, 10));
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  DType dtype = DType::BF16;
  std::vector<int64_t> rows_list{1, 8, 32, 64};
  int64_t n = 2048, k = 2048, memory_mib = 1024, reps = 20;
  bool panel = false;
  size_t offset = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        fmt::print(stderr, "matmul_bench: {} needs a value\n", a);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--dtype") {
      const std::string d = value();
      if (d == "bf16")
        dtype = DType::BF16;
      else if (d == "f16")
        dtype = DType::F16;
      else if (d == "f32")
        dtype = DType::F32;
      else if (d == "int8")
        dtype = DType::I8;
      else {
        fmt::print(stderr, "matmul_bench: --dtype expects bf16, f16, f32 or int8, not {}\n", d);
        return 2;
      }
    } else if (a == "--rows") {
      rows_list = parse_list(value());
    } else if (a == "--n") {
      n = std::atoll(value());
    } else if (a == "--k") {
      k = std::atoll(value());
    } else if (a == "--memory-mib") {
      memory_mib = std::atoll(value());
    } else if (a == "--reps") {
      reps = std::atoll(value());
    } else if (a == "--threads") {
      omp_set_num_threads(std::atoi(value()));
    } else if (a == "--offset") {
      offset = size_t(std::atoll(value()));
    } else if (a == "--panel") {
      panel = true;
    } else {
      fmt::print(stderr, "matmul_bench: unknown argument {}\n", a);
      return 2;
    }
  }
  const size_t elem = dtype_size(dtype);
  const size_t matrix_bytes = size_t(n * k) * elem;
  // memory_mib 0: one matrix, in cache after the first use.
  const int64_t matrices =
      std::max<int64_t>(1, int64_t((size_t(memory_mib) << 20) / std::max<size_t>(matrix_bytes, 1)));
  // Page-aligned weights, as a checkpoint's mmap gives them, moved by
  // --offset bytes (safetensors aligns tensors to 8 bytes only).
  const size_t total = matrices * matrix_bytes;
  std::unique_ptr<uint8_t, decltype(&std::free)> storage(
      static_cast<uint8_t*>(std::aligned_alloc(4096, (total + offset + 4095) / 4096 * 4096)),
      &std::free);
  uint8_t* weights = storage.get() + offset;
  for (size_t i = 0; i < total; ++i) {
    // Every byte in [0x30, 0x3b]: normal numbers of modest size in every dtype
    // (zero high bytes would make denormals, which take microcode assists).
    weights[i] = uint8_t(0x30 + (i * 2654435761u >> 24) % 12);
  }
  std::vector<float> scales(size_t(n), 0.01f);
  const int64_t max_rows = *std::max_element(rows_list.begin(), rows_list.end());
  std::vector<float> x(size_t(max_rows * k), 0.25f), out(size_t(max_rows * n));
  fmt::print("# {} weights [{} x {}], {} matrices ({} MiB), {} thread(s), {} path\n",
             dtype_name(dtype), n, k, matrices, (matrices * matrix_bytes) >> 20,
             omp_get_max_threads(), panel ? "panel (oneDNN)" : "streaming");
  fmt::print("rows,median_s_per_matrix,gflops,weight_gbps\n");
  for (int64_t rows : rows_list) {
    std::vector<double> per_matrix;
    for (int64_t r = 0; r <= reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < matrices; ++i) {
        const cpu::WeightView w{weights + size_t(i) * matrix_bytes, dtype,
                                dtype == DType::I8 ? scales.data() : nullptr, n, k};
        if (panel)
          cpu::matmul_panel(x.data(), rows, k, w, out.data(), n, false);
        else
          cpu::matmul_streaming(x.data(), rows, k, w, out.data(), n, false);
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r > 0) per_matrix.push_back(s / double(matrices));  // the first pass warms up
    }
    const double t = median(per_matrix);
    fmt::print("{},{:.4g},{:.1f},{:.2f}\n", rows, t, 2.0 * double(rows * n * k) / t / 1e9,
               double(matrix_bytes) / t / 1e9);
  }
}
