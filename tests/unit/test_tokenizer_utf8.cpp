// UTF-8 handling under the tokenizer: the lossy conversion Hugging Face
// decoders apply, and the streaming decoder that holds back characters split
// over tokens.
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "models/tokenizer.hpp"
#include "models/utf8.hpp"

namespace shardlm {
namespace {

// Feeds `bytes` in pieces of the given sizes; returns what came out of each
// push and of finish().
std::vector<std::string> stream(const std::string& bytes, const std::vector<size_t>& sizes) {
  utf8::StreamDecoder decoder;
  std::vector<std::string> out;
  size_t at = 0;
  for (size_t n : sizes) {
    out.push_back(decoder.push(std::string_view(bytes).substr(at, n)));
    at += n;
  }
  out.push_back(decoder.finish());
  return out;
}

}  // namespace

TEST_CASE("utf8::lossy replaces each maximal invalid subpart with one U+FFFD") {
  const std::string r = "\xEF\xBF\xBD";
  CHECK(utf8::lossy("plain ascii") == "plain ascii");
  CHECK(utf8::lossy("caf\xC3\xA9") == "caf\xC3\xA9");
  CHECK(utf8::lossy("a\x80z") == "a" + r + "z");
  // A truncated 3-byte character is one subpart, then the next character.
  CHECK(utf8::lossy("\xE2\x82z") == r + "z");
  // Surrogates (ED A0..) and overlongs (C0, E0 80) are invalid byte by byte.
  CHECK(utf8::lossy("\xED\xA0\x80") == r + r + r);
  CHECK(utf8::lossy("\xC0\xAF") == r + r);
  CHECK(utf8::lossy("\xF4\x90\x80\x80") == r + r + r + r);  // above U+10FFFF
  // A truncated character at the very end is one U+FFFD.
  CHECK(utf8::lossy("ok\xF0\x9F\x98") == "ok" + r);
}

TEST_CASE("utf8::first_invalid finds the first bad byte past ASCII runs") {
  CHECK_FALSE(utf8::first_invalid("0123456789abcdef\xE6\x97\xA5"));
  CHECK(utf8::first_invalid("0123456789abcdef\xE6\x97") == 16u);
  CHECK(utf8::first_invalid("\xFF") == 0u);
  CHECK(utf8::first_invalid("abc\xC3(") == 3u);
}

TEST_CASE("StreamDecoder prints a split character once it is complete") {
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600, four bytes
  const auto out = stream("a" + emoji + "b", {1, 1, 1, 1, 1, 1});
  CHECK(out == std::vector<std::string>{"a", "", "", "", emoji, "b", ""});
}

TEST_CASE("StreamDecoder output equals lossy() of everything, however it is cut") {
  const std::string text =
      "h\xC3\xA9llo \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 "
      "bad:\x80\xE2\x82z\xED\xA0\x80 end\xF0\x9F";
  for (size_t step = 1; step <= 5; ++step) {
    std::vector<size_t> sizes;
    for (size_t at = 0; at < text.size(); at += step)
      sizes.push_back(std::min(step, text.size() - at));
    std::string all;
    for (const std::string& piece : stream(text, sizes)) {
      all += piece;
      CHECK_FALSE(utf8::first_invalid(piece));  // every piece is valid UTF-8 on its own
    }
    CHECK(all == utf8::lossy(text));
  }
}

TEST_CASE("utf8::incomplete_tail counts only bytes that can still become a character") {
  CHECK(utf8::incomplete_tail("abc") == 0);
  CHECK(utf8::incomplete_tail("a\xE6") == 1);
  CHECK(utf8::incomplete_tail("a\xE6\x97") == 2);
  CHECK(utf8::incomplete_tail("a\xF0\x9F\x98") == 3);
  CHECK(utf8::incomplete_tail("a\xE6\x97\xA5") == 0);
  CHECK(utf8::incomplete_tail("a\xED\xA0") == 0);  // a surrogate can never complete
}

constexpr int32_t kByte = 7;  // id of <0x00> in the test vocabulary below

TEST_CASE("TextStream over a byte-fallback tokenizer holds byte runs until they end") {
  // A SentencePiece-style vocabulary: ▁-words, and byte tokens for the rest.
  std::string vocab =
      R"("<unk>": 0, "\u2581": 1, "h": 2, "i": 3, "\u2581h": 4, "\u2581hi": 5, "!": 6)";
  for (int b = 0; b < 256; ++b) vocab += fmt::format(R"(, "<0x{:02X}>": {})", b, kByte + b);
  const Tokenizer tok = Tokenizer::from_json(
      R"({"model": {"type": "BPE", "unk_token": "<unk>", "byte_fallback": true, "vocab": {)" +
          vocab +
          R"(}, "merges": ["\u2581 h", "\u2581h i"]},
          "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
          "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}})",
      "inline");
  // ▁hi from two merges, ▁, then 日 (not in the vocabulary) as three bytes, !
  const std::vector<int32_t> ids = tok.encode("hi \xE6\x97\xA5!");
  CHECK(ids == std::vector<int32_t>{5, 1, kByte + 0xE6, kByte + 0x97, kByte + 0xA5, 6});
  TextStream stream(tok, false, false);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(stream.push(id));
  pieces.push_back(stream.finish());
  CHECK(pieces == std::vector<std::string>{"hi", " ", "", "", "", "\xE6\x97\xA5!", ""});
  // Bytes that never make a character become one U+FFFD each, as in Hugging Face.
  CHECK(tok.decode(std::vector<int32_t>{5, kByte + 0xE6, kByte + 0x97, 6}) ==
        "hi\xEF\xBF\xBD\xEF\xBF\xBD!");
  CHECK_THROWS_WITH(tok.decode(std::vector<int32_t>{5, 999}),
                    Catch::Contains("token id 999") && Catch::Contains("inline"));
  CHECK(tok.decode(std::vector<int32_t>{5, 999}, false, true) == "hi");
}

}  // namespace shardlm
