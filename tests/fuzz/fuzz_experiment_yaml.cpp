// The experiment reader (configs/experiments/*.yaml): the grid, its ranges,
// exclude/where rules, and every point's hash and label.
#include <cstdint>
#include <string>

#include "launch/experiment.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const Experiment e = Experiment::from_yaml(YamlFields::parse(text, "experiment.yaml"), false);
    for (const SweepPoint& p : e.points)
      if (p.hash != fnv1a64_hex(p.config.dump()))
        fuzz::broken("a point's hash is not its config's");
  });
  return 0;
}
