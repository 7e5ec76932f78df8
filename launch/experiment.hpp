#pragma once
// A YAML experiment (docs/sweeps.md): the models, hardware spec, launcher and
// a grid of run settings; lists and ranges multiply, `exclude:` and `where:`
// rules drop combinations. Every error names the file, line and key.
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "partitioning/yaml_fields.hpp"

namespace shardlm {

struct Launcher {
  std::string mpirun = "mpirun";
  std::vector<std::string> args;  // after `-n N`, before the shardlm binary
  std::string hostfile;
  int ranks_per_node = 0;  // 0: the launcher's default placement
  std::map<std::string, std::string> env;
};

// One point of the grid: every setting resolved (chips from an explicit mesh),
// so `config` alone says what ran, and `hash` names it across --resume.
struct SweepPoint {
  nlohmann::json config;
  std::string hash;     // 16 hex digits, FNV-1a 64 of config.dump() (keys sorted)
  std::string label;    // the settings that vary across the grid, "chips=2 batch=4"
  std::string invalid;  // why the point cannot run as written; empty when it can
};

struct Experiment {
  std::string file, name, description, hardware = "cpu-local";
  Launcher launcher;
  // Repetitions are separate launches (load and start-up vary between them);
  // warm-up runs are untimed `generate --warmup` runs inside each launch.
  int repetitions = 1, warmup = 0;
  double timeout_s = 600;
  std::vector<SweepPoint> points;  // grid order, after exclude/where
  int dropped = 0;                 // combinations removed by exclude/where

  // Throws DataError naming file, line and key. `dry_run` joins each point's
  // config (and so its hash): predictions and measurements never mix on --resume.
  static Experiment load(const std::string& file, bool dry_run);
  static Experiment from_yaml(const YamlFields& top, bool dry_run);  // a parsed file
};

// FNV-1a 64-bit as 16 lower-case hex digits: stable across builds and
// machines, and a few lines to recompute in any language.
std::string fnv1a64_hex(const std::string& text);

}  // namespace shardlm
