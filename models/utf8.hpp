#pragma once
// UTF-8 helpers the tokenizer needs: validation, code point iteration, the
// lossy conversion Hugging Face decoders apply (Rust's String::from_utf8_lossy:
// one U+FFFD per maximal invalid subpart), and a streaming decoder that holds
// back a character split over tokens until its last byte arrives.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shardlm::utf8 {

// Decodes the character at the start of `s`. Returns its length in bytes
// (> 0) and sets `cp`; 0 if `s` ends inside a character that is valid so far
// (more bytes could complete it); -k if the first k bytes are invalid (the
// maximal subpart the Unicode standard replaces with one U+FFFD).
int decode(std::string_view s, uint32_t& cp);

// Byte offset of the first invalid or truncated sequence, if any.
std::optional<size_t> first_invalid(std::string_view s);

void append(std::string& out, uint32_t cp);

// Valid UTF-8 for any bytes: each maximal invalid subpart (and a truncated
// character at the end) becomes U+FFFD.
std::string lossy(std::string_view bytes);

// Number of bytes at the end of `s` that start a character not yet complete
// (0 to 3): the part a stream must hold back.
size_t incomplete_tail(std::string_view s);

// Unicode properties the tokenizer's rules use (Rust's char methods).
bool is_whitespace(uint32_t cp);  // White_Space
bool is_numeric(uint32_t cp);     // general category N*
bool is_word(uint32_t cp);        // regex \w: letters, marks, digits, connector punctuation

// Bytes in, text out: emits every complete character as soon as its last byte
// is pushed, invalid bytes as U+FFFD once they can no longer become valid, and
// the held-back tail at finish(). The concatenated output equals lossy() of
// all bytes pushed.
class StreamDecoder {
 public:
  std::string push(std::string_view bytes);
  std::string finish();

 private:
  std::string pending_;
};

}  // namespace shardlm::utf8
