#include "partitioning/calibrate.hpp"

#include <fmt/core.h>
#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <vector>

#include "collectives/communicator.hpp"
#include "kernels/cpu/cpu_kernels.hpp"
#include "runtime/backend.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
// `count` values allocated as the CPU backend allocates tensors (huge pages
// where granted: the strided tile loads of the AMX kernels and long streams
// run measurably faster on them), value i = fill(i), the pages touched by the
// threads that use them.
template <typename T>
struct StreamedBuffer {
  std::unique_ptr<T, decltype(&std::free)> storage;
  size_t size;
  template <typename Fill>
  StreamedBuffer(size_t count, Fill fill)
      : storage(static_cast<T*>(cpu::allocate_streamed(count * sizeof(T))), &std::free),
        size(count) {
    T* values = storage.get();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; ++i) values[i] = fill(i);
  }
  T* data() const {
    return storage.get();
  }
};
template <typename T>
StreamedBuffer<T> filled(size_t count, T value) {
  return StreamedBuffer<T>(count, [value](size_t) { return value; });
}

// The fastest of `repeats` timed runs of `run`, after one that warms up.
template <typename Run>
double best_seconds(int repeats, Run&& run) {
  run();
  double best = INFINITY;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = Clock::now();
    run();
    best = std::min(best, since(t0));
  }
  return best;
}

// Seconds of one run of `run` while every member of `group` runs it at once
// (the slowest member's average, from a shared start): what ranks sharing a
// machine get in a forward pass. Each member runs it at least `repeats`
// times and for at least 50 ms, so that ranks sharing cores overlap; the
// fastest of separate runs would count cores the others were waiting for.
template <typename Run>
double in_step_seconds(Communicator& group, int repeats, Run&& run) {
  run();
  group.barrier();
  const auto t0 = Clock::now();
  int runs = 0;
  while (runs < repeats || since(t0) < 0.05) {
    run();
    ++runs;
  }
  const float mine = float(since(t0) / runs);
  std::vector<float> all(size_t(group.size()));
  group.all_gather(&mine, all.data(), 1);
  return *std::max_element(all.begin(), all.end());
}
}  // namespace

double measure_matmul(int64_t rows, int64_t inner, int64_t cols, int repeats) {
  // The CPU backend's own matmul (streaming kernel for few rows, oneDNN sgemm
  // for many) on F32 weights that stay in cache: its compute rate, apart from
  // the memory time the cost model adds on its own.
  std::vector<float> x(size_t(rows * inner), 1.0f), out(size_t(rows * cols));
  const StreamedBuffer<float> w = filled(size_t(cols * inner), 0.5f);
  const cpu::WeightView weights{w.data(), DType::F32, nullptr, cols, inner};
  const double best = best_seconds(
      repeats, [&] { cpu::matmul(x.data(), rows, inner, weights, out.data(), cols, false); });
  return 2.0 * double(rows) * double(inner) * double(cols) / best;
}

PeakMatmul measure_peak_matmul(int repeats) {
  PeakMatmul peak{measure_matmul(2048, 2048, 2048, repeats), "oneDNN sgemm 2048^3"};
  if (cpu::amx_available()) {
    const double amx = measure_matmul_bf16(2048, 2048, 2048, repeats, nullptr);
    if (amx > peak.flops_per_s) peak = {amx, "AMX bf16 matmul 2048^3"};
  }
  return peak;
}

int64_t measure_streaming_max_rows(int repeats, std::vector<StreamingSample>* samples, bool amx) {
  // Four 2048 x 4096 BF16 weights (64 MiB): each matmul reads its weight
  // from memory, as a decode step does, not from the last-level cache.
  constexpr int64_t inner = 2048, cols = 4096, matrices = 4;
  static const std::vector<int64_t> kPanelRows = {8, 16, 24, 32, 48, 64, 96, 128, 192, 256},
                                    kAmxRows = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32};
  const std::vector<int64_t>& all_rows = amx ? kAmxRows : kPanelRows;
  const StreamedBuffer<uint16_t> w(size_t(matrices * cols * inner), [](size_t i) {
    return uint16_t(0x3c00 + (i * 2654435761u >> 24) % 256);
  });
  std::vector<float> x(size_t(all_rows.back() * inner), 0.5f), out(size_t(all_rows.back() * cols));
  auto time = [&](bool streaming, int64_t rows) {
    double best = INFINITY;
    for (int r = 0; r <= repeats; ++r) {  // the first run warms up and is not counted
      for (int64_t i = 0; i < matrices; ++i) {
        const cpu::WeightView weights{w.data() + i * cols * inner, DType::BF16, nullptr, cols,
                                      inner};
        auto t0 = Clock::now();
        if (streaming)
          cpu::matmul_streaming(x.data(), rows, inner, weights, out.data(), cols, false);
        else if (amx)
          cpu::matmul_amx(x.data(), rows, inner, weights, out.data(), cols, false);
        else
          cpu::matmul_panel(x.data(), rows, inner, weights, out.data(), cols, false);
        if (r > 0) best = std::min(best, since(t0));
      }
    }
    return best;
  };
  std::vector<StreamingSample> measured;
  for (int64_t rows : all_rows) measured.push_back({rows, time(true, rows), time(false, rows)});
  if (samples) *samples = measured;
  return choose_streaming_max_rows(measured);
}

int64_t choose_streaming_max_rows(const std::vector<StreamingSample>& samples) {
  // The two paths can be level over a range of counts and cross more than
  // once (the portable kernels' strips against oneDNN on an AVX2 EPYC: panel
  // 4-10 % faster at 24-48 rows, streaming 6-27 % faster at 64-192), so the
  // first count where the panel wins is no crossover; the limit that loses the
  // least over all counts is.
  auto loss = [&](int64_t limit) {
    double sum = 0;
    for (const StreamingSample& s : samples)
      sum += (s.rows <= limit ? s.streaming_s : s.batched_s) / std::min(s.streaming_s, s.batched_s);
    return sum;
  };
  int64_t best = 1;
  for (const StreamingSample& s : samples)
    if (loss(s.rows) < loss(best)) best = s.rows;
  return best;
}

double measure_matmul_bf16(int64_t rows, int64_t inner, int64_t cols, int repeats,
                           Communicator* in_step, DType activations) {
  // 0x3f00 is 0.5 in bfloat16. The weight (inner x cols x 2 bytes) is meant
  // to stay in cache: the cost model adds the weights' memory time itself.
  const std::vector<float> ones(size_t(rows * inner), 1.0f);
  const StreamedBuffer<uint16_t> w = filled(size_t(cols * inner), uint16_t(0x3f00));
  double seconds = 0;
  if (activations == DType::F32) {
    std::vector<float> out(size_t(rows * cols));
    const cpu::WeightView weights{w.data(), DType::BF16, nullptr, cols, inner};
    auto run = [&] { cpu::matmul(ones.data(), rows, inner, weights, out.data(), cols, false); };
    seconds = in_step ? in_step_seconds(*in_step, repeats, run) : best_seconds(repeats, run);
  } else {
    // Through the CPU backend, whose matmul picks the path for 16-bit x by
    // its rows (and rounds what it writes): the path a forward pass takes.
    const std::unique_ptr<Backend> backend = make_cpu_backend(
        CpuBackendOptions{omp_get_max_threads(), DType::BF16, DType::BF16, activations});
    const Tensor x = backend->alloc({rows, inner}, activations);
    backend->copy_from_host(ones.data(), x);
    const Tensor weights =
        backend->upload_weight(w.data(), DType::BF16, {cols, inner}, {0, cols, 0, inner});
    const Tensor out = backend->alloc({rows, cols}, activations);
    auto run = [&] { backend->matmul(x, weights, out, false); };
    seconds = in_step ? in_step_seconds(*in_step, repeats, run) : best_seconds(repeats, run);
  }
  return 2.0 * double(rows) * double(inner) * double(cols) / seconds;
}

double measure_attention_decode(int64_t heads, int64_t keys, int64_t head_dim, int repeats,
                                Communicator* in_step, int64_t caches_per_thread) {
  // Caches per thread, all threads at once, as a decode step runs its
  // (sequence, KV head) tasks on every thread: the rate is the process's.
  // With one cache each (1 MiB at 4096 keys) it stays in its core's L2, so
  // what is timed is the arithmetic; with many the caches come from memory.
  // A BF16 cache, the default --kv-dtype; 0x3e4d and 0x3e9a are 0.2 and 0.3.
  const int threads = omp_get_max_threads();
  const int64_t caches = threads * caches_per_thread;
  const size_t cache = size_t(keys * head_dim);
  const int64_t scratch_floats = cpu::attention_rows_scratch(heads, head_dim);
  std::vector<float> q(size_t(heads * head_dim), 0.1f), out(size_t(threads * heads * head_dim)),
      scratch(size_t(threads * scratch_floats));
  const StreamedBuffer<uint16_t> k = filled(cache * size_t(caches), uint16_t(0x3e4d)),
                                 v = filled(cache * size_t(caches), uint16_t(0x3e9a));
  // The query heads of one new token at the last position: each sees every key.
  const cpu::AttentionQuery query{q.data(), head_dim, heads, keys - 1, 0, 0};
  auto run = [&] {
#pragma omp parallel for schedule(static, 1)
    for (int t = 0; t < threads; ++t)
      for (int64_t i = t; i < caches; i += threads) {
        const cpu::KVView kv{k.data() + size_t(i) * cache, v.data() + size_t(i) * cache,
                             DType::BF16, head_dim, 1.0f / std::sqrt(float(head_dim))};
        cpu::attention_rows(query, kv, out.data() + t * heads * head_dim, head_dim,
                            scratch.data() + t * scratch_floats);
      }
  };
  const double seconds =
      in_step ? in_step_seconds(*in_step, repeats, run) : best_seconds(repeats, run);
  return 4.0 * double(heads * keys * head_dim) * double(caches) / seconds;
}

double attention_read_overlap(double arithmetic_s, double read_s, double measured_s) {
  const double shorter = std::min(arithmetic_s, read_s);
  if (shorter <= 0) return 0.0;
  return std::clamp((arithmetic_s + read_s - measured_s) / shorter, 0.0, 1.0);
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t middle = values.size() / 2;
  return values.size() % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

std::vector<std::pair<double, double>> median_rates(
    const std::vector<std::vector<std::pair<double, double>>>& passes) {
  if (passes.empty()) return {};
  std::vector<std::pair<double, double>> out = passes.front();
  for (size_t i = 0; i < out.size(); ++i) {
    std::vector<double> rates;
    for (const auto& pass : passes) rates.push_back(pass.at(i).second);
    out[i].second = median(rates);
  }
  return out;
}

double weight_read_fraction(const std::vector<WeightStream>& runs) {
  if (runs.empty()) return 0.0;
  std::vector<double> ratios;
  for (const WeightStream& r : runs)
    ratios.push_back(r.read_Bps > 0 ? std::clamp(r.stream_Bps / r.read_Bps, 0.01, 1.0) : 1.0);
  return median(ratios);
}

namespace {

// A `bytes` array for read_once.
StreamedBuffer<float> read_array(size_t bytes) {
  return StreamedBuffer<float>(bytes / sizeof(float), [](size_t i) { return float(i & 7); });
}

// One read of every element of `data` on the process's threads (their sum,
// so that the reads are kept). Each thread reads its share as kStreams
// streams at once, 256 bytes of each in turn, as the streaming matmul reads
// several weight rows at once: one stream per thread left bandwidth unused
// (2 threads of a Zen 3 EPYC on huge pages: 35-39 GB/s for one stream each,
// 37-46 for eight, in the same minute).
double read_once(const StreamedBuffer<float>& array) {
  constexpr size_t kStreams = 8, kBlock = 64;  // floats per block: 4 loads of 64 bytes
  const float* data = array.data();
  const size_t blocks = array.size / kBlock;
  double sum = 0;
#pragma omp parallel reduction(+ : sum)
  {
    const size_t threads = size_t(omp_get_num_threads()), me = size_t(omp_get_thread_num());
    const size_t first = blocks * me / threads, last = blocks * (me + 1) / threads;
    const size_t per_stream = (last - first) / kStreams;
#ifdef __AVX512F__
    // 64-byte loads, as the CPU backend's kernels read weights: GCC's
    // auto-vectorised loop uses 32-byte vectors on these cores and reads
    // about 20% slower.
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    auto add_block = [&](size_t block) {
      const float* p = data + block * kBlock;
      a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p));
      a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + 16));
      a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + 32));
      a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + 48));
    };
#else
    // Four independent sums of 8 lanes, held in registers: the loop runs at
    // memory speed. An array of 32 partial sums, indexed in the loop, kept
    // its sums in memory and read 20.6 GB/s where this reads 37 (2 threads on
    // a Zen 3 EPYC).
    using Floats8 = float __attribute__((vector_size(32)));
    Floats8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
    auto add_block = [&](size_t block) {
      Floats8 v[8];
      std::memcpy(v, data + block * kBlock, sizeof v);
      a0 += v[0] + v[4];
      a1 += v[1] + v[5];
      a2 += v[2] + v[6];
      a3 += v[3] + v[7];
    };
#endif
    for (size_t i = 0; i < per_stream; ++i)
      for (size_t stream = 0; stream < kStreams; ++stream)
        add_block(first + stream * per_stream + i);
    for (size_t block = first + kStreams * per_stream; block < last; ++block) add_block(block);
#ifdef __AVX512F__
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
    float lanes[8];
    const Floats8 total = (a0 + a1) + (a2 + a3);
    std::memcpy(lanes, &total, sizeof lanes);
#endif
    for (float v : lanes) sum += v;
  }
  return sum;
}

}  // namespace

double measure_memory_read(size_t bytes, int repeats) {
  const StreamedBuffer<float> data = read_array(bytes);
  double best = INFINITY, sink = 0;
  for (int r = 0; r <= repeats; ++r) {
    auto t0 = Clock::now();
    sink += read_once(data);
    const double t = since(t0);
    if (r > 0) best = std::min(best, t);
  }
  if (sink < 0) fmt::print("");  // keeps the reads
  return double(data.size * sizeof(float)) / best;
}

namespace {

// The read rate of each member of `group` while all of them read at once.
double measure_memory_read_in_step(size_t bytes, Communicator& group) {
  const StreamedBuffer<float> data = read_array(bytes);
  double sink = 0;
  const double seconds = in_step_seconds(group, 3, [&] { sink += read_once(data); });
  if (sink < 0) fmt::print("");  // keeps the reads
  return double(data.size * sizeof(float)) / seconds;
}

}  // namespace

// The rate at which the decode matmul reads its weights from memory, every
// member of `group` at once: one row of x against BF16 weights of [4096 x
// 2048] (16 MiB, a layer's matrix) that fill `bytes`, one after another, as
// decode at batch 1 reads a forward pass's.
double measure_weight_stream(size_t bytes, Communicator& group) {
  constexpr int64_t kCols = 4096, kInner = 2048;
  const size_t per_weight = size_t(kCols * kInner);
  const size_t count = std::max<size_t>(1, bytes / (per_weight * 2));
  const StreamedBuffer<uint16_t> w = filled(per_weight * count, uint16_t(0x3f00));
  const std::vector<float> x(size_t(kInner), 1.0f);
  std::vector<float> out(static_cast<size_t>(kCols));
  const double seconds = in_step_seconds(group, 3, [&] {
    for (size_t i = 0; i < count; ++i) {
      const cpu::WeightView weights{w.data() + i * per_weight, DType::BF16, nullptr, kCols, kInner};
      cpu::matmul(x.data(), 1, kInner, weights, out.data(), kCols, false);
    }
  });
  return double(per_weight * count * 2) / seconds;
}

SpeedProbe measure_speed_probe(Communicator& all, bool quick) {
  SpeedProbe p;
  p.matmul_flops = measure_matmul_bf16(16, 1024, 2048, quick ? 20 : 100, &all);
  p.memory_Bps = measure_memory_read_in_step(kSpeedProbeReadBytes, all);
  return p;
}

std::string speed_drift_warning(const SpeedProbe& start, const SpeedProbe& end, double tolerance) {
  auto change = [](double from, double to) { return from > 0 ? to / from - 1 : 0.0; };
  const double matmul = change(start.matmul_flops, end.matmul_flops);
  const double memory = change(start.memory_Bps, end.memory_Bps);
  if (std::abs(matmul) <= tolerance && std::abs(memory) <= tolerance) return "";
  return fmt::format(
      "the machine's speed moved while calibrate measured: a 16-row BF16 matmul ran at {:.3g} "
      "FLOP/s at the start and {:.3g} at the end ({:+.0f}%), a {} MiB read at {:.3g} and {:.3g} "
      "B/s ({:+.0f}%); the spec prices jobs at a speed the machine did not keep: run calibrate "
      "again, on a quieter machine, until two runs agree",
      start.matmul_flops, end.matmul_flops, 100 * matmul, kSpeedProbeReadBytes >> 20,
      start.memory_Bps, end.memory_Bps, 100 * memory);
}

std::vector<CollectiveSample> measure_collectives(Communicator& comm, size_t max_bytes) {
  std::vector<CollectiveSample> out;
  const int members = comm.size();
  for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    const size_t count = bytes / sizeof(float);
    // recv holds a member's count per member: an all-gather's output, and
    // the input of a reduce-scatter and an all-to-all.
    std::vector<float> send(count, 1.0f), recv(count * size_t(members), 1.0f),
        all_to_all(count * size_t(members));
    const int repeats = bytes <= (1u << 20) ? 20 : 4;
    // `bytes` is a member's share: an all-gather's input, a reduce-scatter's
    // output, an all-to-all's block for each member, an all-reduce's whole
    // vector. Counted as the cost model counts them: an all-gather's output,
    // twice an all-reduce's input, the input of a reduce-scatter or an
    // all-to-all.
    const double per_member = double(bytes) * members;
    const std::pair<const char*, double> kinds[] = {{"all-gather", per_member},
                                                    {"all-reduce", 2.0 * double(bytes)},
                                                    {"reduce-scatter", per_member},
                                                    {"all-to-all", per_member}};
    for (const auto& [kind, model_bytes] : kinds) {
      const std::string_view k = kind;
      double best = INFINITY;
      for (int r = 0; r <= repeats; ++r) {
        comm.barrier();
        auto t0 = Clock::now();
        if (k == "all-gather")
          comm.all_gather(send.data(), recv.data(), count);
        else if (k == "all-reduce")
          comm.all_reduce(send.data(), count);
        else if (k == "reduce-scatter")
          comm.reduce_scatter(recv.data(), send.data(), count);
        else
          comm.all_to_all(recv.data(), all_to_all.data(), count);
        const double t = since(t0);
        if (r > 0) best = std::min(best, t);
      }
      out.push_back({kind, model_bytes, best});
    }
  }
  return out;
}

std::vector<CollectiveSample> measure_sends(Communicator& comm, size_t max_bytes) {
  std::vector<CollectiveSample> out;
  const int me = comm.rank();
  for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    std::vector<char> buffer(bytes, 1);
    const int repeats = bytes <= (1u << 20) ? 20 : 4;
    double best = INFINITY;
    for (int r = 0; r <= repeats; ++r) {
      comm.barrier();
      auto t0 = Clock::now();
      if (me == 0) {
        comm.send(buffer.data(), bytes, 1);
        comm.recv(buffer.data(), bytes, 1);
      } else if (me == 1) {
        comm.recv(buffer.data(), bytes, 0);
        comm.send(buffer.data(), bytes, 0);
      }
      const double t = since(t0) / 2;
      if (r > 0) best = std::min(best, t);
    }
    comm.broadcast(&best, sizeof best, 0);  // every member reports member 0's figure
    out.push_back({"send", double(bytes), best});
  }
  return out;
}

void fit_latency_bandwidth(const std::vector<CollectiveSample>& s, double& latency,
                           double& bandwidth) {
  // Least squares of t = a + b * bytes, then bandwidth = 1 / b.
  double n = double(s.size()), sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& p : s)
    sx += p.bytes, sy += p.seconds, sxx += p.bytes * p.bytes, sxy += p.bytes * p.seconds;
  const double b = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  const double a = (sy - b * sx) / n;
  bandwidth = b > 0 ? 1.0 / b : INFINITY;
  // The smallest message of each kind bounds the start-up cost when the
  // intercept is noisy; averaged over the kinds, since they start up
  // differently (across nodes a small all-reduce took 10x a small all-gather).
  std::map<std::string, CollectiveSample> smallest;
  for (const auto& p : s)
    if (!smallest.count(p.kind) || p.bytes < smallest[p.kind].bytes) smallest[p.kind] = p;
  double bound = 0;
  for (const auto& [kind, p] : smallest) bound += p.seconds / double(smallest.size());
  latency = a > 0 ? std::min(a, bound) : bound;
}

double fit_half_rows(const std::vector<MatmulSample>& s, double peak) {
  // Relative (log) errors: the fall-off spans an order of magnitude, and the
  // thin matmuls of decode must count as much as the square ones of prefill.
  double best_h = 0, best_err = INFINITY;
  for (double h = 0; h <= 4096; h += h < 16 ? 0.25 : h * 0.02) {
    double err = 0;
    for (const auto& m : s) {
      const double r = double(m.rows);
      err += std::pow(std::log(m.flops_per_s / peak) - std::log(r / (r + h)), 2);
    }
    if (err < best_err) best_err = err, best_h = h;
  }
  return best_h;
}

std::array<double, 6> fit_overheads(const std::vector<OverheadSample>& s, bool with_collectives) {
  constexpr int kTerms = 6;
  auto features = [](const OverheadSample& p) {
    return std::array<double, kTerms>{1.0,
                                      p.rows,
                                      p.collectives - p.inter_node_collectives,
                                      p.inter_node_collectives,
                                      p.gathered_weight_bytes,
                                      p.inter_node_bytes};
  };
  // The weighted normal equations, once: a = sum w x x^T, b = sum w x y.
  double a[kTerms][kTerms] = {}, b[kTerms] = {}, yy = 0;
  for (const auto& p : s) {
    const auto x = features(p);
    for (int i = 0; i < kTerms; ++i) {
      for (int j = 0; j < kTerms; ++j) a[i][j] += p.weight * x[size_t(i)] * x[size_t(j)];
      b[i] += p.weight * x[size_t(i)] * p.per_layer_pass_s;
    }
    yy += p.weight * p.per_layer_pass_s * p.per_layer_pass_s;
  }
  // A term no sample exercises has no data; without collectives only the
  // first two may enter.
  int allowed = 0;
  for (int i = 0; i < kTerms; ++i)
    if (a[i][i] > 0 && (i < 2 || with_collectives)) allowed |= 1 << i;
  // Non-negative least squares, exactly: of the unconstrained fits on every
  // subset of the allowed terms, the one with all coefficients >= 0 and the
  // least residual (64 subsets of 6 terms; dropping the first negative term
  // and fitting again, as before, could keep a worse subset). Terms are
  // scaled to a unit diagonal so that one pivot threshold fits rows, counts
  // and bytes alike.
  std::array<double, kTerms> best{};
  double best_residual = yy;  // every term out
  for (int subset = 1; subset < (1 << kTerms); ++subset) {
    if ((subset & ~allowed) != 0) continue;
    int index[kTerms], k = 0;
    for (int i = 0; i < kTerms; ++i)
      if (subset & (1 << i)) index[k++] = i;
    double m[kTerms][kTerms + 1] = {};
    for (int r = 0; r < k; ++r) {
      const int i = index[r];
      for (int c = 0; c < k; ++c)
        m[r][c] = a[i][index[c]] / std::sqrt(a[i][i] * a[index[c]][index[c]]);
      m[r][k] = b[i] / std::sqrt(a[i][i]);
    }
    bool singular = false;
    for (int r = 0; r < k && !singular; ++r) {  // Gauss-Jordan with partial pivoting
      int pivot = r;
      for (int q = r + 1; q < k; ++q)
        if (std::abs(m[q][r]) > std::abs(m[pivot][r])) pivot = q;
      std::swap(m[r], m[pivot]);
      singular = std::abs(m[r][r]) < 1e-10;
      for (int q = 0; q < k && !singular; ++q) {
        if (q == r) continue;
        const double f = m[q][r] / m[r][r];
        for (int c = r; c <= k; ++c) m[q][c] -= f * m[r][c];
      }
    }
    if (singular) continue;
    std::array<double, kTerms> coef{};
    bool feasible = true;
    for (int r = 0; r < k; ++r) {
      coef[size_t(index[r])] = m[r][k] / m[r][r] / std::sqrt(a[index[r]][index[r]]);
      feasible &= coef[size_t(index[r])] >= 0;
    }
    if (!feasible) continue;
    // Residual from the normal equations: y'Wy - 2 c'b + c'Ac.
    double residual = yy;
    for (int i = 0; i < kTerms; ++i) {
      residual -= 2 * coef[size_t(i)] * b[i];
      for (int j = 0; j < kTerms; ++j) residual += coef[size_t(i)] * a[i][j] * coef[size_t(j)];
    }
    if (residual < best_residual) best_residual = residual, best = coef;
  }
  return best;
}

// Whether the job's nodes run on one kernel (their boot ids agree): nodes
// made of namespaces or containers on one machine, sharing its cores.
bool nodes_share_one_kernel(Communicator& all) {
  char id[64] = {};
  if (FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
    if (!std::fgets(id, sizeof id, f)) id[0] = 0;
    std::fclose(f);
  }
  std::vector<char> ids(sizeof id * size_t(all.size()));
  all.all_gather(id, ids.data(), sizeof id, DType::I8);
  for (int r = 1; r < all.size(); ++r)
    if (id[0] == 0 || std::memcmp(ids.data(), ids.data() + sizeof id * size_t(r), sizeof id) != 0)
      return false;
  return true;
}

std::vector<size_t> rate_dips(const std::vector<double>& rates) {
  std::vector<size_t> out;
  for (size_t i = 0; i < rates.size(); ++i) {
    const bool has_left = i > 0, has_right = i + 1 < rates.size();
    if (!has_left && !has_right) continue;
    const double neighbours =
        std::min(has_left ? rates[i - 1] : INFINITY, has_right ? rates[i + 1] : INFINITY);
    if (rates[i] < (has_left && has_right ? 0.5 : 0.25) * neighbours) out.push_back(i);
  }
  return out;
}

namespace {

// A table of (x, rate) measured at each of `xs`, the dips (rate_dips)
// measured up to twice more, keeping the fastest of the tries. The rates
// are in-step ones every rank holds alike (or one rank's own), so every
// rank of a step re-measures the same points.
template <typename Measure>
std::vector<std::pair<double, double>> measured_table(const std::vector<int64_t>& xs,
                                                      Measure&& measure) {
  std::vector<double> rates;
  for (int64_t x : xs) rates.push_back(measure(x));
  for (int attempt = 0; attempt < 2; ++attempt)
    for (size_t i : rate_dips(rates)) rates[i] = std::max(rates[i], measure(xs[i]));
  std::vector<std::pair<double, double>> out;
  for (size_t i = 0; i < xs.size(); ++i) out.emplace_back(double(xs[i]), rates[i]);
  return out;
}

}  // namespace

Calibration calibrate(const CalibrationGroups& g, const std::string& name, bool quick) {
  Communicator& comm = *g.all;
  Calibration c;
  c.ranks = comm.size();
  c.ranks_per_node = g.ranks_per_node;
  c.nodes = g.nodes;
  c.threads = omp_get_max_threads();
  // Matmul: the square case gives the peak, thin ones the fall-off with rows.
  // The thin ones use a 512 x 512 weight (1 MiB, in cache), so that what they
  // time is compute: the cost model adds the weights' memory time itself.
  const int64_t big = quick ? 1024 : 2048, thin = 512;
  comm.barrier();  // every rank measures at once: they share the machine
  c.probe_start = measure_speed_probe(comm, quick);
  for (int64_t rows : {int64_t(1), int64_t(4), int64_t(16), int64_t(64), int64_t(256)})
    c.matmul.push_back({rows, thin, thin, measure_matmul(rows, thin, thin, quick ? 20 : 100)});
  c.matmul.push_back({big, big, big, measure_matmul(big, big, big, quick ? 2 : 4)});
  double peak = 0;
  for (const auto& m : c.matmul) peak = std::max(peak, m.flops_per_s);
  // The rows decode (1 to a batch) and prefill (batch x prompt) multiply
  // with, on a layer-sized BF16 weight (4 MiB), and the read bandwidth by
  // working set (caches serve the smaller ones), every rank in step with the
  // others: all run at once and each rate is the slowest rank's, as in a
  // forward pass where ranks share cores and memory. Then the same with one
  // rank per node working while the others sleep, timed the same way (an
  // average over runs of 50 ms and more: on a machine whose speed moves, the
  // fastest run predicted a 1-rank job 30-45% fast): a job smaller than a
  // node runs so.
  auto rates = [&](std::vector<MatmulSample>& matmul, std::vector<MatmulSample>& matmul_bf16x,
                   std::vector<std::pair<double, double>>& memory,
                   std::vector<std::pair<double, double>>& attention, Communicator* in_step) {
    // The read bandwidth by working set, three times: first, between the
    // tables below and last, each size's median kept (median_rates). Read
    // once, a slow phase of the host set the price of every memory-bound
    // step: 28.6 GB/s at 512 MiB where the probes before and after read 42.7
    // and 45.1, and decode at batch 1 priced 44 % slow.
    std::vector<int64_t> sizes;
    for (int64_t mib : {8, 32, 64, 128, 256, 512})
      if (!quick || mib <= 128) sizes.push_back(mib << 20);
    std::vector<std::vector<std::pair<double, double>>> memory_passes;
    auto memory_pass = [&] {
      memory_passes.push_back(measured_table(sizes, [&](int64_t bytes) {
        return in_step ? measure_memory_read_in_step(size_t(bytes), *in_step)
                       : measure_memory_read(size_t(bytes), 3);
      }));
    };
    memory_pass();
    // Decode attention: 1 to 16 query heads per KV head, 64 dims, a
    // 4096-token context (long enough that the per-call work is a small
    // part, as where attention matters; 1 MiB, in cache: the cost model
    // adds the KV cache's memory time).
    const std::vector<int64_t> groups = {1, 2, 4, 8, 16};
    attention = measured_table(groups, [&](int64_t group) {
      return measure_attention_decode(group, 4096, 64, quick ? 10 : 40, in_step);
    });
    memory_pass();
    const std::vector<int64_t> row_counts = {1, 2, 4, 8, 16, 17, 32, 64, 128, 512, 2048};
    auto matmul_table = [&](DType activations) {
      std::vector<MatmulSample> out;
      for (const auto& [rows, rate] : measured_table(row_counts, [&](int64_t rows) {
             const int repeats =
                 std::max(5, int((quick ? 2e8 : 1e9) / (4.0 * 1024 * 1024 * double(rows))));
             return measure_matmul_bf16(rows, 1024, 2048, std::min(repeats, 200), in_step,
                                        activations);
           }))
        out.push_back({int64_t(rows), 1024, 2048, rate});
      return out;
    };
    matmul = matmul_table(DType::F32);
    if (cpu::bf16_dot_available()) matmul_bf16x = matmul_table(DType::BF16);
    memory_pass();
    memory = median_rates(memory_passes);
  };
  // The kernel crossovers before the rates by rows, and in force while they
  // are measured: the rates are then those of the paths generate takes with
  // this spec (measured with the defaults, the row count between the
  // default and the measured crossover was priced on the other kernel).
  // Rank 0's crossovers, the ones the spec records, for every rank.
  comm.barrier();
  c.spec.cpu_streaming_max_rows = measure_streaming_max_rows(quick ? 2 : 5, &c.streaming);
  if (cpu::amx_available())
    c.spec.cpu_amx_streaming_max_rows =
        measure_streaming_max_rows(quick ? 2 : 5, &c.streaming_amx, true);
  int64_t crossovers[2] = {c.spec.cpu_streaming_max_rows, c.spec.cpu_amx_streaming_max_rows};
  comm.broadcast(crossovers, sizeof(crossovers), 0);
  c.spec.cpu_streaming_max_rows = crossovers[0];
  c.spec.cpu_amx_streaming_max_rows = crossovers[1];
  cpu::set_streaming_max_rows(c.spec.cpu_streaming_max_rows);
  if (c.spec.cpu_amx_streaming_max_rows > 0)
    cpu::set_amx_streaming_max_rows(c.spec.cpu_amx_streaming_max_rows);
  comm.barrier();
  rates(c.matmul_bf16, c.matmul_bf16_activations, c.memory_by_bytes, c.attention_by_group, &comm);
  comm.barrier();
  // Decode attention from memory, against its arithmetic in L2 (the table
  // above) and a plain read of as many bytes, each group's read timed just
  // before its attention (the machine's speed moves): how much of the
  // shorter one the kernel hides (attention_read_overlap).
  {
    const int64_t keys = 4096, head_dim = 64, threads = omp_get_max_threads();
    const int64_t per_thread = std::max<int64_t>(1, (quick ? 64 : 256) / threads);
    const double caches = double(per_thread * threads);
    const double bytes = caches * 2.0 * double(keys * head_dim) * 2.0;  // K and V, BF16
    double overlap_sum = 0;
    for (const auto& [group, l2_rate] : c.attention_by_group) {
      const double read_Bps = measure_memory_read_in_step(size_t(bytes), comm);
      const double rate = measure_attention_decode(int64_t(group), keys, head_dim, quick ? 2 : 5,
                                                   &comm, per_thread);
      const double flops = 4.0 * group * double(keys * head_dim) * caches;
      AttentionFromMemory a{int64_t(group), flops / l2_rate, bytes / read_Bps, flops / rate, 0};
      a.overlap = attention_read_overlap(a.arithmetic_s, a.read_s, a.measured_s);
      overlap_sum += a.overlap;
      c.attention_from_memory.push_back(a);
    }
    if (!c.attention_from_memory.empty())
      c.spec.measured.attention_read_overlap = overlap_sum / double(c.attention_from_memory.size());
  }
  comm.barrier();
  // The decode matmul's read of its weights against a plain read of as many
  // bytes just before it, three times (the host's speed moves): the median
  // ratio is the fraction of the read bandwidth the weights stream at
  // (weight_read_fraction).
  {
    const size_t bytes = size_t(quick ? 128 : 512) << 20;
    for (int run = 0; run < 3; ++run) {
      WeightStream s;
      s.read_Bps = measure_memory_read_in_step(bytes, comm);
      s.stream_Bps = measure_weight_stream(bytes, comm);
      c.weight_streams.push_back(s);
    }
    c.spec.measured.weight_read_fraction = weight_read_fraction(c.weight_streams);
  }
  comm.barrier();
  Communicator* node = g.nodes > 1 ? g.in_node : (c.ranks > 1 ? &comm : nullptr);
  if (node) {
    // The node's first rank measures; the others wait in a sleeping receive.
    char done = 1;
    if (node->rank() == 0) {
      rates(c.matmul_bf16_alone, c.matmul_bf16_activations_alone, c.memory_by_bytes_alone,
            c.attention_by_group_alone, g.self);
      for (int m = 1; m < node->size(); ++m) node->send(&done, 1, m);
    } else {
      node->recv(&done, 1, 0);
    }
  }
  comm.barrier();
  c.memory_read_Bps = measure_memory_read(size_t(quick ? 128 : 512) << 20, 3);
  c.memory_bytes =
      double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE)) / g.ranks_per_node;
  const size_t max_bytes = size_t(quick ? 4 : 64) << 20;
  // Inside a node: the node's ranks (every node at once), or all ranks on one node.
  Communicator* inside = g.nodes > 1 ? g.in_node : (c.ranks > 1 ? &comm : nullptr);
  comm.barrier();
  if (inside) {
    c.collectives = measure_collectives(*inside, max_bytes);
    c.sends = measure_sends(*inside, max_bytes);
    fit_latency_bandwidth(c.collectives, c.collective_latency_s, c.collective_bandwidth_Bps);
    c.spec.measured.collective_members = inside->size();
    for (const CollectiveSample& s : c.collectives)
      c.spec.measured.collective_s_by_bytes[s.kind].emplace_back(s.bytes, s.seconds);
  }
  // Across nodes: one rank per node, every local rank's group at once, as
  // the groups of a mesh axis that spans the nodes run.
  comm.barrier();
  if (g.nodes > 1) {
    c.inter_collectives = measure_collectives(*g.across, max_bytes);
    c.inter_sends = measure_sends(*g.across, max_bytes);
    fit_latency_bandwidth(c.inter_collectives, c.inter_latency_s, c.inter_bandwidth_Bps);
    c.spec.measured.inter_node_collective_members = g.across->size();
    for (const CollectiveSample& s : c.inter_collectives)
      c.spec.measured.inter_node_collective_s_by_bytes[s.kind].emplace_back(s.bytes, s.seconds);
  }

  HardwareSpec& h = c.spec;
  h.name = name;
  // The peak MFU divides by: the fastest matmul measured, the BF16 weights
  // of a forward pass included (on AMX they beat F32 sgemm's square case,
  // and a peak below them would put MFU above 100%).
  double forward_peak = peak;
  for (const auto* table : {&c.matmul_bf16, &c.matmul_bf16_alone})
    for (const auto& m : *table) forward_peak = std::max(forward_peak, m.flops_per_s);
  h.peak_flops["f32"] = forward_peak;
  h.activation_dtype = "f32";
  h.memory_bytes = c.memory_bytes;
  h.memory_bandwidth = c.memory_read_Bps;
  h.chips_per_node = g.ranks_per_node;
  h.nodes_share_cores = g.nodes > 1 && nodes_share_one_kernel(comm);
  h.topology = "switched";
  // One rank has nobody to talk to: the memory bandwidth stands in (a copy
  // through shared memory can not beat it) so plans stay finite.
  h.intra_node_bandwidth = inside ? c.collective_bandwidth_Bps : c.memory_read_Bps;
  h.intra_node_latency = inside ? c.collective_latency_s : 0;
  if (g.nodes > 1) {
    // The node's network, written as one card: the cost model gives each of
    // the ranks_per_node groups that cross at once 1 / ranks_per_node of it,
    // which is what each of them measured.
    h.nics_per_node = 1;
    h.inter_node_bandwidth = c.inter_bandwidth_Bps * g.ranks_per_node;
    h.inter_node_latency = c.inter_latency_s;
  } else {
    h.inter_node_bandwidth = h.intra_node_bandwidth;
    h.inter_node_latency = h.intra_node_latency;
  }
  h.efficiency.matmul_peak_fraction = 1.0;  // the peak above is already what sgemm achieves
  h.efficiency.comm_overlap = 0.0;          // the CPU runtime runs collectives between matmuls
  h.efficiency.weight_gather_overlap = 0.0;
  h.efficiency.matmul_half_rows = fit_half_rows(c.matmul, peak);
  for (const auto& m : c.matmul_bf16)
    h.measured.matmul_flops_by_rows.emplace_back(double(m.rows), m.flops_per_s);
  h.measured.memory_Bps_by_bytes = c.memory_by_bytes;
  for (const auto& m : c.matmul_bf16_alone)
    h.measured.matmul_flops_by_rows_alone.emplace_back(double(m.rows), m.flops_per_s);
  for (const auto& m : c.matmul_bf16_activations)
    h.measured.matmul_flops_by_rows_bf16.emplace_back(double(m.rows), m.flops_per_s);
  for (const auto& m : c.matmul_bf16_activations_alone)
    h.measured.matmul_flops_by_rows_bf16_alone.emplace_back(double(m.rows), m.flops_per_s);
  h.measured.memory_Bps_by_bytes_alone = c.memory_by_bytes_alone;
  h.measured.attention_decode_flops_by_group = c.attention_by_group;
  h.measured.attention_decode_flops_by_group_alone = c.attention_by_group_alone;
  return c;
}

std::string to_yaml(const Calibration& c) {
  const HardwareSpec& h = c.spec;
  char date[32];
  std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M", std::gmtime(&now));
  std::string out = fmt::format(
      "# Measured by `shardlm calibrate` on {} UTC: {} rank(s) on {} node(s), {} per node, {} "
      "thread(s) each.\n"
      "# One rank is one chip. Matmul: the CPU backend's kernel (sgemm above 16 rows), best of "
      "several runs (rows x inner x cols: "
      "FLOP/s):\n",
      date, c.ranks, c.nodes, c.ranks_per_node, c.threads);
  for (const auto& m : c.matmul)
    out += fmt::format("#   {} x {} x {}: {:.4g}\n", m.rows, m.inner, m.cols, m.flops_per_s);
  out += fmt::format("# Memory: parallel read of an array larger than the caches: {:.4g} B/s.\n",
                     c.memory_read_Bps);
  if (c.probe_end.matmul_flops > 0) {
    out += fmt::format(
        "# Speed at the start and at the end (16-row BF16 matmul in cache; {} MiB read): "
        "{:.4g} -> {:.4g} FLOP/s, {:.4g} -> {:.4g} B/s.\n",
        kSpeedProbeReadBytes >> 20, c.probe_start.matmul_flops, c.probe_end.matmul_flops,
        c.probe_start.memory_Bps, c.probe_end.memory_Bps);
    const std::string warning = speed_drift_warning(c.probe_start, c.probe_end);
    if (!warning.empty()) out += "# WARNING: " + warning + ".\n";
  }
  if (!c.attention_from_memory.empty())
    out +=
        "# Decode attention, BF16 caches of 4096 keys from memory (query heads per KV head: s of\n"
        "# arithmetic at the in-L2 rate, s of a plain read, s measured -> the fraction of the\n"
        "# shorter hidden; measured.attention_read_overlap is their mean):\n";
  for (const auto& a : c.attention_from_memory)
    out += fmt::format("#   {}: {:.4g}, {:.4g}, {:.4g} -> {:.2f}\n", a.group, a.arithmetic_s,
                       a.read_s, a.measured_s, a.overlap);
  if (!c.weight_streams.empty())
    out +=
        "# Decode at batch 1 reading BF16 weights from memory against a plain read just before\n"
        "# (B/s: weights, read; measured.weight_read_fraction is the median ratio):\n";
  for (const auto& s : c.weight_streams)
    out += fmt::format("#   {:.4g}, {:.4g}\n", s.stream_Bps, s.read_Bps);
  out += "# Decode matmul paths on BF16 weights from memory (rows: streaming s, panel s):\n";
  for (const auto& s : c.streaming)
    out += fmt::format("#   {}: {:.4g}, {:.4g}\n", s.rows, s.streaming_s, s.batched_s);
  if (!c.streaming_amx.empty())
    out += "# The same, streaming against AMX (rows: streaming s, AMX s):\n";
  for (const auto& s : c.streaming_amx)
    out += fmt::format("#   {}: {:.4g}, {:.4g}\n", s.rows, s.streaming_s, s.batched_s);
  if (!c.matmul_bf16.empty())
    out +=
        "# measured.matmul_flops_by_rows: BF16 weights [1024 x 2048], every rank at once, the\n"
        "# slowest rank's average (_alone: one rank per node, its average); _bf16: the same\n"
        "# with BF16 activations (x and output), as the CPU backend multiplies them;\n"
        "# measured.memory_Bps_by_bytes: the same parallel read at each working set.\n";
  auto samples = [&out](const char* title, const std::vector<CollectiveSample>& list) {
    out += fmt::format("# {} (bytes as the cost model counts them: seconds):\n", title);
    for (const auto& s : list)
      out += fmt::format("#   {} {:.0f}: {:.4g}\n", s.kind, s.bytes, s.seconds);
  };
  if (!c.collectives.empty()) {
    out += fmt::format(
        "# measured.collective_s_by_bytes: every collective kind timed {}, best of several runs\n"
        "# (bytes as the cost model counts them: an all-gather's output, twice an all-reduce's\n"
        "# input, the input of a reduce-scatter or all-to-all).\n",
        c.nodes > 1 ? "inside a node (each node's ranks, all nodes at once)" : "over all ranks");
    samples("Point-to-point, one send (half a round trip) inside a node", c.sends);
    out += fmt::format("# Fit t = latency + bytes / bandwidth: {:.3g} s + bytes / {:.4g} B/s.\n",
                       c.collective_latency_s, c.collective_bandwidth_Bps);
  }
  if (c.nodes > 1) {
    out +=
        "# measured.inter_node_collective_s_by_bytes: the same across nodes (one rank per node,\n"
        "# every local rank's group at once).\n";
    samples("Point-to-point, one send between two nodes", c.inter_sends);
    out += fmt::format(
        "# Fit t = latency + bytes / bandwidth: {:.3g} s + bytes / {:.4g} B/s per rank; {} "
        "ranks per node share the node's network: {:.4g} B/s per node.\n",
        c.inter_latency_s, c.inter_bandwidth_Bps, c.ranks_per_node,
        c.inter_bandwidth_Bps * c.ranks_per_node);
  }
  if (c.ranks == 1) {
    out +=
        "# Ran with 1 rank: no collective was measured. The interconnect below is the memory\n"
        "# bandwidth as a stand-in; run under `mpirun -n N` to measure it.\n";
  }
  out += fmt::format(
      "name: {}\npeak_flops:\n  f32: {:.6g}\nmemory:\n  capacity_bytes: {:.6g}\n  bandwidth_Bps: "
      "{:.6g}\n"
      "chips_per_node: {}\nactivation_dtype: f32\ninterconnect:\n  topology: switched\n"
      "  intra_node_bandwidth_Bps: {:.6g}\n  inter_node_bandwidth_Bps: {:.6g}\n  latency_s: "
      "{:.6g}\n"
      "  inter_node_latency_s: {:.6g}\n",
      h.name, h.peak("f32"), h.memory_bytes, h.memory_bandwidth, h.chips_per_node,
      h.intra_node_bandwidth, h.inter_node_bandwidth, h.intra_node_latency, h.inter_node_latency);
  if (h.nics_per_node > 0) out += fmt::format("  nics_per_node: {}\n", h.nics_per_node);
  if (h.nodes_share_cores)
    out +=
        "# Every node runs on one kernel (one boot id): the nodes share this host's cores.\n"
        "nodes_share_cores: true\n";
  if (h.cpu_streaming_max_rows > 0)
    out += fmt::format(
        "# Rows up to which the CPU backend's streaming matmul takes over from oneDNN: the "
        "limit\n# that loses least, summed over the timings above.\ncpu_streaming_max_rows: {}\n",
        h.cpu_streaming_max_rows);
  if (h.cpu_amx_streaming_max_rows > 0)
    out += fmt::format(
        "# Rows up to which it beats the AMX kernel on BF16 weights (from the timings above).\n"
        "cpu_amx_streaming_max_rows: {}\n",
        h.cpu_amx_streaming_max_rows);
  out += fmt::format(
      "# matmul_half_rows fitted to the sgemm fall-off above; the rest are neutral defaults\n"
      "# (no overlap: the CPU runtime runs collectives between matmuls).\n"
      "efficiency:\n  matmul_peak_fraction: 1.0\n  matmul_half_rows: {:.4g}\n  "
      "memory_bandwidth_fraction: 1.0\n"
      "  collective_bandwidth_fraction: 1.0\n  comm_overlap: 0.0\n  weight_gather_overlap: 0.0\n"
      "  layer_overhead_s: 0.0\n"
      "  memory_reserve_fraction: 0.2\n",
      h.efficiency.matmul_half_rows);
  if (!c.overhead_notes.empty()) {
    out +=
        "# measured.*_overhead_s: the engine on a synthetic model (small's widths, 4 layers), "
        "measured against the cost model's price of each run, the difference fitted to\n"
        "# layer + token x rows + collective x collectives per layer and forward pass:\n";
    for (const auto& n : c.overhead_notes) out += fmt::format("#   {}\n", n);
  }
  out += h.measured.to_yaml();
  return out;
}

}  // namespace shardlm
