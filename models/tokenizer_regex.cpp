#include "models/tokenizer_regex.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>

#include "runtime/errors.hpp"

namespace shardlm {
namespace {

// Oniguruma's \s (what Hugging Face's patterns were written for) is Unicode
// White_Space; PCRE2's \s under UCP lacks U+0085. Spell the class out so both
// engines split the same text the same way.
constexpr std::string_view kSpaceClass = "\\t-\\r\\x{85}\\p{Z}";

std::string rewrite_space_classes(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 's') {
        out += in_class ? std::string(kSpaceClass) : fmt::format("[{}]", kSpaceClass);
      } else if (next == 'S' && !in_class) {
        out += fmt::format("[^{}]", kSpaceClass);
      } else {
        out += c;
        out += next;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
    } else if (c == ']' && in_class) {
      in_class = false;
    }
    out += c;
  }
  return out;
}

}  // namespace

Regex::Regex(const std::string& pattern, const std::string& where) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  const std::string rewritten = rewrite_space_classes(pattern);
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                             PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw DataError(fmt::format("{}: regular expression \"{}\" does not compile: {}", where,
                                pattern, reinterpret_cast<const char*>(message)));
  }
  code_ = code;
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is absent
  match_data_ = pcre2_match_data_create_from_pattern(code, nullptr);
  // Long runs of one class (a page of spaces) recurse deeper than the
  // default 32 KiB JIT stack allows.
  jit_stack_ = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  context_ = pcre2_match_context_create(nullptr);
  pcre2_jit_stack_assign(static_cast<pcre2_match_context*>(context_), nullptr, jit_stack_);
}

Regex::Regex(Regex&& other) noexcept
    : code_(std::exchange(other.code_, nullptr)),
      match_data_(std::exchange(other.match_data_, nullptr)),
      context_(std::exchange(other.context_, nullptr)),
      jit_stack_(std::exchange(other.jit_stack_, nullptr)) {}

Regex::~Regex() {
  pcre2_match_data_free(static_cast<pcre2_match_data*>(match_data_));
  pcre2_match_context_free(static_cast<pcre2_match_context*>(context_));
  pcre2_jit_stack_free(static_cast<pcre2_jit_stack*>(jit_stack_));
  pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  auto* data = static_cast<pcre2_match_data*>(match_data_);
  auto* context = static_cast<pcre2_match_context*>(context_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    // The text was checked to be UTF-8 before it got here.
    const int rc =
        pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      throw DataError(fmt::format("tokenizer split pattern failed on the text: {}",
                                  reinterpret_cast<const char*>(message)));
    }
    const PCRE2_SIZE* v = pcre2_get_ovector_pointer(data);
    out.emplace_back(v[0], v[1]);
    if (v[1] > v[0]) {
      start = v[1];
    } else {
      // An empty match: step over one character so the search moves on.
      start = v[1] + 1;
      while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
        ++start;
    }
  }
}

}  // namespace shardlm
