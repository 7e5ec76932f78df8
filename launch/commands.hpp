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

}  // namespace shardlm
