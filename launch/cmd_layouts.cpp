// `shardlm layouts`: the partition specs a layout gives every weight and
// activation on a mesh, with per-rank shapes, and the collectives of one
// layer: the same tables `generate` executes and `plan` prices.
#include <fmt/core.h>
#include <fmt/ranges.h>

#include "launch/commands.hpp"
#include "launch/flags.hpp"
#include "launch/layout_choice.hpp"
#include "models/model_weights.hpp"
#include "partitioning/cost_model.hpp"
#include "partitioning/model_spec.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

void add_layouts_command(CLI::App& app) {
  struct Options {
    std::string model, mesh = "1,1,1", ffn = "2d", attn = "heads", phase = "decode", pp_layers;
    int64_t batch = 1, prompt_len = 128;
    int pp = 1;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("layouts", "print the partition specs of a layout on a mesh");
  cmd->add_option("--model", o->model,
                  "configs/models NAME, a YAML file, or a directory with config.json")
      ->required();
  cmd->add_option("--mesh", o->mesh, "tensor-parallel mesh X,Y,Z")->capture_default_str();
  cmd->add_option("--ffn-layout", o->ffn, "1d, 2d, wg-x, wg-xy or wg-xyz")->capture_default_str();
  cmd->add_option("--attn-layout", o->attn, "heads or batch")->capture_default_str();
  cmd->add_option("--phase", o->phase, "prefill or decode (sets L, the tokens per step)")
      ->check(CLI::IsMember({"prefill", "decode"}))
      ->capture_default_str();
  cmd->add_option("--batch", o->batch, "sequences (B)")->capture_default_str();
  cmd->add_option("--pp", o->pp, "pipeline stages")->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--pp-layers", o->pp_layers, "decoder layers per stage, e.g. 7,9");
  cmd->add_option("--prompt-len", o->prompt_len, "prompt tokens (L of prefill)")
      ->capture_default_str();
  cmd->callback([o] {
    Mesh mesh = parse_flag("--mesh", o->mesh, Mesh::parse);
    mesh.pp = o->pp;
    const FfnLayout ffn = parse_flag("--ffn-layout", o->ffn, parse_ffn_layout);
    const AttnLayout attn = parse_flag("--attn-layout", o->attn, parse_attn_layout);
    const ModelSpec model = ModelSpec::resolve(o->model);
    const Layout layout = make_layout(ffn, attn, layout_shape(model), mesh);
    const Phase phase = o->phase == "prefill" ? Phase::kPrefill : Phase::kDecode;
    const Workload workload{o->batch, o->prompt_len, 1};
    fmt::print("model {}: E={} F={} H={} K={} D={} V={}\n", model.name, model.config.hidden_size,
               model.config.intermediate_size, model.config.num_heads, model.config.num_kv_heads,
               model.config.head_dim, model.config.vocab_size);
    fmt::print("{}", format_layout(layout, phase_dims(model, workload, phase, o->batch), mesh));
    try {
      check_shardable(model.config, mesh, layout, layout);
    } catch (const UsageError& e) {
      fmt::print("warning: {}\n", e.what());
    }
    if (mesh.pp == 1) return;
    // What each pipeline stage holds: the same specs, on its layers only.
    if (mesh.pp > model.config.num_layers)
      throw UsageError(fmt::format("--pp {}: more pipeline stages than the model's {} layers",
                                   mesh.pp, model.config.num_layers));
    LayoutChoice choice;
    choice.prefill = choice.decode = {ffn, attn, "bf16", mesh};
    const StageSplit split = choose_stage_split(o->pp_layers, model.config, choice, workload);
    DimSizes dims = phase_dims(model, workload, phase, o->batch);
    const auto shape_of = [&](const PartitionSpec& spec) {
      return fmt::format("[{}]", fmt::join(spec.local_shape(dims, mesh), ", "));
    };
    fmt::print("\npipeline: {} stages of {} ranks (rank = x + X*(y + Y*(z + Z*stage)))\n", mesh.pp,
               mesh.tp_size());
    for (int s = 0; s < mesh.pp; ++s) {
      fmt::print("stage {}: layers {}-{} ({}), ranks {}-{}\n", s, split.first_layer(s),
                 split.end_layer(s) - 1, split.layers[size_t(s)], s * mesh.tp_size(),
                 (s + 1) * mesh.tp_size() - 1);
      for (const WeightLayout& w : layout.weights) {
        const bool edge_first = w.role == WeightRole::kEmbedding;
        const bool edge_last = w.role == WeightRole::kLmHead || w.role == WeightRole::kFinalNorm;
        if ((edge_first && s != 0) || (edge_last && s != mesh.pp - 1)) continue;
        fmt::print(
            "  {:<12} {:<14} per rank {}{}\n", name(w.role), w.stored.str(), shape_of(w.stored),
            edge_first || edge_last ? "" : fmt::format(" x {} layers", split.layers[size_t(s)]));
      }
      fmt::print("  {:<12} {:<14} per rank {} x 2 (K, V) x {} layers\n", "kv_cache",
                 layout.kv_cache.str(), shape_of(layout.kv_cache), split.layers[size_t(s)]);
    }
  });
}

}  // namespace shardlm
