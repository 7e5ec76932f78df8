// The config.json loader, and what every command derives from a config it
// accepted: parameter counts, the context length, each layer's window. A
// config that loads must also survive its own round trip through to_json.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "models/model_config.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const ModelConfig config = ModelConfig::parse(text, "config.json");
    fuzz::g_sink = double(config.num_params()) + double(config.context_length()) +
                   double(config.q_dim()) + double(config.kv_dim());
    for (int64_t layer = 0; layer < config.num_layers && layer < 256; ++layer)
      fuzz::g_sink = double(config.attention_window(layer));
    const nlohmann::json written = config.to_json();
    const ModelConfig again = ModelConfig::from_json(written, "config.json (written back)");
    if (again.to_json() != written)
      fuzz::broken("to_json does not read back the same:\n" + written.dump() + "\n" +
                   again.to_json().dump());
  });
  return 0;
}
