#include "partitioning/layouts.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace shardlm {

std::string_view name(FfnLayout l) {
  switch (l) {
    case FfnLayout::k1D: return "1d";
    case FfnLayout::k2D: return "2d";
    case FfnLayout::kWgX: return "wg-x";
    case FfnLayout::kWgXY: return "wg-xy";
    case FfnLayout::kWgXYZ: return "wg-xyz";
  }
  return "?";
}

std::string_view name(AttnLayout l) {
  return l == AttnLayout::kHeads ? "heads" : "batch";
}

std::string_view name(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::kAllGather: return "all-gather";
    case CollectiveKind::kReduceScatter: return "reduce-scatter";
    case CollectiveKind::kAllReduce: return "all-reduce";
    case CollectiveKind::kAllToAll: return "all-to-all";
  }
  return "?";
}

std::string_view name(WeightRole r) {
  switch (r) {
    case WeightRole::kEmbedding: return "embedding";
    case WeightRole::kAttnNorm: return "attn_norm";
    case WeightRole::kWq: return "wq";
    case WeightRole::kWk: return "wk";
    case WeightRole::kWv: return "wv";
    case WeightRole::kWo: return "wo";
    case WeightRole::kFfnNorm: return "ffn_norm";
    case WeightRole::kWGate: return "w_gate";
    case WeightRole::kWUp: return "w_up";
    case WeightRole::kWDown: return "w_down";
    case WeightRole::kFinalNorm: return "final_norm";
    case WeightRole::kLmHead: return "lm_head";
  }
  return "?";
}

FfnLayout parse_ffn_layout(std::string_view text) {
  for (FfnLayout l : kAllFfnLayouts)
    if (name(l) == text) return l;
  throw std::invalid_argument(fmt::format(
      "unknown feedforward layout '{}' (expected 1d, 2d, wg-x, wg-xy or wg-xyz)", text));
}

AttnLayout parse_attn_layout(std::string_view text) {
  for (AttnLayout l : kAllAttnLayouts)
    if (name(l) == text) return l;
  throw std::invalid_argument(
      fmt::format("unknown attention layout '{}' (expected heads or batch)", text));
}

FfnLayoutParams layout_params(FfnLayout l) {
  // F (and the head dims) are split z-major so that gathering y out of `F_zy`
  // leaves the contiguous `F_z` that wg-xy multiplies with.
  switch (l) {
    // 1d splits F like 2d's E (x, then z, then y) so that both keep the
    // residual stream as `E_xzy` and the embedding serves every layout.
    case FfnLayout::k1D: return {"", "xzy", "", ""};
    case FfnLayout::k2D: return {"x", "zy", "", ""};
    case FfnLayout::kWgX: return {"x", "zy", "x", "x"};
    case FfnLayout::kWgXY: return {"x", "zy", "xy", "xy"};
    case FfnLayout::kWgXYZ: return {"x", "zy", "xyz", "xyz"};
  }
  throw std::logic_error("unhandled feedforward layout");
}

const WeightLayout& Layout::weight(WeightRole r) const {
  for (const auto& w : weights)
    if (w.role == r) return w;
  throw std::out_of_range(fmt::format("layout has no weight '{}'", name(r)));
}

bool Layout::has_weight(WeightRole r) const {
  for (const auto& w : weights)
    if (w.role == r) return true;
  return false;
}

namespace {

// Which spec letters are a role's rows and cols.
std::pair<char, char> role_dims(WeightRole role) {
  switch (role) {
    case WeightRole::kWq: return {'H', 'E'};
    case WeightRole::kWk:
    case WeightRole::kWv: return {'K', 'E'};
    case WeightRole::kWo: return {'E', 'H'};
    case WeightRole::kWGate:
    case WeightRole::kWUp: return {'F', 'E'};
    case WeightRole::kWDown: return {'E', 'F'};
    case WeightRole::kEmbedding:
    case WeightRole::kLmHead: return {'V', 'E'};
    default: return {'?', 'E'};
  }
}

}  // namespace

std::pair<std::string, std::string> stored_axes(const Layout& layout, WeightRole role) {
  const auto [rows, cols] = role_dims(role);
  const PartitionSpec& spec = layout.weight(role).stored;
  return {spec.axes_of(rows), spec.axes_of(cols)};
}

std::vector<std::string> storage_differences(const Layout& prefill, const Layout& decode,
                                             const Mesh& mesh) {
  std::vector<std::string> out;
  for (WeightRole r : {WeightRole::kWq, WeightRole::kWk, WeightRole::kWv, WeightRole::kWo,
                       WeightRole::kWGate, WeightRole::kWUp, WeightRole::kWDown}) {
    if (!prefill.has_weight(r)) continue;  // no gate projection without a gated FFN
    const auto p = stored_axes(prefill, r), d = stored_axes(decode, r);
    if (mesh.splitting(p.first) != mesh.splitting(d.first) ||
        mesh.splitting(p.second) != mesh.splitting(d.second))
      out.push_back(
          fmt::format("the {} prefill layout stores {} as {} but the {} decode layout as {}",
                      name(prefill.ffn), name(r), prefill.weight(r).stored.str(), name(decode.ffn),
                      decode.weight(r).stored.str()));
  }
  return out;
}

namespace {

// Longest leading run of `axes` whose product divides `count`: the axes over
// which `count` heads can be split without breaking the query-to-KV grouping
// (the leading axes are the most significant, so each shard still maps to
// whole KV heads). Axes after the run replicate the KV heads.
std::string dividing_prefix(const std::string& axes, int64_t count, const Mesh& mesh) {
  std::string prefix;
  for (char a : axes) {
    if (count % (mesh.axes_size(prefix) * mesh.axis_size(a)) != 0) break;
    prefix += a;
  }
  return prefix;
}

PartitionSpec spec(const std::string& text) {
  return PartitionSpec::parse(text);
}

// Builds the specs and steps from the layout's parameters.
class LayoutBuilder {
 public:
  LayoutBuilder(FfnLayout ffn, AttnLayout attn, const LayoutShape& shape, const Mesh& mesh)
      : p_(layout_params(ffn)), shape_(shape) {
    out_.ffn = ffn;
    out_.attn = attn;
    out_.shape = shape;
    ue_ = axes_minus(p_.stored_e, p_.gathered);
    uf_ = axes_minus(p_.stored_f, p_.gathered);
    rest_e_ = ue_ + uf_;
    b_ = p_.batch;
    heads_ = uf_ + ue_;
    kv_stored_ = dividing_prefix(p_.stored_f, shape.num_kv_heads, mesh);
    kv_used_ = axes_minus(kv_stored_, p_.gathered);
    // With every KV head split like the query heads, a reduce-scatter suffices;
    // otherwise the (small) K/V partial sums are all-reduced and KV heads stay
    // replicated over the remaining axes.
    kv_scatter_ =
        !ue_.empty() && kv_used_ == uf_ && shape.num_kv_heads % mesh.axes_size(heads_) == 0;
    kv_heads_ = kv_scatter_ ? heads_ : kv_used_;
  }

  Layout build(AttnLayout attn) {
    add_weights();
    add_prologue();
    if (shape_.parallel_block)
      add_parallel_layer(attn);
    else
      add_serial_layer(attn);
    add_epilogue();
    out_.kv_cache = attn == AttnLayout::kHeads
                        ? spec(fmt::format("B{} C K{} D", sub(b_), sub(kv_heads_)))
                        : spec(fmt::format("B{} C K D", sub(b_ + heads_)));
    return out_;
  }

 private:
  static std::string sub(const std::string& axes) { return axes.empty() ? "" : "_" + axes; }
  // "B_x L E_zy" style spec for the residual stream and its relatives.
  PartitionSpec bl(char last, const std::string& axes, const std::string& partial = "") const {
    PartitionSpec s = spec(fmt::format("B{} L {}{}", sub(b_), last, sub(axes)));
    s.partial_sum = partial;
    return s;
  }
  void act(const std::string& n, PartitionSpec s) { out_.activations[n] = std::move(s); }

  void weight(WeightRole r, const std::string& stored) {
    PartitionSpec s = spec(stored);
    PartitionSpec used = s;
    for (auto& d : used.dims) d.axes = axes_minus(d.axes, p_.gathered);
    out_.weights.push_back({r, s, used});
  }

  void add_weights() {
    const std::string se = sub(p_.stored_e), sf = sub(p_.stored_f), sk = sub(kv_stored_);
    weight(WeightRole::kAttnNorm, "E");
    weight(WeightRole::kWq, fmt::format("E{} H{} D", se, sf));
    weight(WeightRole::kWk, fmt::format("E{} K{} D", se, sk));
    weight(WeightRole::kWv, fmt::format("E{} K{} D", se, sk));
    weight(WeightRole::kWo, fmt::format("H{} D E{}", sf, se));
    if (!shape_.parallel_block) weight(WeightRole::kFfnNorm, "E");
    if (shape_.gated_ffn) weight(WeightRole::kWGate, fmt::format("E{} F{}", se, sf));
    weight(WeightRole::kWUp, fmt::format("E{} F{}", se, sf));
    weight(WeightRole::kWDown, fmt::format("F{} E{}", sf, se));
    // Embedding and LM head do not depend on the per-phase layout. The
    // embedding is split over E in the order of the weight-stationary residual
    // stream; the LM head over the vocabulary (tied models keep this second,
    // vocabulary-split copy).
    out_.weights.push_back({WeightRole::kEmbedding, spec("V E_xzy"), spec("V E_xzy")});
    out_.weights.push_back({WeightRole::kFinalNorm, spec("E"), spec("E")});
    out_.weights.push_back({WeightRole::kLmHead, spec("E V_xyz"), spec("E V_xyz")});
  }

  Step collective(CollectiveKind k, const std::string& axes, std::vector<std::string> in,
                  const std::string& out, int group = -1) {
    return Step{OpKind::kCollective, std::move(in), out, std::nullopt, k, axes, group};
  }
  Step op(OpKind k, std::vector<std::string> in, const std::string& out,
          std::optional<WeightRole> w = std::nullopt) {
    return Step{k, std::move(in), out, w, CollectiveKind::kAllGather, "", -1};
  }
  std::vector<Step>& L() { return out_.layer; }

  void add_prologue() {
    // Token ids are replicated; each rank looks up its E slice of every token.
    // Layouts that split the batch gather whole rows and keep their own rows
    // and E slice: an all-to-all over the batch axes would leave E_xzy's
    // chunks out of order for the E split at rest (wg-xy keeps E_z).
    act("tokens", spec("BL"));
    act("x", bl('E', rest_e_));
    if (b_.empty()) {
      out_.prologue.push_back(op(OpKind::kMatmul, {"tokens"}, "x", WeightRole::kEmbedding));
      return;
    }
    act("embed", spec("BL E_xzy"));
    act("embed_full", spec("BLE"));
    out_.prologue.push_back(op(OpKind::kMatmul, {"tokens"}, "embed", WeightRole::kEmbedding));
    out_.prologue.push_back(collective(CollectiveKind::kAllGather, "xzy", {"embed"}, "embed_full"));
    out_.prologue.push_back(Step{OpKind::kLocalSlice,
                                 {"embed_full"},
                                 "x",
                                 std::nullopt,
                                 CollectiveKind::kAllGather,
                                 b_ + rest_e_,
                                 -1});
  }

  void add_epilogue() {
    add_norm("x", "final", WeightRole::kFinalNorm, out_.epilogue);
    act("final_full", spec("BLE"));
    act("logits_local", spec("BL V_xyz"));
    act("logits", spec("BLV"));
    const std::string all = b_ + rest_e_;
    if (!all.empty())
      out_.epilogue.push_back(
          collective(CollectiveKind::kAllGather, all, {"final_norm"}, "final_full"));
    out_.epilogue.push_back(
        op(OpKind::kMatmul, {"final_full"}, "logits_local", WeightRole::kLmHead));
    out_.epilogue.push_back(
        collective(CollectiveKind::kAllGather, "xyz", {"logits_local"}, "logits"));
  }

  // RMSNorm over an E split over rest_e_: the per-token sums of squares are
  // all-reduced over those axes first.
  void add_norm(const std::string& in, const std::string& tag, WeightRole w,
                std::vector<Step>& to) {
    const std::string out = tag + "_norm";
    act(out, bl('E', rest_e_));
    if (!rest_e_.empty()) {
      const std::string partial = tag + "_sumsq_partial", full = tag + "_sumsq";
      act(partial, spec(fmt::format("B{} L (partialsum-{})", sub(b_), rest_e_)));
      act(full, spec(fmt::format("B{} L", sub(b_))));
      to.push_back(op(OpKind::kNorm, {in}, partial));
      to.push_back(collective(CollectiveKind::kAllReduce, rest_e_, {partial}, full));
      to.push_back(op(OpKind::kNorm, {in, full}, out, w));
    } else {
      to.push_back(op(OpKind::kNorm, {in}, out, w));
    }
  }

  // Weight-gathered layouts fetch every weight of the layer before using it.
  void add_weight_gathers(std::initializer_list<WeightRole> roles) {
    if (p_.gathered.empty()) return;
    for (WeightRole r : roles) {
      if (!out_.has_weight(r)) continue;
      L().push_back(Step{OpKind::kCollective,
                         {std::string(name(r))},
                         std::string(name(r)) + "@used",
                         r,
                         CollectiveKind::kAllGather,
                         p_.gathered,
                         -1});
    }
  }

  // normed input -> matmul input: gather E down to the weight's E split.
  std::string gather_input(const std::string& normed, const std::string& tag) {
    const std::string axes = axes_minus(rest_e_, ue_);
    if (axes.empty()) return normed;
    const std::string out = tag + "_in";
    act(out, bl('E', ue_));
    L().push_back(collective(CollectiveKind::kAllGather, axes, {normed}, out));
    return out;
  }

  // Q/K/V projections up to the attention's input specs (heads layout).
  void add_qkv(const std::string& in, int group) {
    act("q", spec(fmt::format("B{} L H{} D", sub(b_), sub(heads_))));
    act("k", spec(fmt::format("B{} L K{} D", sub(b_), sub(kv_heads_))));
    act("v", spec(fmt::format("B{} L K{} D", sub(b_), sub(kv_heads_))));
    for (auto [w, n] :
         {std::pair{WeightRole::kWq, "q"}, {WeightRole::kWk, "k"}, {WeightRole::kWv, "v"}}) {
      const std::string full(n);
      if (ue_.empty()) {
        L().push_back(op(OpKind::kMatmul, {in}, full, w));
        continue;
      }
      const bool is_q = full == "q";
      const std::string part = full + "_partial";
      act(part,
          spec(fmt::format("B{} L {}{} D", sub(b_), is_q ? 'H' : 'K', sub(is_q ? uf_ : kv_used_))));
      out_.activations[part].partial_sum = ue_;
      L().push_back(op(OpKind::kMatmul, {in}, part, w));
      const bool scatter = is_q || kv_scatter_;
      L().push_back(
          collective(scatter ? CollectiveKind::kReduceScatter : CollectiveKind::kAllReduce, ue_,
                     {part}, full, scatter ? group : -1));
    }
  }

  // Attention, including the batch layout's all-to-alls around it.
  void add_attention() {
    if (out_.attn == AttnLayout::kHeads || heads_.empty()) {
      act("attn", spec(fmt::format("B{} L H{} D", sub(b_), sub(heads_))));
      L().push_back(op(OpKind::kAttention, {"q", "k", "v"}, "attn"));
      return;
    }
    const std::string bh = sub(b_ + heads_);
    act("q_b", spec(fmt::format("B{} L H D", bh)));
    act("k_b", spec(fmt::format("B{} L K D", bh)));
    act("v_b", spec(fmt::format("B{} L K D", bh)));
    act("attn_b", spec(fmt::format("B{} L H D", bh)));
    act("attn", spec(fmt::format("B{} L H{} D", sub(b_), sub(heads_))));
    L().push_back(collective(CollectiveKind::kAllToAll, heads_, {"q"}, "q_b"));
    const std::string slice = axes_minus(heads_, kv_heads_);
    for (auto t : {"k", "v"}) {
      const std::string n(t);
      std::string cur = n;
      if (!kv_heads_.empty()) {
        // K heads -> batch over the axes that split K heads...
        const std::string mid = slice.empty() ? n + "_b" : n + "_a2a";
        if (!slice.empty()) act(mid, spec(fmt::format("B{} L K D", sub(b_ + kv_heads_))));
        L().push_back(collective(CollectiveKind::kAllToAll, kv_heads_, {cur}, mid));
        cur = mid;
      }
      if (!slice.empty()) {
        // ...and a free local slice over the axes that replicate them.
        L().push_back(Step{OpKind::kLocalSlice,
                           {cur},
                           n + "_b",
                           std::nullopt,
                           CollectiveKind::kAllGather,
                           slice,
                           -1});
      }
    }
    L().push_back(op(OpKind::kAttention, {"q_b", "k_b", "v_b"}, "attn_b"));
    L().push_back(collective(CollectiveKind::kAllToAll, heads_, {"attn_b"}, "attn"));
  }

  // attention output -> W_O's input split (gather the reduce-scattered axes).
  std::string gather_attn_out(int group) {
    if (ue_.empty()) return "attn";
    act("attn_in", spec(fmt::format("B{} L H{} D", sub(b_), sub(uf_))));
    L().push_back(collective(CollectiveKind::kAllGather, ue_, {"attn"}, "attn_in", group));
    return "attn_in";
  }

  // gate/up -> activation -> gathered hidden for W_down. Returns its name.
  std::string add_ffn_hidden(const std::string& in, int rs_group, int ag_group) {
    std::vector<std::string> hidden_inputs;
    std::vector<std::pair<WeightRole, std::string>> mats = {{WeightRole::kWUp, "up"}};
    if (shape_.gated_ffn) mats.insert(mats.begin(), {WeightRole::kWGate, "gate"});
    for (auto& [w, n] : mats) {
      if (ue_.empty()) {
        act(n, bl('F', uf_));
        L().push_back(op(OpKind::kMatmul, {in}, n, w));
      } else {
        act(n + "_partial", bl('F', uf_, ue_));
        act(n, bl('F', uf_ + ue_));
        L().push_back(op(OpKind::kMatmul, {in}, n + "_partial", w));
        L().push_back(
            collective(CollectiveKind::kReduceScatter, ue_, {n + "_partial"}, n, rs_group));
      }
      hidden_inputs.push_back(n);
    }
    act("h", bl('F', uf_ + ue_));
    L().push_back(op(OpKind::kActivation, hidden_inputs, "h"));
    if (ue_.empty()) return "h";
    act("h_in", bl('F', uf_));
    L().push_back(collective(CollectiveKind::kAllGather, ue_, {"h"}, "h_in", ag_group));
    return "h_in";
  }

  // Partial sums over uf_ reduce-scattered back into the residual layout.
  void scatter_to_residual(const std::string& partial, const std::string& out) {
    act(out, bl('E', rest_e_));
    if (uf_.empty()) {
      out_.activations[partial] = bl('E', ue_);
      out_.activations[out] = out_.activations[partial];
      L().push_back(op(OpKind::kAdd, {partial}, out));
      return;
    }
    L().push_back(collective(CollectiveKind::kReduceScatter, uf_, {partial}, out));
  }

  void add_serial_layer(AttnLayout) {
    add_weight_gathers({WeightRole::kWq, WeightRole::kWk, WeightRole::kWv, WeightRole::kWo,
                        WeightRole::kWGate, WeightRole::kWUp, WeightRole::kWDown});
    add_norm("x", "attn", WeightRole::kAttnNorm, L());
    add_qkv(gather_input("attn_norm", "qkv"), -1);
    add_attention();
    act("attn_out_partial", bl('E', ue_, uf_));
    L().push_back(op(OpKind::kMatmul, {gather_attn_out(-1)}, "attn_out_partial", WeightRole::kWo));
    scatter_to_residual("attn_out_partial", "attn_out");
    act("x_mid", bl('E', rest_e_));
    L().push_back(op(OpKind::kAdd, {"x", "attn_out"}, "x_mid"));
    add_norm("x_mid", "ffn", WeightRole::kFfnNorm, L());
    const std::string h = add_ffn_hidden(gather_input("ffn_norm", "ffn"), -1, -1);
    act("ffn_out_partial", bl('E', ue_, uf_));
    L().push_back(op(OpKind::kMatmul, {h}, "ffn_out_partial", WeightRole::kWDown));
    scatter_to_residual("ffn_out_partial", "ffn_out");
    L().push_back(op(OpKind::kAdd, {"x_mid", "ffn_out"}, "x"));
  }

  // PaLM's parallel block: one norm, one input gather, and the attention and
  // feedforward collectives fused pairwise (§3.4), so the E-sized ones run once.
  void add_parallel_layer(AttnLayout) {
    add_weight_gathers({WeightRole::kWq, WeightRole::kWk, WeightRole::kWv, WeightRole::kWo,
                        WeightRole::kWGate, WeightRole::kWUp, WeightRole::kWDown});
    add_norm("x", "attn", WeightRole::kAttnNorm, L());
    const std::string in = gather_input("attn_norm", "block");
    add_qkv(in, 1);
    const std::string h = add_ffn_hidden(in, 1, 2);
    add_attention();
    const std::string attn_in = gather_attn_out(2);
    act("attn_out_partial", bl('E', ue_, uf_));
    act("ffn_out_partial", bl('E', ue_, uf_));
    act("block_out_partial", bl('E', ue_, uf_));
    L().push_back(op(OpKind::kMatmul, {attn_in}, "attn_out_partial", WeightRole::kWo));
    L().push_back(op(OpKind::kMatmul, {h}, "ffn_out_partial", WeightRole::kWDown));
    L().push_back(op(OpKind::kAdd, {"attn_out_partial", "ffn_out_partial"}, "block_out_partial"));
    scatter_to_residual("block_out_partial", "block_out");
    L().push_back(op(OpKind::kAdd, {"x", "block_out"}, "x"));
  }

  FfnLayoutParams p_;
  LayoutShape shape_;
  Layout out_;
  std::string ue_, uf_, rest_e_, b_, heads_, kv_stored_, kv_used_, kv_heads_;
  bool kv_scatter_ = false;
};

}  // namespace

Layout make_layout(FfnLayout ffn, AttnLayout attn, const LayoutShape& shape, const Mesh& mesh) {
  return LayoutBuilder(ffn, attn, shape, mesh).build(attn);
}

static std::string format_steps(const std::vector<Step>& steps, const Layout& l) {
  std::string out;
  auto spec_of = [&](const std::string& n) -> std::string {
    auto it = l.activations.find(n);
    if (it != l.activations.end()) return it->second.str();
    for (const auto& w : l.weights)
      if (name(w.role) == n) return w.stored.str();
    if (n.ends_with("@used"))
      for (const auto& w : l.weights)
        if (fmt::format("{}@used", name(w.role)) == n) return w.used.str();
    return "?";
  };
  for (const auto& s : steps) {
    std::string what;
    switch (s.op) {
      case OpKind::kCollective:
        what = fmt::format("{}({})", name(s.collective), s.axes);
        if (s.fusion_group >= 0) what += fmt::format(" [fused #{}]", s.fusion_group);
        break;
      case OpKind::kLocalSlice: what = fmt::format("slice({})", s.axes); break;
      case OpKind::kNorm: what = "norm"; break;
      case OpKind::kMatmul: what = fmt::format("matmul {}", name(*s.weight)); break;
      case OpKind::kAttention: what = "attention"; break;
      case OpKind::kActivation: what = "activation"; break;
      case OpKind::kAdd: what = "add"; break;
    }
    std::string ins;
    for (const auto& i : s.inputs) ins += (ins.empty() ? "" : ", ") + i + " " + spec_of(i);
    out += fmt::format("  {:<34} {} -> {} {}\n", what, ins, s.output, spec_of(s.output));
  }
  return out;
}

std::string format_layout(const Layout& l, const DimSizes& sizes, const Mesh& mesh) {
  const Mesh one_chip{};  // every spec's global shape is its shape on a single chip
  auto shape = [&](const PartitionSpec& s, const Mesh& m) {
    return fmt::format("[{}]", fmt::join(s.local_shape(sizes, m), ", "));
  };
  std::string out = fmt::format(
      "layout ffn={} attn={} on mesh {}\n"
      "weights: {:<11} {:<18} {:<13} {:<13} {}\n",
      name(l.ffn), name(l.attn), mesh.str(), "", "global shape", "stored spec", "used spec",
      "per-rank shape (stored)");
  for (const auto& w : l.weights)
    out +=
        fmt::format("  {:<18} {:<18} {:<13} {:<13} {}\n", name(w.role), shape(w.stored, one_chip),
                    w.stored.str(), w.used.str(), shape(w.stored, mesh));
  out += fmt::format("activations: {:<14} {:<18} {:<24} {}\n", "", "global shape", "spec",
                     "per-rank shape");
  for (const auto& [n, spec] : l.activations)
    out += fmt::format("  {:<25} {:<18} {:<24} {}\n", n, shape(spec, one_chip), spec.str(),
                       shape(spec, mesh));
  out += fmt::format("kv cache (K and V, per layer): {:<18} {} per rank {}\n",
                     shape(l.kv_cache, one_chip), l.kv_cache.str(), shape(l.kv_cache, mesh));
  out += "prologue:\n" + format_steps(l.prologue, l);
  out += "layer:\n" + format_steps(l.layer, l);
  out += "epilogue:\n" + format_steps(l.epilogue, l);
  return out;
}

}  // namespace shardlm
