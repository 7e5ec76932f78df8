// The model.safetensors.index.json reader: every shard it names must be a
// plain file name beside the index (never a path that leaves the directory).
#include <cstdint>
#include <string>

#include "models/safetensors.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    for (const auto& [name, shard] : parse_weight_map(text, "model.safetensors.index.json"))
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
        fuzz::broken("tensor \"" + name + "\" in shard \"" + shard + "\", not a plain file name");
  });
  return 0;
}
