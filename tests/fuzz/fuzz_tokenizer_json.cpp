// The tokenizer.json reader. A tokenizer that loads must encode a mixed text,
// decode every id it has (and some it has not), and stream each decoding to
// the same text as decode() gives whole.
#include <cstdint>
#include <string>
#include <vector>

#include "models/tokenizer.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::refused_cleanly_or_read([&] {
    const Tokenizer tokenizer = Tokenizer::from_json(text, "tokenizer.json");
    const std::vector<int32_t> ids =
        tokenizer.encode("Hello, world! 1234 \xe4\xbd\xa0\xe5\xa5\xbd caf\xc3\xa9 <s> \n\t  x");
    fuzz::g_sink = double(tokenizer.decode(ids).size());
    std::vector<int32_t> every;
    for (int32_t id = -2; id < tokenizer.vocab_size() + 2 && id < 4096; ++id) every.push_back(id);
    for (bool skip : {false, true}) {
      const std::string whole = tokenizer.decode(every, skip, /*drop_unknown=*/true);
      TextStream stream(tokenizer, skip, /*drop_unknown=*/true);
      std::string streamed;
      for (int32_t id : every) streamed += stream.push(id);
      streamed += stream.finish();
      if (streamed != whole) fuzz::broken("streamed decoding differs from decode()");
    }
  });
  return 0;
}
