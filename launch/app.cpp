// The `shardlm` command line as a whole, shared by main() and the fuzz target
// that parses command lines (tests/fuzz/fuzz_cli.cpp).
#include <fmt/format.h>

#include <string>
#include <string_view>

#include "launch/commands.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

void add_all_commands(CLI::App& app) {
  app.require_subcommand(1);
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  add_make_model_command(app);
  add_generate_command(app);
  add_plan_command(app);
  add_layouts_command(app);
  add_calibrate_command(app);
  add_bench_command(app);
  add_tokenize_commands(app);
  add_sweep_command(app);
  add_report_command(app);
  add_doctor_command(app);
}

void refuse_empty_values(const CLI::App& app, int argc, const char* const* argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--") && arg.ends_with("=") && arg.find('=') == arg.size() - 1)
      throw UsageError(fmt::format("{}: empty value", arg.substr(0, arg.size() - 1)));
    // Likewise "--flag ''", which would read as a flag not given (an empty
    // --dump-logits would silently write nothing).
    if (!arg.empty() || i < 3) continue;
    const std::string previous = argv[i - 1];
    const CLI::Option* option = nullptr;
    for (const CLI::App* command : app.get_subcommands({}))
      if (command->get_name() == argv[1]) option = command->get_option_no_throw(previous);
    if (option && option->get_items_expected_min() > 0)
      throw UsageError(fmt::format("{}: empty value", previous));
  }
}

}  // namespace shardlm
