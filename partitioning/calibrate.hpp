#pragma once
// `shardlm calibrate`: measure this machine as the cost model sees it — matmul
// FLOP/s (the CPU backend's matmul) and its fall-off with fewer rows, memory read
// bandwidth, and, under mpirun, collective bandwidth and latency between
// ranks — and write a hardware spec (configs/hardware format). One rank is
// one "chip"; ranks on one machine share its cores and memory.
#include <array>
#include <string>
#include <vector>

#include "partitioning/hardware.hpp"
#include "runtime/dtype.hpp"

namespace shardlm {

class Communicator;

struct MatmulSample {
  int64_t rows, inner, cols;
  double flops_per_s;
};

// One row count of the streaming-vs-panel crossover: seconds per matmul of
// each path on BF16 weights read from memory.
struct StreamingSample {
  int64_t rows;
  double streaming_s, batched_s;  // batched: the panel path, or AMX (measure_streaming_max_rows)
};

struct CollectiveSample {
  std::string kind;  // "all-gather" or "all-reduce"
  double bytes;      // per rank, as the cost model counts them
  double seconds;
};

// The machine's speed at one moment: a 16-row BF16 matmul in cache and a
// read of kSpeedProbeReadBytes, every rank at once (the slowest rank's
// rates). Calibrate takes one at its start and one at its end: a spec is a
// sample of the machine, and on a machine whose speed moves (a busy host, a
// VM's neighbours) the two differ. The read is larger than the last-level
// caches it knows of (the EPYC guest's 260 MB L3): a 64 MiB one came from
// the L3 or from memory depending on what ran before it, 54 GB/s at one end
// and 140 at the other, and warned of a move that was not there.
constexpr size_t kSpeedProbeReadBytes = size_t(512) << 20;
struct SpeedProbe {
  double matmul_flops = 0, memory_Bps = 0;
};
SpeedProbe measure_speed_probe(Communicator& all, bool quick);
// A warning when either rate moved by more than `tolerance` (a fraction)
// between the two probes, naming both; empty when neither did.
std::string speed_drift_warning(const SpeedProbe& start, const SpeedProbe& end,
                                double tolerance = 0.15);

// Decode attention over caches from memory, every rank at once: seconds of
// its arithmetic (at the in-L2 rate), of a plain read of the caches, and as
// measured, and the fraction of the shorter of the first two it hid.
struct AttentionFromMemory {
  int64_t group = 0;
  double arithmetic_s = 0, read_s = 0, measured_s = 0, overlap = 0;
};

// The decode matmul's read of its weights from memory at batch 1 and a plain
// read of as many bytes timed just before it, every rank at once.
struct WeightStream {
  double stream_Bps = 0, read_Bps = 0;
};

struct Calibration {
  int ranks = 1, ranks_per_node = 1, nodes = 1, threads = 1;
  std::vector<MatmulSample> matmul;
  std::vector<StreamingSample> streaming;      // the crossover, see measure_streaming_max_rows
  std::vector<StreamingSample> streaming_amx;  // against AMX, where the CPU has it
  double memory_read_Bps = 0, memory_bytes = 0;
  // BF16-weight matmuls at the row counts of decode and prefill, and the
  // read bandwidth by working set (spec.measured).
  std::vector<MatmulSample> matmul_bf16, matmul_bf16_alone;
  // The same with BF16 activations, where the CPU multiplies them as they are
  // (cpu::bf16_dot_available(); else empty, and they are priced as F32).
  std::vector<MatmulSample> matmul_bf16_activations, matmul_bf16_activations_alone;
  std::vector<std::pair<double, double>> memory_by_bytes, memory_by_bytes_alone;
  // Decode attention FLOP/s by query heads per KV head.
  std::vector<std::pair<double, double>> attention_by_group, attention_by_group_alone;
  // Decode attention from memory against its parts (attention_read_overlap).
  std::vector<AttentionFromMemory> attention_from_memory;
  // Weights read by decode against the plain read (weight_read_fraction).
  std::vector<WeightStream> weight_streams;
  // How the overheads of spec.measured were found (one line per run), for the comments.
  std::vector<std::string> overhead_notes;
  // Inside a node (all ranks when there is one node): collectives and sends.
  std::vector<CollectiveSample> collectives, sends;
  double collective_bandwidth_Bps = 0, collective_latency_s = 0;  // fitted, when ranks > 1
  // Across nodes (one rank per node, every local rank's group at once).
  std::vector<CollectiveSample> inter_collectives, inter_sends;
  double inter_bandwidth_Bps = 0, inter_latency_s = 0;  // fitted, per chip, when nodes > 1
  HardwareSpec spec;                                    // what gets written
  SpeedProbe probe_start, probe_end;                    // see SpeedProbe
};

// The groups calibrate measures over: every rank; the ranks of this rank's
// node (null with one rank per node); the ranks with this rank's local
// index, one per node (null on one node); this rank alone (times the rates
// of a rank that works while the others sleep as the in-step ones are
// timed, an average over runs, not the fastest run; null: the fastest).
struct CalibrationGroups {
  Communicator* all = nullptr;
  Communicator* in_node = nullptr;
  Communicator* across = nullptr;
  Communicator* self = nullptr;
  int nodes = 1, ranks_per_node = 1;
};

// The points of a table of rates by size (rows, bytes, heads) that no
// kernel switch or cache explains: below half of both neighbours' rates, or
// at an end below a quarter of its one neighbour's. On a shared guest a rank
// descheduled while it was timed gives such a point (a 4-row matmul at
// 2.7e10 FLOP/s between 7.5e10 at 2 rows and 2.0e11 at 8, which priced a
// decode 3.5x slow); calibrate measures them again.
std::vector<size_t> rate_dips(const std::vector<double>& rates);

// Best-of-`repeats` FLOP/s of the CPU backend's matmul for [rows x inner] ·
// [cols x inner]ᵀ, F32 weights (oneDNN sgemm above 16 rows).
double measure_matmul(int64_t rows, int64_t inner, int64_t cols, int repeats);
// The fastest matmul the CPU backend has, 2048^3 with operands in cache: the
// FLOP/s of oneDNN sgemm on F32 weights or, where the CPU has AMX, of the AMX
// kernel on BF16 weights if that is higher; `path` names the one it is.
struct PeakMatmul {
  double flops_per_s = 0;
  std::string path;
};
PeakMatmul measure_peak_matmul(int repeats);
// Rows of x up to which the CPU backend's streaming matmul kernel beats the
// batched path: the panel path (oneDNN sgemm on widened weights), or with
// `amx` the AMX kernel (cpu::amx_available() must hold). Both are timed on
// BF16 weights larger than the last-level cache, at growing row counts, and
// the answer is choose_streaming_max_rows' (capped at the largest count
// tried). `samples` receives the timings.
int64_t measure_streaming_max_rows(int repeats, std::vector<StreamingSample>* samples = nullptr,
                                   bool amx = false);
// The limit (1 or a sample's rows) whose choice of path, streaming up to it
// and batched above, loses the least summed over the samples, each sample's
// time relative to its faster path's; ties keep the smaller limit.
int64_t choose_streaming_max_rows(const std::vector<StreamingSample>& samples);
// The same with BF16 weights (a checkpoint's usual dtype, widened as the
// backend does), best of `repeats` runs: the rate the cost model's
// measured matmul_flops_by_rows holds; with BF16 `activations`, x and the
// output in BF16 through the CPU backend's matmul (matmul_flops_by_rows_bf16).
double measure_matmul_bf16(int64_t rows, int64_t inner, int64_t cols, int repeats,
                           Communicator* in_step = nullptr, DType activations = DType::F32);
// FLOP/s (4 x heads x keys x head_dim) of the CPU backend's decode attention
// for `heads` query heads sharing one KV head, one cache (in L2) per thread
// of this rank, all at once: best of `repeats` runs, or with `in_step` timed
// as measure_matmul_bf16 times it.
// With `caches_per_thread` above 1, as many caches per thread, read from
// memory once they outgrow the caches.
double measure_attention_decode(int64_t heads, int64_t keys, int64_t head_dim, int repeats,
                                Communicator* in_step = nullptr, int64_t caches_per_thread = 1);
// The fraction of the shorter of decode attention's arithmetic and its read
// that a run from memory hid: (arithmetic + read - measured) / shorter, in [0, 1].
double attention_read_overlap(double arithmetic_s, double read_s, double measured_s);
// The median of `values` (of an even count, the mean of the middle two; 0 for none).
double median(std::vector<double> values);
// Tables of (size, rate) measured at the same sizes several times: each
// size's median rate (of an even count, the mean of the middle two).
std::vector<std::pair<double, double>> median_rates(
    const std::vector<std::vector<std::pair<double, double>>>& passes);
// The median over runs of the weights' rate over the plain read's, each in
// [0.01, 1] (a stream faster than the read it is compared with counts as 1):
// the spec's measured.weight_read_fraction. 0 for no runs.
double weight_read_fraction(const std::vector<WeightStream>& runs);
// Read bandwidth of a `bytes` array summed by all threads of this rank.
double measure_memory_read(size_t bytes, int repeats);
// Times all-gather and all-reduce at growing sizes over `comm` (every member calls).
std::vector<CollectiveSample> measure_collectives(Communicator& comm, size_t max_bytes);
// Half the round trip of a message between members 0 and 1 of `comm` (the
// others wait), at growing sizes: the time of one send.
std::vector<CollectiveSample> measure_sends(Communicator& comm, size_t max_bytes);
// Least squares t = latency + bytes / bandwidth over the samples.
void fit_latency_bandwidth(const std::vector<CollectiveSample>& s, double& latency,
                           double& bandwidth);
// matmul_half_rows h minimising the squared error of f(rows) = rows / (rows + h)
// against the measured fraction of the best FLOP/s.
double fit_half_rows(const std::vector<MatmulSample>& s, double peak);

// One forward-pass measurement of the engine beside the cost model's price of it.
struct OverheadSample {
  std::string what;
  double rows = 0, collectives = 0;   // per chip, per layer
  double inter_node_collectives = 0;  // of those, the ones whose groups cross nodes
  double gathered_weight_bytes = 0;   // per chip, per layer (weight-gathered layouts)
  double inter_node_bytes = 0;        // per chip, per layer, moved by collectives across nodes
  double measured_s = 0, predicted_s = 0;
  double per_layer_pass_s = 0;  // (measured - predicted) / (layers x forward passes)
  double weight = 1;            // of this sample in the fit
};
// Weighted least squares (OverheadSample::weight) of per_layer_pass_s =
// layer + token * rows + collective * (collectives inside a node) + inter *
// (collectives across nodes) + gather * (gathered weight bytes) + across *
// (bytes moved across nodes), the terms past the first two only when
// `with_collectives`, every term >= 0 (non-negative least squares, solved
// exactly): {layer, token, collective, inter-node collective, gather per
// byte, across-node per byte}. A term no sample exercises (nothing crosses
// nodes on one node) comes out 0.
std::array<double, 6> fit_overheads(const std::vector<OverheadSample>& s, bool with_collectives);

// Runs every measurement (collectives only when there are several ranks;
// inside and across nodes separately when there are several nodes).
Calibration calibrate(const CalibrationGroups& groups, const std::string& name, bool quick);
std::string to_yaml(const Calibration& c);

}  // namespace shardlm
