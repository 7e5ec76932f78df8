#pragma once
// The regular expressions of tokenizer.json split patterns, compiled with
// PCRE2 (UTF, Unicode properties, JIT). Hugging Face compiles them with
// Oniguruma; the two agree on the constructs these patterns use (\p{L}, \p{N},
// classes, lookahead, (?i:...)) once \s is given Oniguruma's meaning, which
// Regex does (see its constructor).
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardlm {

class Regex {
 public:
  // `where` names the tokenizer.json field in the DataError a bad pattern raises.
  Regex(const std::string& pattern, const std::string& where);
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) = delete;
  Regex(const Regex&) = delete;
  ~Regex();

  // Appends the [start, end) byte ranges of the non-overlapping matches in
  // `text` (valid UTF-8), left to right.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;        // pcre2_code_8
  void* match_data_ = nullptr;  // reused by find_all: Regex is not thread-safe
  void* context_ = nullptr;     // pcre2_match_context_8 with a larger JIT stack
  void* jit_stack_ = nullptr;
};

}  // namespace shardlm
