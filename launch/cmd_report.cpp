// `shardlm report DIR`: report.md and figures (PNG and SVG) from
// DIR/results.jsonl alone, drawn by perf/sweep_report.py with matplotlib, so
// a report can be redrawn without running anything again.
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "launch/commands.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

namespace fs = std::filesystem;

// The script of this checkout: beside the binary's source tree
// (build/shardlm finds ../perf), else under the working directory.
fs::path report_script() {
  const fs::path rel = fs::path("perf") / "sweep_report.py";
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  for (fs::path dir = exe.parent_path(); !ec && !dir.empty() && dir != dir.root_path();
       dir = dir.parent_path())
    if (std::error_code missing; fs::is_regular_file(dir / rel, missing)) return dir / rel;
  if (std::error_code missing; fs::is_regular_file(rel, missing)) return rel;
  throw DataError(fmt::format("{}: not found beside {} or in the working directory", rel.string(),
                              exe.string()));
}

}  // namespace

void add_report_command(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "report", "write DIR/report.md and DIR/figures/ (PNG, SVG) from DIR/results.jsonl");
  cmd->add_option("dir", *dir, "a sweep's --out directory")->required();
  cmd->callback([dir] {
    if (!fs::is_regular_file(fs::path(*dir) / "results.jsonl"))
      throw DataError(
          fmt::format("{}: no results.jsonl (run `shardlm sweep EXP --out {}` first)", *dir, *dir));
    const std::string script = report_script().string();
    const char* python = std::getenv("PYTHON");
    const std::string interpreter = python && *python ? python : "python3";
    std::vector<char*> argv = {const_cast<char*>(interpreter.c_str()),
                               const_cast<char*>(script.c_str()), dir->data(), nullptr};
    execvp(argv[0], argv.data());
    throw DataError(fmt::format("cannot run {}: {}", interpreter, std::strerror(errno)));
  });
}

}  // namespace shardlm
