#pragma once
// HardwareSpec: one accelerator (chip) and the network between chips, as the
// cost model needs it, read from configs/hardware/*.yaml. Units are SI: FLOP/s,
// bytes, bytes per second (one direction), seconds.
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "partitioning/measured_efficiency.hpp"
#include "partitioning/mesh.hpp"
#include "partitioning/topology.hpp"
#include "partitioning/yaml_fields.hpp"

namespace shardlm {

// The calibrated efficiency model (docs/planner.md §efficiency). The pure
// roofline is 1.3-3x optimistic; these constants turn it into a latency.
struct EfficiencyModel {
  // Achieved fraction of peak matmul FLOP/s for a matmul with `rows` rows per
  // chip (tokens per chip): matmul_peak_fraction * rows / (rows + matmul_half_rows).
  double matmul_peak_fraction = 1.0;
  double matmul_half_rows = 0.0;
  double memory_bandwidth_fraction = 1.0;      // of the HBM bandwidth
  double collective_bandwidth_fraction = 1.0;  // of the interconnect bandwidth
  // Overlap of communication with compute/memory time, per collective
  // (docs/planner.md §3). A weight all-gather hides behind the matmul that
  // consumes it (Looped CollectiveEinsum, §3.5), this fraction of that
  // matmul's time at most:
  double weight_gather_overlap = 1.0;
  // An activation collective sits on the critical path between the matmuls
  // that produce and use it: this fraction of it hides (0 = none).
  double comm_overlap = 0.0;
  double layer_overhead_s = 0.0;  // fixed time per layer per forward pass
  // Memory per chip kept free for activations, workspace and the runtime.
  double memory_reserve_fraction = 0.1;

  double matmul_fraction(double rows) const {
    return matmul_peak_fraction * rows / (rows + matmul_half_rows);
  }
};

struct HardwareSpec {
  std::string name, source_file;
  std::map<std::string, double> peak_flops;  // by matmul dtype: "bf16", "int8", "f32"
  double memory_bytes = 0;                   // per chip
  double memory_bandwidth = 0;               // per chip, HBM/DRAM read
  int chips_per_node = 1;
  int max_chips = 1 << 20;
  std::string topology = "switched";  // "torus" or "switched"
  int min_axis_size = 1;              // smallest allowed size of a split mesh axis
  // torus: each axis has links_per_axis links of link_bandwidth each way.
  // With torus_per_axis false (the paper's model, App. A.1) every collective
  // gets the chip's whole bandwidth, 3 * links_per_axis * link_bandwidth,
  // whatever axes it runs over; with true only the links of its own axes.
  double link_bandwidth = 0;
  int links_per_axis = 2;
  bool torus_per_axis = false;
  // The slices the machine comes in (topology.hpp). When given, a mesh must
  // be made of whole physical axes of the slice of its size, and with
  // torus_per_axis a collective gets the links of the physical axes under
  // its mesh axes, halved on an axis that does not wrap around. Empty: any
  // mesh, each mesh axis its own ring.
  std::vector<TorusSlice> torus_slices;
  // switched: nodes of chips_per_node chips joined by one link inside the
  // node (intra_node_bandwidth per chip, each way) and network cards to other
  // nodes (inter_node_bandwidth per card, each way, nics_per_node cards).
  double intra_node_bandwidth = 0, inter_node_bandwidth = 0;
  double intra_node_latency = 0, inter_node_latency = 0;  // per collective or send
  int nics_per_node = 0;                                  // 0: one per chip
  // Added to a collective's latency per hop of its ring (torus: along its
  // physical axes; switched: one hop per member after the first).
  double hop_latency = 0;
  // Where ranks sit (not part of the spec file: the launch decides it).
  // rank_nodes, when given, is the node of every rank, as the job found it;
  // else ranks fill nodes of chips_per_node in order (mpirun --map-by slot),
  // or with map_by_node go round the nodes one rank at a time (--map-by node).
  std::vector<int> rank_nodes;
  bool map_by_node = false;
  // The nodes share one host's cores (namespaces, containers or VMs on one
  // machine; calibrate finds every node on one kernel): while one pipeline
  // stage computes and the others wait, its ranks run at the rates of ranks
  // alone on the host, not at those of every rank at once.
  bool nodes_share_cores = false;
  std::string activation_dtype = "bf16";
  // CPU backend: rows of x up to which its streaming matmul kernel is used
  // (measured by `shardlm calibrate`); 0 when the spec does not say.
  int64_t cpu_streaming_max_rows = 0;
  // The same for BF16 weights, above which the AMX kernel takes them (where
  // the CPU has AMX); 0 when the spec does not say.
  int64_t cpu_amx_streaming_max_rows = 0;
  EfficiencyModel efficiency;
  // What calibrate measured (matmul rate by rows, memory bandwidth by working
  // set, overheads per layer and token); where given the cost model uses it
  // in place of the efficiency curves above.
  MeasuredEfficiency measured;

  // Peak matmul FLOP/s for a dtype; int8 weights still multiply in the
  // activation dtype (the paper's §3.6), so callers pass activation_dtype.
  double peak(const std::string& dtype) const;
  // Per-chip bandwidth one collective over `axes` of `mesh` gets, and its
  // fixed latency. Torus: the links of the named axes longer than 1.
  // Switched: every group over `axes` runs at once, and the slowest sets the
  // pace. A group inside one node gets the in-node link. One that crosses
  // nodes moves what crosses over the network cards of each node it touches,
  // shared by all groups with members there: per chip, a node's cards
  // (no more than the node has ranks) times the group's members on the node
  // over the ranks on the node, at most the in-node link.
  double collective_bandwidth(const Mesh& mesh, const std::string& axes) const;
  double collective_latency(const Mesh& mesh, const std::string& axes) const;
  bool group_spans_nodes(const Mesh& mesh, const std::string& axes) const;
  // The most members one group over `axes` has on one node.
  int group_members_per_node(const Mesh& mesh, const std::string& axes) const;
  // The share of the counted bytes (App. A.1: an all-gather's output) that
  // crosses a chip's links: (K - 1)/K for a group of K on a torus priced per
  // physical axis (each chip already holds its own part: half for K = 2);
  // 1, the paper's convention, otherwise.
  double collective_traffic_fraction(const Mesh& mesh, const std::string& axes) const;
  // Hops of one step of the ring a collective over `axes` runs.
  int collective_hops(const Mesh& mesh, const std::string& axes) const;
  // The slice of `chips` chips, when the spec lists slices and has one.
  std::optional<TorusSlice> slice_of(int chips) const;
  // How `mesh` sits on its slice; empty without slices or when it cannot.
  std::optional<SliceMapping> slice_mapping(const Mesh& mesh) const;
  // Node of `rank` among the mesh.size() ranks, by the placement above.
  int node_of(int rank, int ranks) const;
  // Seconds to send `bytes` from one rank to another (a pipeline stage
  // boundary): latency + bytes / bandwidth of the link between them — the
  // in-node link on one node, else one network card (torus: one link).
  double send_seconds(const Mesh& mesh, int from, int to, double bytes) const;
  // Empty when the mesh is allowed, else why not.
  std::string mesh_problem(const Mesh& mesh) const;

  static HardwareSpec load(const std::string& file);   // throws DataError
  static HardwareSpec from_yaml(const YamlFields& f);  // the same, from a parsed file
};

// configs/hardware/NAME.yaml, or NAME itself when it is a path to a file.
std::string resolve_config(const std::string& name_or_path, const std::string& kind);

}  // namespace shardlm
