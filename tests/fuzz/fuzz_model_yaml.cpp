// The model spec reader (configs/models/*.yaml), and the counts the planner
// derives from an accepted spec.
#include <cstdint>
#include <string>

#include "partitioning/model_spec.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const ModelSpec spec = ModelSpec::from_yaml(YamlFields::parse(text, "model.yaml"));
    fuzz::g_sink = double(spec.num_params()) + double(spec.mfu_params()) +
                   double(spec.attention_kind().size());
  });
  return 0;
}
