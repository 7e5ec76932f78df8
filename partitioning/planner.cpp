#include "partitioning/planner.hpp"

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "runtime/errors.hpp"

namespace shardlm {

double Plan::cost_chip_ms_per_token() const {
  const double tokens = static_cast<double>(prefill.chosen.tokens + decode.chosen.tokens);
  return mesh.size() * latency_s() * 1e3 / tokens;
}

namespace {

struct Part {
  const char* what;
  double loser, winner;
};

std::string dominant_collective(const PhaseCost& pc) {
  const CollectiveCost* top = nullptr;
  for (const auto& c : pc.layer.collectives)
    if (!top || c.seconds > top->seconds) top = &c;
  return top ? fmt::format("{}({}) of {}", name(top->kind), top->axes, top->tensor) : "";
}

}  // namespace

std::string explain_loss(const PhaseCost& loser, const PhaseCost& winner) {
  if (!loser.problem.empty()) return loser.problem;
  const double ratio = loser.latency_s / winner.latency_s - 1;
  if (ratio < 5e-4)
    return "ties within 0.05% (bound by compute or memory, its extra communication hidden)";
  const double lw = static_cast<double>(loser.layers_per_stage),
               ww = static_cast<double>(winner.layers_per_stage);
  Part parts[] = {
      {"compute", loser.layer.compute_eff_s * lw, winner.layer.compute_eff_s * ww},
      {"memory", loser.layer.memory_eff_s * lw, winner.layer.memory_eff_s * ww},
      {"exposed communication", (loser.layer.comm_eff_s - loser.layer.overlap_s) * lw,
       (winner.layer.comm_eff_s - winner.layer.overlap_s) * ww},
  };
  const Part* worst = &parts[0];
  for (const Part& p : parts)
    if (p.loser - p.winner > worst->loser - worst->winner) worst = &p;
  std::string detail = fmt::format("{} {} vs {} per forward pass", worst->what,
                                   format_seconds(worst->loser), format_seconds(worst->winner));
  if (worst == &parts[2]) detail += ", mostly " + dominant_collective(loser);
  return fmt::format("{:+.1f}% latency: {}", ratio * 100, detail);
}

std::string format_seconds(double s) {
  if (s < 0) return "-" + format_seconds(-s);
  if (s == 0) return "0";
  if (s >= 1) return fmt::format("{:.3g} s", s);
  if (s >= 1e-3) return fmt::format("{:.3g} ms", s * 1e3);
  return fmt::format("{:.3g} us", s * 1e6);
}

static std::vector<FfnLayout> ffn_choices(const std::optional<FfnLayout>& pin) {
  if (pin) return {*pin};
  return {std::begin(kAllFfnLayouts), std::end(kAllFfnLayouts)};
}
static std::vector<AttnLayout> attn_choices(const std::optional<AttnLayout>& pin) {
  if (pin) return {*pin};
  return {std::begin(kAllAttnLayouts), std::end(kAllAttnLayouts)};
}

static bool better(const PhaseCost& a, const PhaseCost& b) {
  if (a.problem.empty() != b.problem.empty()) return a.problem.empty();
  if (!a.problem.empty())
    return a.memory.total() - a.memory.available < b.memory.total() - b.memory.available;
  // Equal prices (wg-xyz splits only the batch, so its two attention layouts
  // are one): name it after what is split, as the paper's Table 2 does.
  if (std::abs(a.latency_s - b.latency_s) <= 1e-9 * b.latency_s) {
    if (a.layer.kv_bytes != b.layer.kv_bytes) return a.layer.kv_bytes < b.layer.kv_bytes;
    return a.config.attn == AttnLayout::kBatch && b.config.attn != AttnLayout::kBatch;
  }
  return a.latency_s < b.latency_s;
}

namespace {

// The plan that takes all[pick] of the layouts priced for a phase (best
// first); refused[i], where given and not empty, says why a layout priced
// better than the pick was not taken.
PhasePlan describe_choice(const std::vector<PhaseCost>& all, size_t pick,
                          const std::vector<std::string>& refused = {}) {
  auto why_not = [&](size_t i) {
    return i < refused.size() && !refused[i].empty() ? refused[i] : explain_loss(all[i], all[pick]);
  };
  PhasePlan plan;
  plan.chosen = all[pick];
  for (size_t i = 0; i < all.size(); ++i)
    if (i != pick) plan.runners_up.push_back({all[i], why_not(i)});
  const PhaseCost& c = plan.chosen;
  const double tokens_per_pass =
      static_cast<double>(c.tokens) / static_cast<double>(c.forward_passes * c.micro_batches);
  if (all.size() == 1) {
    plan.why = "pinned on the command line";
  } else {
    plan.why = fmt::format(
        "{} tokens per forward pass: ffn {} + attention {} has the lowest predicted latency of the "
        "{} "
        "layouts priced",
        tokens_per_pass, name(c.config.ffn), name(c.config.attn), all.size());
    if (pick > 0)
      plan.why = fmt::format(
          "{} tokens per forward pass: ffn {} + attention {}, with the other phase's layouts the "
          "lowest predicted total latency of the pairs that store weights alike ({} layouts "
          "priced); {} + {} is not taken: {}",
          tokens_per_pass, name(c.config.ffn), name(c.config.attn), all.size(),
          name(all[0].config.ffn), name(all[0].config.attn), why_not(0));
    else if (!plan.runners_up.empty())
      plan.why += fmt::format(
          "; the runner-up ({} + {}) loses by {}", name(plan.runners_up[0].cost.config.ffn),
          name(plan.runners_up[0].cost.config.attn), plan.runners_up[0].lost_because);
  }
  return plan;
}

// What a phase plan priced, best first.
std::vector<PhaseCost> priced(const PhasePlan& plan) {
  std::vector<PhaseCost> all{plan.chosen};
  for (const Alternative& a : plan.runners_up) all.push_back(a.cost);
  return all;
}

}  // namespace

PhasePlan plan_phase(const ModelSpec& model, const HardwareSpec& hw, const PlanRequest& req,
                     Phase phase, const Mesh& mesh, const std::string& weights) {
  const bool prefill = phase == Phase::kPrefill;
  std::vector<PhaseCost> all;
  for (FfnLayout f : ffn_choices(prefill ? req.ffn_prefill : req.ffn_decode))
    for (AttnLayout a : attn_choices(prefill ? req.attn_prefill : req.attn_decode))
      all.push_back(
          estimate_phase(model, hw, req.workload, phase,
                         PhaseConfig{f, a, weights, mesh, 0, req.kv_dtype, req.activation_dtype}));
  std::stable_sort(all.begin(), all.end(), better);
  return describe_choice(all, 0);
}

std::pair<PhasePlan, PhasePlan> plan_phases(const ModelSpec& model, const HardwareSpec& hw,
                                            const PlanRequest& req, const Mesh& mesh,
                                            const std::string& weights) {
  PhasePlan prefill = plan_phase(model, hw, req, Phase::kPrefill, mesh, weights);
  PhasePlan decode = plan_phase(model, hw, req, Phase::kDecode, mesh, weights);
  const std::vector<PhaseCost> prefills = priced(prefill), decodes = priced(decode);
  auto layouts = [&](const std::vector<PhaseCost>& all) {
    std::vector<Layout> out;
    for (const PhaseCost& c : all)
      out.push_back(make_layout(c.config.ffn, c.config.attn, layout_shape(model), mesh));
    return out;
  };
  const std::vector<Layout> prefill_layouts = layouts(prefills), decode_layouts = layouts(decodes);
  auto difference = [&](size_t p, size_t d) {
    const auto all = storage_differences(prefill_layouts[p], decode_layouts[d], mesh);
    return all.empty() ? std::string() : all.front();
  };
  if (difference(0, 0).empty()) return {prefill, decode};
  // The pair that runs fastest in all among those that store weights alike
  // (fitting pairs first); none when pins force two storages, and generate
  // then names the weights stored differently.
  std::optional<std::pair<size_t, size_t>> best;
  auto rank = [&](size_t p, size_t d) {
    const bool fit = prefills[p].problem.empty() && decodes[d].problem.empty();
    return std::pair{!fit, prefills[p].latency_s + decodes[d].latency_s};
  };
  for (size_t p = 0; p < prefills.size(); ++p)
    for (size_t d = 0; d < decodes.size(); ++d)
      if (difference(p, d).empty() && (!best || rank(p, d) < rank(best->first, best->second)))
        best = {p, d};
  if (!best)
    throw UsageError(
        fmt::format("mesh {}: {}; {}", mesh.str(), difference(0, 0), kShareStorageAdvice));
  const auto [p, d] = *best;
  std::vector<std::string> refused_prefill(p), refused_decode(d);
  for (size_t i = 0; i < p; ++i)
    if (std::string why = difference(i, d); !why.empty())
      refused_prefill[i] = "weights stored differently: " + why;
  for (size_t i = 0; i < d; ++i)
    if (std::string why = difference(p, i); !why.empty())
      refused_decode[i] = "weights stored differently: " + why;
  return {describe_choice(prefills, p, refused_prefill),
          describe_choice(decodes, d, refused_decode)};
}

std::vector<Mesh> candidate_meshes(const ModelSpec& model, const HardwareSpec& hw,
                                   const PlanRequest& req, int chips) {
  if (req.mesh) return {*req.mesh};
  std::vector<Mesh> out;
  auto add = [&](int pp) {
    for (const Mesh& m : Mesh::factorizations(chips / pp, pp))
      if (hw.mesh_problem(m).empty()) out.push_back(m);  // only what the machine can form
  };
  for (int pp = 1; pp <= std::min<int64_t>(req.max_pp, model.config.num_layers); pp *= 2) {
    if (req.pp && pp != *req.pp) continue;
    if (chips % pp) continue;
    add(pp);
  }
  if (req.pp && out.empty() && chips % *req.pp == 0) add(*req.pp);
  return out;
}

namespace {

struct Setup {
  Mesh mesh;
  std::string weights;
  PhasePlan prefill, decode;
  bool fits() const { return prefill.chosen.problem.empty() && decode.chosen.problem.empty(); }
  double latency() const { return prefill.chosen.latency_s + decode.chosen.latency_s; }
  double cost() const {
    return mesh.size() * latency() /
           static_cast<double>(prefill.chosen.tokens + decode.chosen.tokens);
  }
  double shortfall() const {
    return std::max(prefill.chosen.memory.total() - prefill.chosen.memory.available,
                    decode.chosen.memory.total() - decode.chosen.memory.available);
  }
};

// Setups that differ only by a mesh permutation the layouts do not see.
std::string setup_key(const Setup& s) {
  return fmt::format("{}|{}|{}|{}{}{}{}|{:.3g}", s.mesh.size(), s.mesh.pp, s.weights,
                     name(s.prefill.chosen.config.ffn), name(s.prefill.chosen.config.attn),
                     name(s.decode.chosen.config.ffn), name(s.decode.chosen.config.attn),
                     s.latency());
}

// `refused`, where given: why the last mesh the pinned layouts cannot share
// weights on was left out.
std::vector<Setup> price_setups(const ModelSpec& model, const HardwareSpec& hw,
                                const PlanRequest& req, int chips,
                                const std::vector<std::string>& dtypes,
                                std::string* refused = nullptr) {
  std::vector<Setup> setups;
  for (const Mesh& mesh : candidate_meshes(model, hw, req, chips))
    for (const std::string& w : dtypes) {
      try {
        auto [prefill, decode] = plan_phases(model, hw, req, mesh, w);
        setups.push_back({mesh, w, std::move(prefill), std::move(decode)});
      } catch (const UsageError& e) {
        if (refused) *refused = e.what();
      }
    }
  return setups;
}

std::vector<int> chip_counts(const PlanRequest& req) {
  if (req.objective == Objective::kLatency || req.mesh) return {req.chips};
  std::vector<int> out;  // the cost objective may leave chips idle
  for (int n = 1; n <= req.chips; ++n)
    if (req.chips % n == 0) out.push_back(n);
  return out;
}

// Why nothing fits, by how much, and what would make it fit.
[[noreturn]] void throw_no_fit(const ModelSpec& model, const HardwareSpec& hw,
                               const PlanRequest& req, const Setup& closest) {
  const PhaseCost& p =
      closest.prefill.chosen.problem.empty() ? closest.decode.chosen : closest.prefill.chosen;
  std::string msg = fmt::format(
      "{} does not fit on {} x {}: the closest setup (mesh {}, {} weights, {} {}) {}; short by "
      "{:.1f} GB per chip.",
      model.name, req.chips, hw.name, closest.mesh.str(), closest.weights, name(p.phase),
      name(p.config.ffn), p.problem, closest.shortfall() / 1e9);
  std::vector<std::string> fixes;
  if (closest.weights != "int8" && req.weights != "int8") {
    PlanRequest r = req;
    r.weights = "int8";
    auto s = price_setups(model, hw, r, req.chips, {"int8"});
    if (std::any_of(s.begin(), s.end(), [](const Setup& x) { return x.fits(); }))
      fixes.push_back("--weights int8");
  }
  for (int n = req.chips * 2; n <= hw.max_chips; n *= 2) {
    PlanRequest r = req;
    r.chips = n;
    r.mesh.reset();
    auto s = price_setups(model, hw, r, n, {closest.weights});
    if (std::any_of(s.begin(), s.end(), [](const Setup& x) { return x.fits(); })) {
      fixes.push_back(fmt::format("--chips {}", n));
      break;
    }
  }
  for (int64_t b = req.workload.batch / 2; b >= 1; b /= 2) {
    PlanRequest r = req;
    r.workload.batch = b;
    auto s = price_setups(model, hw, r, req.chips, {closest.weights});
    if (std::any_of(s.begin(), s.end(), [](const Setup& x) { return x.fits(); })) {
      fixes.push_back(fmt::format("--batch {}", b));
      break;
    }
  }
  msg += fixes.empty()
             ? " Nothing tried (int8 weights, more chips, smaller batch) makes it fit."
             : " It would fit with: " + fmt::format("{}", fmt::join(fixes, ", or ")) + ".";
  throw DataError(msg);
}

}  // namespace

Plan make_plan(const ModelSpec& model, const HardwareSpec& hw, const PlanRequest& req) {
  const Workload& w = req.workload;
  if (w.batch < 1 || w.prompt_len < 1 || w.gen_len < 1)
    throw UsageError("--batch, --prompt-len and --gen-len must be at least 1");
  if (req.chips < 1) throw UsageError("--chips must be at least 1");
  if (req.mesh && req.mesh->size() != req.chips)
    throw UsageError(fmt::format("--mesh {} with pp={} uses {} chips but --chips is {}",
                                 req.mesh->str(), req.mesh->pp, req.mesh->size(), req.chips));
  if (req.mesh && !hw.torus_slices.empty())
    if (std::string why = hw.mesh_problem(*req.mesh); !why.empty())
      throw UsageError(fmt::format("--mesh: {}", why));
  if (req.chips > hw.max_chips)
    throw UsageError(
        fmt::format("--chips {} exceeds {}'s max_chips {}", req.chips, hw.name, hw.max_chips));
  if (req.pp && req.chips % *req.pp)
    throw UsageError(fmt::format("--pp {} does not divide --chips {}", *req.pp, req.chips));
  std::vector<std::string> dtypes;
  // Hardware that computes in f32 (a calibrated CPU) keeps f32 weights.
  if (req.weights == "auto")
    dtypes = hw.activation_dtype == "f32" ? std::vector<std::string>{"f32"}
                                          : std::vector<std::string>{"bf16", "int8"};
  else if (req.weights == "bf16" || req.weights == "int8" || req.weights == "f32")
    dtypes = {req.weights};
  else
    throw UsageError(fmt::format("--weights '{}': expected bf16, int8, f32 or auto", req.weights));

  std::vector<Setup> setups;
  std::string refused;
  for (int n : chip_counts(req)) {
    auto s = price_setups(model, hw, req, n, dtypes, &refused);
    setups.insert(setups.end(), s.begin(), s.end());
  }
  if (setups.empty() && !refused.empty()) throw UsageError(refused);
  if (setups.empty() && !hw.torus_slices.empty() && !hw.slice_of(req.chips))
    throw UsageError(hw.mesh_problem(Mesh{1, req.chips, 1, 1}));
  if (setups.empty())
    throw UsageError(fmt::format("no mesh of {} chips matches the pins (--pp {})", req.chips,
                                 req.pp.value_or(0)));

  const bool by_cost = req.objective == Objective::kCost;
  auto score = [&](const Setup& s) {
    double v = by_cost ? s.cost() : s.latency();
    if (req.latency_target_s && s.latency() > *req.latency_target_s)
      v += 1e12;  // misses the target
    // int8 only where it buys more than 5%: the paper keeps bf16 when the
    // weight-load time it saves is unimportant (§4.4).
    if (s.weights == "int8" && req.weights == "auto") v *= 1.05;
    return v;
  };
  std::vector<Setup*> fitting;
  for (auto& s : setups)
    if (s.fits()) fitting.push_back(&s);
  if (fitting.empty()) {
    const Setup* closest = &setups.front();
    for (const auto& s : setups)
      if (s.shortfall() < closest->shortfall()) closest = &s;
    throw_no_fit(model, hw, req, *closest);
  }
  std::stable_sort(fitting.begin(), fitting.end(),
                   [&](Setup* a, Setup* b) { return score(*a) < score(*b); });
  Setup& best = *fitting.front();

  Plan plan{model, hw.name, req, best.mesh, best.weights, best.prefill, best.decode, "", {}, {}};
  plan.why = fmt::format(
      "mesh {} (pp={}) with {} weights has the lowest predicted {} of {} fitting setups",
      best.mesh.str(), best.mesh.pp, best.weights, by_cost ? "cost per token" : "latency",
      fitting.size());
  if (fitting.size() > 1) {
    const Setup& next = *fitting[1];
    const double margin = by_cost ? next.cost() / best.cost() : next.latency() / best.latency();
    plan.why += fmt::format("; next best: mesh {}, {} weights, {:+.1f}%", next.mesh.str(),
                            next.weights, (margin - 1) * 100);
  }
  if (req.latency_target_s) {
    plan.why += best.latency() <= *req.latency_target_s
                    ? fmt::format(" meeting the {:.4g} ms target", *req.latency_target_s * 1e3)
                    : fmt::format("; none meets the {:.4g} ms target, this one is closest",
                                  *req.latency_target_s * 1e3);
  }
  // A few of the best setups that differ from the winner (and from each
  // other: symmetric meshes often price the same).
  std::set<std::string> shown = {setup_key(best)};
  for (size_t i = 1; i < fitting.size() && plan.other_setups.size() < 5; ++i) {
    Setup& s = *fitting[i];
    if (!shown.insert(setup_key(s)).second) continue;
    const double ratio = by_cost ? s.cost() / best.cost() : s.latency() / best.latency();
    plan.other_setups.push_back(
        {s.decode.chosen,
         fmt::format("mesh {}, {} weights, {} chips, prefill {}+{}, decode {}+{}: {:+.1f}% {}",
                     s.mesh.str(), s.weights, s.mesh.size(), name(s.prefill.chosen.config.ffn),
                     name(s.prefill.chosen.config.attn), name(s.decode.chosen.config.ffn),
                     name(s.decode.chosen.config.attn), (ratio - 1) * 100,
                     by_cost ? "cost" : "latency")});
  }
  if (w.prompt_len + w.gen_len > model.config.context_length())
    plan.notes.push_back(
        fmt::format("prompt {} + generated {} tokens exceed the {} positions {} was trained for",
                    w.prompt_len, w.gen_len, model.config.context_length(), model.name));
  for (const PhasePlan* p : {&plan.prefill, &plan.decode}) {
    const PhaseCost& c = p->chosen;
    const DimSizes dims = phase_dims(model, w, c.phase, w.batch);
    const Layout l = make_layout(c.config.ffn, c.config.attn, layout_shape(model), c.config.mesh);
    std::string uneven = l.weight(WeightRole::kWq).stored.uneven_dims(dims, c.config.mesh) +
                         l.kv_cache.uneven_dims(dims, c.config.mesh);
    if (!uneven.empty())
      plan.notes.push_back(fmt::format(
          "{}: the mesh does not divide dimension(s) {} evenly; the cost model pads them",
          name(c.phase), uneven));
  }
  return plan;
}

}  // namespace shardlm
