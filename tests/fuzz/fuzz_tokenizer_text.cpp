// Encoding arbitrary text with the byte-level BPE tokenizer make-model writes
// (no normaliser, no stripping): text that is valid UTF-8 must decode back
// to itself, byte for byte; other bytes are refused naming the offset.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "models/demo_tokenizer.hpp"
#include "models/presets.hpp"
#include "models/tokenizer.hpp"
#include "tests/fuzz/fuzz_common.hpp"

namespace {
std::optional<shardlm::Tokenizer> g_tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace shardlm;
  // Written once, outside the fuzzing loop, then read like a model's.
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("shardlm-fuzz-tokenizer-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  write_demo_tokenizer(*find_preset("tiny"), dir);
  g_tokenizer.emplace(Tokenizer::load(dir));
  std::filesystem::remove_all(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const auto ids = g_tokenizer->encode(text, /*add_special_tokens=*/false);
    const std::string back = g_tokenizer->decode(ids);
    if (back != text) fuzz::broken("decode(encode(text)) != text");
  });
  return 0;
}
