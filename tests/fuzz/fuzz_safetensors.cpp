// The safetensors reader: the 8-byte length, the JSON header, and every
// tensor's offsets checked against the data. A read that succeeds must leave
// records whose bytes lie inside the file (ASan checks the sum below).
#include <cstddef>
#include <cstdint>

#include "models/safetensors.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  fuzz::refused_cleanly_or_read([&] {
    const auto tensors = parse_safetensors(bytes, size, "fuzz.safetensors");
    for (const auto& [name, record] : tensors) {
      if (record.data < bytes || record.data + record.nbytes > bytes + size)
        fuzz::broken("tensor \"" + name + "\" points outside the file");
      unsigned sum = 0;
      for (size_t i = 0; i < record.nbytes; ++i) sum += unsigned(record.data[i]);
      fuzz::g_sink = double(sum);
    }
  });
  return 0;
}
