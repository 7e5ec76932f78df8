#include "partitioning/cost_model.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "runtime/errors.hpp"

namespace shardlm {

std::string_view name(Phase p) {
  return p == Phase::kPrefill ? "prefill" : "decode";
}

Workload decode_workload(const Workload& request) {
  Workload steps = request;
  steps.gen_len = std::max<int64_t>(1, request.gen_len - 1);
  return steps;
}

double dtype_bytes(const std::string& dtype) {
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "int8") return 1;
  if (dtype == "f32") return 4;
  throw UsageError(fmt::format("unknown dtype '{}' (expected bf16, int8 or f32)", dtype));
}

LayoutShape layout_shape(const ModelSpec& m) {
  return LayoutShape{m.config.num_heads, m.config.num_kv_heads, m.config.parallel_block,
                     m.gated_ffn};
}

DimSizes phase_dims(const ModelSpec& m, const Workload& w, Phase phase, int64_t micro_batch) {
  const ModelConfig& c = m.config;
  // Decode is priced at the mean context of its steps: the KV time is linear in it.
  const int64_t context =
      phase == Phase::kPrefill ? w.prompt_len : w.prompt_len + (w.gen_len + 1) / 2;
  return DimSizes{{'B', micro_batch},
                  {'L', phase == Phase::kPrefill ? w.prompt_len : 1},
                  {'C', context},
                  {'E', c.hidden_size},
                  {'F', c.intermediate_size},
                  {'H', c.num_heads},
                  {'K', c.num_kv_heads},
                  {'D', c.head_dim},
                  {'V', c.vocab_size}};
}

namespace {

// Product of per-chip extents over the union of the dims of the operands:
// the multiply-adds one chip performs for an einsum.
double einsum_macs(const PartitionSpec& lhs, const PartitionSpec& rhs, const DimSizes& dims,
                   const Mesh& mesh) {
  double macs = 1;
  std::set<char> seen;
  for (const PartitionSpec* s : {&lhs, &rhs}) {
    auto shape = s->local_shape(dims, mesh);
    for (size_t i = 0; i < s->dims.size(); ++i)
      if (seen.insert(s->dims[i].dim).second) macs *= static_cast<double>(shape[i]);
  }
  return macs;
}

// Rows of a matmul on one chip: the lhs extents the weight does not share.
double matmul_rows(const PartitionSpec& lhs, const PartitionSpec& w, const DimSizes& dims,
                   const Mesh& mesh) {
  double rows = 1;
  auto shape = lhs.local_shape(dims, mesh);
  for (size_t i = 0; i < lhs.dims.size(); ++i)
    if (!w.has_dim(lhs.dims[i].dim)) rows *= static_cast<double>(shape[i]);
  return rows;
}

struct Pricer {
  const ModelSpec& model;
  const HardwareSpec& hw;
  const Layout& layout;
  const Mesh& mesh;
  Phase phase;
  double weight_bytes, act_bytes, peak;
  double kv_elem_bytes;  // bytes of one KV cache value

  const PartitionSpec& spec(const std::string& n) const {
    auto it = layout.activations.find(n);
    if (it == layout.activations.end())
      throw std::logic_error(fmt::format("layout {}/{} has no activation '{}'",
                                         shardlm::name(layout.ffn), shardlm::name(layout.attn), n));
    return it->second;
  }
  double bytes_per_weight(WeightRole r) const {
    bool is_norm =
        r == WeightRole::kAttnNorm || r == WeightRole::kFfnNorm || r == WeightRole::kFinalNorm;
    return is_norm ? act_bytes : weight_bytes;
  }

  // Adds the roofline cost of `steps` at `dims` to `out`, and the items the
  // efficiency model weighs (apply_efficiency).
  void price(const std::vector<Step>& steps, const std::string& stage, const DimSizes& dims,
             ForwardCost& out) const {
    std::set<int> groups_started;
    const size_t first_matmul = out.matmuls.size();
    std::vector<std::pair<size_t, WeightRole>> weight_gathers;  // collective index, weight
    for (const Step& s : steps) {
      switch (s.op) {
        case OpKind::kMatmul: {
          const WeightLayout& w = layout.weight(*s.weight);
          const PartitionSpec& lhs = spec(s.inputs[0]);
          if (*s.weight == WeightRole::kEmbedding) {
            // A lookup: reads one row per token, no FLOPs.
            const double rows = static_cast<double>(spec(s.output).local_elements(dims, mesh));
            out.weight_bytes += rows * weight_bytes;
            break;
          }
          MatmulCost mm;
          mm.flops = 2 * einsum_macs(lhs, w.used, dims, mesh);
          mm.rows = matmul_rows(lhs, w.used, dims, mesh);
          mm.weight_bytes = static_cast<double>(w.used.local_elements(dims, mesh)) * weight_bytes;
          mm.weight = *s.weight;
          out.flops += mm.flops;
          out.compute_s += mm.flops / peak;
          out.weight_bytes += mm.weight_bytes;
          out.matmuls.push_back(mm);
          break;
        }
        case OpKind::kAttention: {
          const PartitionSpec& q = spec(s.inputs[0]);
          auto shape = q.local_shape(dims, mesh);  // B L H D
          const double b = shape[0], l = shape[1], h = shape[2];
          const double context = static_cast<double>(dims.at('C'));
          // QK^T and AV; causal prefill touches half of the L x C square.
          MatmulCost mm;
          mm.flops = 4 * b * l * h * context * static_cast<double>(dims.at('D')) *
                     (phase == Phase::kPrefill ? 0.5 : 1.0);
          mm.rows = b * l;
          mm.decode_attention = phase == Phase::kDecode;
          mm.group = static_cast<double>(dims.at('H')) / static_cast<double>(dims.at('K'));
          out.flops += mm.flops;
          out.compute_s += mm.flops / peak;
          out.matmuls.push_back(mm);
          // K and V: decode reads the cache; prefill writes this step's part of it.
          DimSizes cache = dims;
          if (phase == Phase::kPrefill) cache['C'] = dims.at('L');
          out.kv_bytes += 2.0 * static_cast<double>(layout.kv_cache.local_elements(cache, mesh)) *
                          kv_elem_bytes;
          break;
        }
        case OpKind::kNorm:
          if (s.weight) out.weight_bytes += static_cast<double>(dims.at('E')) * act_bytes;
          break;
        case OpKind::kCollective: {
          if (mesh.axes_size(s.axes) == 1) break;  // a group of one: nothing moves
          CollectiveCost c{stage, s.inputs[0], s.collective, s.axes, s.fusion_group};
          c.weight = s.weight.has_value();
          c.spans_nodes = hw.group_spans_nodes(mesh, s.axes);
          c.members = mesh.axes_size(s.axes);
          c.one_per_node = c.spans_nodes && hw.group_members_per_node(mesh, s.axes) == 1;
          double elems, elem_bytes = act_bytes;
          if (s.weight) {
            const WeightLayout& w = layout.weight(*s.weight);
            elems = static_cast<double>(w.used.local_elements(dims, mesh));
            elem_bytes = bytes_per_weight(*s.weight);
            weight_gathers.emplace_back(out.collectives.size(), *s.weight);
          } else {
            const PartitionSpec& in = spec(s.inputs[0]);
            const PartitionSpec& result = spec(s.output);
            elems = static_cast<double>(s.collective == CollectiveKind::kAllGather
                                            ? result.local_elements(dims, mesh)
                                            : in.local_elements(dims, mesh));
            if (s.inputs[0].find("sumsq") != std::string::npos) elem_bytes = 4;  // f32 statistics
          }
          c.bytes = elems * elem_bytes * (s.collective == CollectiveKind::kAllReduce ? 2 : 1);
          // Fused collectives (parallel block) pay one start-up latency.
          c.first_of_group = s.fusion_group < 0 || groups_started.insert(s.fusion_group).second;
          c.latency_s = c.first_of_group ? hw.collective_latency(mesh, s.axes) : 0.0;
          // Bytes per second of the counted bytes: the link bandwidth over
          // the share of them that crosses the links.
          c.bandwidth =
              hw.collective_bandwidth(mesh, s.axes) / hw.collective_traffic_fraction(mesh, s.axes);
          c.seconds = c.latency_s + c.bytes / c.bandwidth;
          out.comm_bytes += c.bytes;
          out.comm_s += c.seconds;
          out.collectives.push_back(std::move(c));
          break;
        }
        default: break;
      }
    }
    for (const auto& [index, role] : weight_gathers)
      for (size_t i = first_matmul; i < out.matmuls.size(); ++i)
        if (out.matmuls[i].weight == role) out.collectives[index].consumer = static_cast<int>(i);
  }

  void finish(ForwardCost& f) const {
    f.weight_mem_s = f.weight_bytes / hw.memory_bandwidth;
    f.kv_mem_s = f.kv_bytes / hw.memory_bandwidth;
  }
};

// The efficiency model (docs/planner.md §3) over the items priced above.
// Which of a calibrated spec's measured rates apply: `alone`, the job has
// one rank per node, so those of a rank working alone (hw.measured's
// `_alone` tables); `bf16_activations`, the matmuls take BF16 x (its `_bf16`
// tables: another kernel at some row counts); `model_width`, the model's
// hidden + intermediate size, which the per-token overhead scales with.
struct Rates {
  bool alone = false, bf16_activations = false;
  double model_width = 0;
};

// FLOP/s of a matmul with `rows` rows per chip: as calibrate measured it when
// the spec says, else the efficiency curve.
double matmul_rate(const HardwareSpec& hw, double rows, Rates rates) {
  if (hw.measured.has_matmul())
    return hw.measured.matmul_flops(rows, rates.alone, rates.bf16_activations);
  return hw.peak(hw.activation_dtype) * hw.efficiency.matmul_fraction(rows);
}

// FLOP/s of decode attention where the spec measured it, else 0.
double measured_attention_rate(const HardwareSpec& hw, const MatmulCost& m, Rates rates) {
  return m.decode_attention ? hw.measured.attention_decode_rate(rates.alone, m.group) : 0.0;
}

// FLOP/s of one priced matmul: decode attention at its measured rate where
// there is one (it is not a weight matmul of batch rows).
double matmul_rate(const HardwareSpec& hw, const MatmulCost& m, Rates rates) {
  const double decode_attention = measured_attention_rate(hw, m, rates);
  return decode_attention > 0 ? decode_attention : matmul_rate(hw, m.rows, rates);
}

// Bytes/s at which a chip reads the weights and KV cache of a forward pass
// that reads `working_set` bytes in all (all layers of the stage and the
// edges): as measured for that working set when the spec says (caches),
// else the memory bandwidth times its efficiency.
double memory_rate(const HardwareSpec& hw, double working_set, Rates rates) {
  if (hw.measured.has_memory()) return hw.measured.memory_Bps(working_set, rates.alone);
  return hw.memory_bandwidth * hw.efficiency.memory_bandwidth_fraction;
}

// Seconds of one collective through the efficiency model.
double collective_seconds(const CollectiveCost& c, const HardwareSpec& hw) {
  const MeasuredEfficiency& measured = hw.measured;
  // The wait for the slowest member, once per (fused) collective.
  const double waiting = !c.first_of_group ? 0.0
                         : c.spans_nodes   ? measured.inter_node_collective_overhead_s
                                           : measured.collective_overhead_s;
  // Gathered weights also fill and copy buffers, and bytes across nodes
  // share a node's link (both measured per byte).
  const double filling = (c.weight ? c.bytes * measured.weight_gather_s_per_byte : 0.0) +
                         (c.spans_nodes ? c.bytes * measured.inter_node_s_per_byte : 0.0);
  // Moving the bytes: as calibrate timed this kind of collective where the
  // spec has its table and the group is shaped as timed (inside a node, or
  // one member per node), else latency and bandwidth (which price a group
  // with several members on each of several nodes by the links it shares).
  const bool shaped_as_timed = !c.spans_nodes || c.one_per_node;
  const double timed = shaped_as_timed
                           ? measured.collective_s(std::string(name(c.kind)), c.bytes, c.members,
                                                   c.spans_nodes, c.first_of_group)
                           : 0.0;
  const double moving =
      timed > 0
          ? timed
          : c.latency_s + c.bytes / (c.bandwidth * hw.efficiency.collective_bandwidth_fraction);
  return moving + waiting + filling;
}

void apply_efficiency(ForwardCost& f, const HardwareSpec& hw, bool per_layer, double working_set,
                      Rates rates) {
  const EfficiencyModel& eff = hw.efficiency;
  const double memory_bw = memory_rate(hw, working_set, rates);
  auto compute_s = [&](const MatmulCost& m) { return m.flops / matmul_rate(hw, m, rates); };
  f.compute_eff_s = 0;
  double attention_s = 0;  // decode attention at a measured rate
  for (const MatmulCost& m : f.matmuls) {
    const double t = compute_s(m);
    f.compute_eff_s += t;
    if (measured_attention_rate(hw, m, rates) > 0) attention_s += t;
  }
  // The weights stream at the fraction of the read bandwidth calibrate
  // measured for the decode matmul (weight_read_fraction), where it did.
  const double weight_bw =
      memory_bw * (hw.measured.weight_read_fraction > 0 ? hw.measured.weight_read_fraction : 1.0);
  f.memory_eff_s = f.weight_bytes / weight_bw + f.kv_bytes / memory_bw;
  // Where decode attention's rate is measured (a calibrated CPU), its
  // arithmetic and its read of the cache overlap only as far as calibrate
  // measured from memory (attention_read_overlap: none for the AMX kernel,
  // perf/results/amx-attention-xeon.md, whose time from memory is its in-L2
  // time plus the plain read's), and both follow the matmuls that stream the
  // weights.
  const double kv_s = attention_s > 0 ? f.kv_bytes / memory_bw : 0.0;
  const double hidden_read = hw.measured.attention_read_overlap * std::min(attention_s, kv_s);
  const double busy = std::max(f.compute_eff_s - attention_s, f.memory_eff_s - kv_s) + attention_s +
                      kv_s - hidden_read;
  f.comm_eff_s = 0;
  double hidden_gathers = 0, activations = 0;
  for (CollectiveCost& c : f.collectives) {
    const double t = c.priced_s = collective_seconds(c, hw);
    f.comm_eff_s += t;
    if (c.consumer < 0) {
      activations += t;
      continue;
    }
    // Looped CollectiveEinsum: the gather streams in while the matmul that
    // uses it runs on the part already there; no longer than that matmul.
    const MatmulCost& m = f.matmuls[size_t(c.consumer)];
    const double behind = std::max(compute_s(m), m.weight_bytes / weight_bw);
    hidden_gathers += eff.weight_gather_overlap * std::min(t, behind);
  }
  hidden_gathers = std::min(hidden_gathers, busy);
  // Activation collectives sit between the matmuls that produce and use
  // them: only a fitted fraction hides, behind what the gathers left.
  const double hidden_activations = eff.comm_overlap * std::min(activations, busy - hidden_gathers);
  f.overlap_s = hidden_gathers + hidden_activations;
  f.overhead_s =
      per_layer ? eff.layer_overhead_s + hw.measured.overhead_s(f.rows(), rates.model_width) : 0.0;
  f.latency_s = busy + f.comm_eff_s - f.overlap_s + f.overhead_s;
}

// Largest few activations of one layer live at once; weights gathered by the
// weight-gathered layouts are streamed (Looped CollectiveEinsum, §3.5) and
// count as one extra stored shard.
double activation_bytes(const Layout& layout, const DimSizes& dims, const Mesh& mesh,
                        double act_bytes) {
  std::vector<double> sizes;
  std::set<std::string> in_layer;
  for (const Step& s : layout.layer) in_layer.insert(s.output);
  for (const auto& [name, s] : layout.activations)
    if (in_layer.count(name) && s.has_dim('L'))
      sizes.push_back(static_cast<double>(s.local_elements(dims, mesh)));
  std::sort(sizes.rbegin(), sizes.rend());
  double total = 0;
  for (size_t i = 0; i < std::min<size_t>(3, sizes.size()); ++i) total += sizes[i];
  // The logits of the last position (the LM head's output, gathered).
  DimSizes last = dims;
  last['L'] = 1;
  total += static_cast<double>(layout.activations.at("logits").local_elements(last, mesh));
  return total * act_bytes;
}

// The most ranks of the job on one node.
// The activations' dtype as the runtime stores and moves them, and its bytes.
const std::string& activation_dtype_of(const HardwareSpec& hw, const PhaseConfig& config) {
  return config.activation_dtype.empty() ? hw.activation_dtype : config.activation_dtype;
}
double activation_bytes_of(const HardwareSpec& hw, const PhaseConfig& config) {
  return dtype_bytes(activation_dtype_of(hw, config));
}

// The KV cache is stored in its own dtype (--kv-dtype), else in the activations'.
double kv_bytes_of(const HardwareSpec& hw, const PhaseConfig& config) {
  return config.kv_dtype.empty() ? activation_bytes_of(hw, config) : dtype_bytes(config.kv_dtype);
}

int ranks_per_node(const HardwareSpec& hw, const Mesh& mesh) {
  std::map<int, int> on;
  int most = 0;
  for (int r = 0; r < mesh.size(); ++r) most = std::max(most, ++on[hw.node_of(r, mesh.size())]);
  return most;
}

}  // namespace

double ForwardCost::rows() const {
  double most = 0;
  for (const MatmulCost& m : matmuls)
    if (m.weight) most = std::max(most, m.rows);
  return most;
}

namespace {

PhaseCost estimate_with(const ModelSpec& model, const HardwareSpec& hw, const Workload& w,
                        Phase phase, const PhaseConfig& config, int64_t micro_batches) {
  PhaseCost pc;
  pc.phase = phase;
  pc.config = config;
  pc.workload = w;
  const Mesh& mesh = config.mesh;
  const ModelConfig& c = model.config;
  pc.forward_passes = phase == Phase::kPrefill ? 1 : w.gen_len;
  pc.tokens = w.batch * (phase == Phase::kPrefill ? w.prompt_len : w.gen_len);
  pc.layers_per_stage = (c.num_layers + mesh.pp - 1) / mesh.pp;
  pc.micro_batches = phase == Phase::kDecode ? std::min(micro_batches, w.batch) : micro_batches;
  const int64_t micro_batch = (w.batch + pc.micro_batches - 1) / pc.micro_batches;

  const Layout layout = make_layout(config.ffn, config.attn, layout_shape(model), mesh);
  const double act_bytes = activation_bytes_of(hw, config);
  const double kv_elem_bytes = kv_bytes_of(hw, config);
  Pricer pricer{model,        hw,
                layout,       mesh,
                phase,        dtype_bytes(config.weights),
                act_bytes,    hw.peak(hw.activation_dtype),
                kv_elem_bytes};

  DimSizes dims = phase_dims(model, w, phase, micro_batch);
  if (pc.micro_batches > w.batch)  // prefill in chunks of every prompt
    dims['L'] = (w.prompt_len * w.batch + pc.micro_batches - 1) / pc.micro_batches;
  pricer.price(layout.layer, "layer", dims, pc.layer);
  pricer.finish(pc.layer);
  pricer.price(layout.prologue, "prologue", dims, pc.edges);
  DimSizes last_token = dims;
  last_token['L'] = 1;  // only the last position's logits are needed
  pricer.price(layout.epilogue, "epilogue", last_token, pc.edges);
  pricer.finish(pc.edges);

  // Pipeline: micro-batches flow through pp stages; activations hop between them.
  if (mesh.pp > 1) {
    const double hop_bytes = static_cast<double>(micro_batch * dims.at('L') * c.hidden_size) *
                             act_bytes / mesh.tp_size();
    // Every rank of a stage sends its part to the same rank of the next one;
    // the slowest of those sends sets the pace.
    for (int stage = 0; stage + 1 < mesh.pp; ++stage)
      for (int i = 0; i < mesh.tp_size(); ++i) {
        const int from = stage * mesh.tp_size() + i;
        pc.pipeline_hop_s = std::max(pc.pipeline_hop_s,
                                     hw.send_seconds(mesh, from, from + mesh.tp_size(), hop_bytes));
      }
  }
  reprice(pc, model, hw);

  // Memory per chip: stored weights of one stage, the whole batch's KV cache
  // at the longest context, and the live activations.
  MemoryUse& mem = pc.memory;
  DimSizes full = dims;
  full['B'] = w.batch;
  full['C'] = w.prompt_len + w.gen_len;
  double layer_weights = 0, edge_weights = 0;
  for (const auto& wl : layout.weights) {
    const double bytes = static_cast<double>(wl.stored.local_elements(full, mesh)) *
                         pricer.bytes_per_weight(wl.role);
    const bool edge = wl.role == WeightRole::kEmbedding || wl.role == WeightRole::kLmHead ||
                      wl.role == WeightRole::kFinalNorm;
    (edge ? edge_weights : layer_weights) += bytes;
  }
  mem.weights = static_cast<double>(pc.layers_per_stage) * layer_weights + edge_weights;
  // The cache is kept in whichever attention layout holds less of it per chip:
  // moving replicated KV heads to batch shards is a local slice, and the
  // other way one all-to-all per layer, once, between the phases.
  const AttnLayout other_attn =
      config.attn == AttnLayout::kHeads ? AttnLayout::kBatch : AttnLayout::kHeads;
  const PartitionSpec other_cache =
      make_layout(config.ffn, other_attn, layout_shape(model), mesh).kv_cache;
  mem.kv_cache = static_cast<double>(pc.layers_per_stage) * 2.0 * kv_elem_bytes *
                 static_cast<double>(std::min(layout.kv_cache.local_elements(full, mesh),
                                              other_cache.local_elements(full, mesh)));
  mem.activations = activation_bytes(layout, dims, mesh, act_bytes);
  mem.available = hw.memory_bytes * (1.0 - hw.efficiency.memory_reserve_fraction);

  if (std::string why = hw.mesh_problem(mesh); !why.empty())
    pc.problem = why;
  else if (!mem.fits())
    pc.problem = fmt::format(
        "needs {:.1f} GB per chip (weights {:.1f}, KV cache {:.1f}, activations {:.1f}) "
        "but {:.1f} GB is usable",
        mem.total() / 1e9, mem.weights / 1e9, mem.kv_cache / 1e9, mem.activations / 1e9,
        mem.available / 1e9);
  return pc;
}

}  // namespace

void reprice(PhaseCost& pc, const ModelSpec& model, const HardwareSpec& hw) {
  const double working_set =
      static_cast<double>(pc.layers_per_stage) * (pc.layer.weight_bytes + pc.layer.kv_bytes) +
      pc.edges.weight_bytes + pc.edges.kv_bytes;
  const bool alone = ranks_per_node(hw, pc.config.mesh) == 1;
  const bool bf16_activations = activation_dtype_of(hw, pc.config) == "bf16";
  const double width = double(model.config.hidden_size + model.config.intermediate_size);
  const double m = static_cast<double>(pc.micro_batches), pp = pc.config.mesh.pp;
  // Where the nodes share one host's cores, a pipeline slot in which some
  // stages wait (fill, drain, fewer micro-batches than stages) leaves the
  // working ranks the host's cores: priced at the rates of ranks alone.
  const bool partial_slots_alone = hw.nodes_share_cores && pp > 1 && !alone;
  double stage_alone_s = 0;
  if (partial_slots_alone) {
    ForwardCost layer = pc.layer;
    apply_efficiency(layer, hw, true, working_set, {true, bf16_activations, width});
    stage_alone_s = static_cast<double>(pc.layers_per_stage) * layer.latency_s + pc.pipeline_hop_s;
  }
  apply_efficiency(pc.layer, hw, true, working_set, {alone, bf16_activations, width});
  apply_efficiency(pc.edges, hw, false, working_set, {alone, bf16_activations, width});
  const double stage_s =
      static_cast<double>(pc.layers_per_stage) * pc.layer.latency_s + pc.pipeline_hop_s;
  // Slots of one stage's time, `full` of them with every stage busy.
  auto slots_s = [&](double slots, double full) {
    return partial_slots_alone ? full * stage_s + (slots - full) * stage_alone_s : slots * stage_s;
  };
  // m micro-batches (pipeline, or batch chunks that bound activation memory):
  // prefill fills the pipeline once; each decode step runs every micro-batch
  // through every stage. Each micro-batch runs the embedding and head.
  const double passes = static_cast<double>(pc.forward_passes);
  if (pc.phase == Phase::kPrefill)
    pc.latency_s = slots_s(m + pp - 1, std::max(0.0, m - pp + 1)) + m * pc.edges.latency_s;
  else
    pc.latency_s = passes * (slots_s(std::max(m, pp), m >= pp ? m : 0) + m * pc.edges.latency_s) +
                   slots_s(pp - 1, 0);
  const double chips = pc.config.mesh.size(), tokens = static_cast<double>(pc.tokens);
  pc.mfu = 2.0 * static_cast<double>(model.mfu_params()) * tokens /
           (chips * hw.peak(hw.activation_dtype) * pc.latency_s);
  pc.cost_chip_ms_per_token = chips * pc.latency_s * 1e3 / tokens;
}

PhaseCost estimate_phase(const ModelSpec& model, const HardwareSpec& hw, const Workload& w,
                         Phase phase, const PhaseConfig& config) {
  if (config.micro_batches > 0)
    return estimate_with(model, hw, w, phase, config, config.micro_batches);
  // As many micro-batches as pipeline stages; more (powers of two) when the
  // activations of the whole batch do not fit: prefill is then run in chunks.
  const int64_t base = std::min<int64_t>(w.batch, config.mesh.pp);
  PhaseCost first = estimate_with(model, hw, w, phase, config, base);
  if (!first.problem.empty() &&
      first.memory.weights + first.memory.kv_cache < first.memory.available)
    for (int64_t m = base * 2; m < w.batch * 2; m *= 2) {
      PhaseCost chunked = estimate_with(model, hw, w, phase, config, std::min(m, w.batch));
      if (chunked.problem.empty()) return chunked;
    }
  return first;
}

double pipeline_bubble(const PhaseCost& cost) {
  const double pp = cost.config.mesh.pp, m = double(cost.micro_batches);
  if (cost.phase == Phase::kPrefill) return (pp - 1) / (m + pp - 1);
  return std::max(0.0, pp - m) / std::max(pp, m);
}

double kv_cache_bytes(const ModelSpec& m, int64_t batch, int64_t context, double bytes_per_elem) {
  const ModelConfig& c = m.config;
  return static_cast<double>(batch) * static_cast<double>(context) *
         static_cast<double>(c.num_layers) * 2.0 *
         static_cast<double>(c.num_kv_heads * c.head_dim) * bytes_per_elem;
}

int64_t max_context(const ModelSpec& model, const HardwareSpec& hw, int64_t batch,
                    const PhaseConfig& config) {
  const Workload one{batch, 1, 1};
  PhaseCost base = estimate_phase(model, hw, one, Phase::kDecode, config);
  const Layout layout = make_layout(config.ffn, config.attn, layout_shape(model), config.mesh);
  DimSizes dims = phase_dims(model, one, Phase::kDecode, batch);
  dims['C'] = 1;
  const double per_token = static_cast<double>(base.layers_per_stage) * 2.0 *
                           kv_bytes_of(hw, config) *
                           static_cast<double>(layout.kv_cache.local_elements(dims, config.mesh));
  const double room = base.memory.available - base.memory.weights - base.memory.activations;
  return room <= 0 ? 0 : static_cast<int64_t>(room / per_token);
}

}  // namespace shardlm
