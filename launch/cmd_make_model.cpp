// `shardlm make-model`: writes a deterministic random-weight checkpoint.
#include <fmt/format.h>

#include <chrono>

#include "launch/commands.hpp"
#include "models/demo_tokenizer.hpp"
#include "models/presets.hpp"
#include "models/random_checkpoint.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {

void add_make_model_command(CLI::App& app) {
  struct Options {
    std::string preset, out, dtype = "bf16";
    uint64_t seed = 0;
    int shards = 1;
  };
  auto options = std::make_shared<Options>();
  std::vector<std::string> names;
  std::string preset_help = "model shape:";
  for (const ModelPreset& p : model_presets()) {
    names.push_back(p.name);
    preset_help += fmt::format("\n  {:14} {} ({:.1f}M params)", p.name, p.description,
                               double(p.config.num_params()) / 1e6);
  }
  auto* cmd = app.add_subcommand("make-model", "write a random-weight Llama checkpoint");
  cmd->add_option("--preset", options->preset, preset_help)
      ->required()
      ->check(CLI::IsMember(names));
  cmd->add_option("--out", options->out,
                  "output directory (created if missing; an earlier model there is replaced)")
      ->required();
  cmd->add_option("--dtype", options->dtype, "weight dtype: f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "random seed")->capture_default_str();
  cmd->add_option("--shards", options->shards, "number of safetensors files")
      ->check(CLI::Range(1, 99999))
      ->capture_default_str();
  cmd->callback([options] {
    const ModelConfig config = *find_preset(options->preset);
    const auto start = std::chrono::steady_clock::now();
    // The model appears whole under --out, or not at all.
    OutputDirectory out(options->out, "--out", is_checkpoint_file);
    write_random_checkpoint(config, out.staging(),
                            {*dtype_from_user(options->dtype), options->seed, options->shards});
    // A tokenizer beside the weights, so the model takes `generate --prompt` text.
    write_demo_tokenizer(config, out.staging());
    out.commit();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(
        "wrote {} ({}, {:.1f}M params, {}, seed {}, {} file{}, tokenizer.json) in {:.1f} s\n",
        options->out, options->preset, double(config.num_params()) / 1e6, options->dtype,
        options->seed, options->shards, options->shards > 1 ? "s" : "", seconds);
  });
}

}  // namespace shardlm
