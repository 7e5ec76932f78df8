#pragma once
// Published results (configs/paper/*.yaml) priced by the cost model, the fit
// of the hardware's efficiency constants to them, leave-one-out
// cross-validation of that fit, and the planner's free choice against the
// best published configuration (docs/planner.md).
#include <optional>
#include <string>
#include <vector>

#include "partitioning/cost_model.hpp"

namespace shardlm {

struct PublishedResult {
  std::string label, model;
  std::string data_set;  // the file it came from, by stem
  Phase phase;
  bool both_phases = false;  // the latency covers prefill and decode
  Workload workload;
  PhaseConfig config;  // mesh.pp from the file's `pp`, micro_batches from `micro_batches`
  // Both phases, prefill laid out or micro-batched otherwise (`prefill_*`).
  std::optional<PhaseConfig> prefill_config;
  double latency_s;
};

struct PublishedSet {
  std::string hardware;
  std::string config_root;             // the configs/ folder the files live under
  std::vector<std::string> data_sets;  // file stems, in order
  std::vector<PublishedResult> results;
  ModelSpec model(const std::string& name) const;     // configs/models/NAME.yaml, else resolve()
  static PublishedSet load(const std::string& file);  // throws DataError
  // Several files of one hardware, as one set (throws DataError otherwise).
  static PublishedSet load(const std::vector<std::string>& files);
};

struct FidelityRow {
  PublishedResult published;
  double predicted_s;  // the phase, or prefill + decode
  double predicted_mfu;
  double roofline_s;  // the same configuration with a perfect efficiency model
  // Predicted by constants fitted to every other result of the set (NaN
  // until cross_validate fills it).
  double cross_validated_s = 0.0 / 0.0;
  double error() const { return predicted_s / published.latency_s - 1; }
  double cross_validated_error() const { return cross_validated_s / published.latency_s - 1; }
};

std::vector<FidelityRow> evaluate(const PublishedSet& set, const HardwareSpec& hw);
// The predicted latency of one published configuration.
double predict(const ModelSpec& m, const HardwareSpec& hw, const PublishedResult& p);
// Leave-one-out: for every row, refits the efficiency constants without it
// (starting from hw's) and predicts it.
void cross_validate(const PublishedSet& set, const HardwareSpec& hw,
                    std::vector<FidelityRow>& rows);
// Markdown tables per data set: published, predicted, error, cross-validated
// error, roofline; each followed by its RMS log and largest errors.
std::string format_fidelity(const std::vector<FidelityRow>& rows, const HardwareSpec& hw);

// Minimises the sum of squared log errors over the efficiency constants
// (Nelder-Mead from several starts); returns hw with the fitted constants.
HardwareSpec fit_efficiency(const PublishedSet& set, const HardwareSpec& hw);
std::string format_efficiency_yaml(const EfficiencyModel& e);

// The planner left free (mesh the hardware can form, layouts, pipeline
// depth; the published weight dtype) against the fastest published result
// for the same model, chips, workload and phase.
struct FreeChoiceRow {
  std::string what;         // model, chips, workload, phase
  std::string best_label;   // the fastest published result
  double best_published_s;  // its published latency
  double best_predicted_s;  // its configuration, predicted
  double free_s;            // the planner's own choice, predicted (0: nothing fits)
  std::string free_setup;   // what it chose
  // How much faster than the fastest published configuration the free
  // choice is predicted: published / free - 1 (> 0.2 fails the target).
  double speedup() const { return best_published_s / free_s - 1; }
};
std::vector<FreeChoiceRow> free_choices(const PublishedSet& set, const HardwareSpec& hw);
std::string format_free_choices(const std::vector<FreeChoiceRow>& rows);

}  // namespace shardlm
