#pragma once
// Each `shardlm` subcommand lives in its own launch/cmd_*.cpp and registers
// itself on the top-level CLI11 app through one of these functions.
#include <CLI/CLI.hpp>

namespace shardlm {

void add_make_model_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_layouts_command(CLI::App& app);
void add_calibrate_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_tokenize_commands(CLI::App& app);
void add_sweep_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_doctor_command(CLI::App& app);

// The whole command line of `shardlm`: one subcommand required, a flag given
// twice takes its last value, and every subcommand above.
void add_all_commands(CLI::App& app);
// CLI11 reads "--flag=" as a flag still waiting for its value and takes the
// next argument, and "--flag ''" as a flag not given; this refuses both first
// (UsageError naming the flag). `app` holds every command (add_all_commands).
void refuse_empty_values(const CLI::App& app, int argc, const char* const* argv);

}  // namespace shardlm
