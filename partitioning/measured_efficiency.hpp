#pragma once
// What `shardlm calibrate` measured on this machine beyond peak and
// bandwidth, for the cost model to use in place of the curve fits of
// EfficiencyModel (the `measured:` section of a hardware YAML):
// - the CPU backend's matmul FLOP/s at each row count (thin matmuls of
//   decode run far from peak, and a kernel switch makes the fall-off a step,
//   not a smooth curve);
// - the memory read bandwidth by working set (a model whose weights fit the
//   last-level cache streams them much faster than DRAM);
// - a fixed time per layer and per token (matmul row) of every forward pass:
//   the norms, rotary embedding, activation function and bookkeeping the
//   roofline does not count, and per collective (ranks arriving apart),
//   fitted to the engine's own forward passes on a synthetic model.
// Re-running calibrate after a kernel changes re-measures all of them.
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace shardlm {

class YamlFields;

struct MeasuredEfficiency {
  // (rows, FLOP/s) and (bytes, B/s), increasing in the first element, with
  // every rank of a node working at once (they share its cores, caches and
  // memory) and, `_alone`, with one rank per node working (a job smaller
  // than a node: one rank has a core's siblings and the whole cache).
  std::vector<std::pair<double, double>> matmul_flops_by_rows, memory_Bps_by_bytes;
  std::vector<std::pair<double, double>> matmul_flops_by_rows_alone, memory_Bps_by_bytes_alone;
  // The matmul rates with BF16 activations, where the CPU multiplies BF16 x
  // by BF16 weights as they are (a different kernel at some row counts);
  // empty: BF16 activations are priced on the tables above.
  std::vector<std::pair<double, double>> matmul_flops_by_rows_bf16, matmul_flops_by_rows_bf16_alone;
  double layer_overhead_s = 0;  // per layer per forward pass
  double token_overhead_s = 0;  // per layer, per token (matmul row) on the chip
  // The width (hidden + intermediate size) of the model token_overhead_s was
  // fitted on: a token's norms, rotary embedding, activation function and
  // copies touch that many values per layer, so a model of another width
  // pays the per-token time in proportion (0: older specs, no scaling).
  double overhead_width = 0;
  // Per collective, beyond its latency and bandwidth: the wait for the
  // slowest member, which back-to-back collectives (how their latency is
  // measured) do not show; for a group inside one node and for one that
  // crosses nodes (TCP, and ranks that may outnumber a node's cores).
  double collective_overhead_s = 0, inter_node_collective_overhead_s = 0;
  // FLOP/s of decode attention (one new token against a cached context,
  // the query heads that share a KV head at once), every rank at once and
  // one rank per node alone; 0: priced as a matmul of batch rows. The
  // tables hold it by query heads per KV head (the AMX kernel's time per key
  // is the same for 2 to 16 of them, so its FLOP/s grow with the group) and
  // take precedence over the single rate of older specs.
  double attention_decode_flops = 0, attention_decode_flops_alone = 0;
  std::vector<std::pair<double, double>> attention_decode_flops_by_group,
      attention_decode_flops_by_group_alone;
  double attention_decode_rate(bool alone, double group) const;
  // How much of decode attention's arithmetic (at the rates above, timed
  // with the cache in L2) and its read of the cache from memory overlap: the
  // fraction of the shorter of the two that the kernel hides, measured from
  // memory (time = arithmetic + read - overlap x the shorter). 0: they add
  // up (older specs; the AMX kernel measured so).
  double attention_read_overlap = 0;
  // The fraction of the read bandwidth (memory_Bps_by_bytes) at which the
  // decode matmul streams its weights from memory, measured at batch 1
  // where nothing else bounds it; the weights' memory time is priced at it.
  // 0: the whole read bandwidth (older specs).
  double weight_read_fraction = 0;
  // Per byte a collective moves across nodes, beyond the inter-node
  // bandwidth that back-to-back collectives of one rank per node measured
  // (every rank of a node sharing its link, in both directions at once).
  double inter_node_s_per_byte = 0;
  // Per byte of weights all-gathered (weight-gathered layouts), beyond the
  // collective's bandwidth: the buffers a gather fills and copies.
  double weight_gather_s_per_byte = 0;

  // Seconds of each collective kind ("all-gather", "all-reduce",
  // "reduce-scatter", "all-to-all") by the bytes the cost model counts for it,
  // timed back to back over a group of `collective_members` ranks inside a
  // node, and over `inter_node_collective_members` ranks, one per node, with
  // every local rank's group at once. One latency and bandwidth cannot hold
  // them: on shared memory an all-reduce costs twice an all-gather of the
  // same counted bytes, across nodes a small one ten times, and messages that
  // stay in cache move twice as fast as those that do not.
  using CollectiveTables = std::map<std::string, std::vector<std::pair<double, double>>>;
  CollectiveTables collective_s_by_bytes, inter_node_collective_s_by_bytes;
  int collective_members = 0, inter_node_collective_members = 0;
  // Seconds of one collective of `kind` moving `bytes` (as counted) over a
  // group of `members`, from the table of its kind (inside a node, or across
  // nodes with `spans_nodes`); without the start-up when `first` is false
  // (a collective fused with the one before). 0 when no table holds the kind.
  double collective_s(const std::string& kind, double bytes, int members, bool spans_nodes,
                      bool first) const;

  bool has_matmul() const { return !matmul_flops_by_rows.empty(); }
  bool has_memory() const { return !memory_Bps_by_bytes.empty(); }
  // Interpolated linearly in log(rows) and log(bytes), constant beyond the
  // measured range; `bf16_activations` reads the _bf16 tables where there are.
  double matmul_flops(double rows, bool alone = false, bool bf16_activations = false) const;
  double memory_Bps(double working_set_bytes, bool alone = false) const;
  // The per-layer overhead of a pass of `rows` tokens through a layer of a
  // model of `width` (hidden + intermediate size; 0: the fitted one's).
  double overhead_s(double rows, double width = 0) const {
    const double scale = overhead_width > 0 && width > 0 ? width / overhead_width : 1.0;
    return layer_overhead_s + token_overhead_s * rows * scale;
  }

  // Reads the `measured` section (throws DataError naming the key).
  static MeasuredEfficiency parse(const YamlFields& section);
  // The section as calibrate writes it, `measured:` included; empty when
  // nothing was measured.
  std::string to_yaml() const;
};

}  // namespace shardlm
