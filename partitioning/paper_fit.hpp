#pragma once
// Published results (configs/paper/*.yaml) priced by the cost model, and the
// fit of the hardware's efficiency constants to them (docs/planner.md).
#include <string>
#include <vector>

#include "partitioning/cost_model.hpp"

namespace shardlm {

struct PublishedResult {
  std::string label, model;
  Phase phase;
  bool both_phases = false;  // the latency covers prefill and decode (FasterTransformer's tables)
  Workload workload;
  PhaseConfig config;
  double latency_s;
};

struct PublishedSet {
  std::string hardware;
  std::string config_root;  // the configs/ folder the file lives under
  std::vector<PublishedResult> results;
  ModelSpec model(const std::string& name) const;     // configs/models/NAME.yaml, else resolve()
  static PublishedSet load(const std::string& file);  // throws DataError
};

struct FidelityRow {
  PublishedResult published;
  double predicted_s;  // the phase, or prefill + decode
  double predicted_mfu;
  double roofline_s;  // the same configuration with a perfect efficiency model
  double error() const { return predicted_s / published.latency_s - 1; }
};

std::vector<FidelityRow> evaluate(const PublishedSet& set, const HardwareSpec& hw);
// The predicted latency of one published configuration.
double predict(const ModelSpec& m, const HardwareSpec& hw, const PublishedResult& p);
// Markdown table: published, predicted, error, roofline; then the RMS log error.
std::string format_fidelity(const std::vector<FidelityRow>& rows, const HardwareSpec& hw);

// Minimises the sum of squared log errors over the efficiency constants
// (Nelder-Mead from several starts); returns hw with the fitted constants.
HardwareSpec fit_efficiency(const PublishedSet& set, const HardwareSpec& hw);
std::string format_efficiency_yaml(const EfficiencyModel& e);

}  // namespace shardlm
