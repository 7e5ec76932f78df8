// The hardware spec reader (configs/hardware/*.yaml), and the derived values
// the planner asks of an accepted spec.
#include <cstdint>
#include <string>

#include "partitioning/hardware.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const HardwareSpec spec = HardwareSpec::from_yaml(YamlFields::parse(text, "hardware.yaml"));
    const Mesh mesh{1, 2, 2, 2};
    fuzz::g_sink =
        double(spec.peak(spec.activation_dtype) + spec.collective_bandwidth(mesh, "xyz") +
               spec.collective_latency(mesh, "y") + spec.send_seconds(mesh, 0, 7, 1e6));
    const std::string problem = spec.mesh_problem(mesh);
    fuzz::g_sink = double(problem.size());
  });
  return 0;
}
