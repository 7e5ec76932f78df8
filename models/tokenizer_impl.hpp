#pragma once
// The parts of a Tokenizer, shared by the file that reads tokenizer.json
// (tokenizer.cpp) and the one that runs text through them
// (tokenizer_pipeline.cpp). Not for use outside the tokenizer.
#include <array>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/bpe.hpp"
#include "models/tokenizer.hpp"
#include "models/tokenizer_regex.hpp"
#include "models/utf8.hpp"

namespace shardlm {
namespace tokenizer_detail {

class Fields;  // tokenizer.cpp: reads a tokenizer.json object, errors name the field

// A Replace pattern or a Split pattern: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;

  // (start, end) of every match in `text`.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    if (regex) return regex->find_all(text, out);
    for (size_t at = text.find(literal); at != std::string_view::npos;
         at = text.find(literal, at + literal.size()))
      out.emplace_back(at, at + literal.size());
  }
};

enum class NormKind { kNfc, kNfd, kNfkc, kNfkd, kPrepend, kReplace };
struct NormStep {
  NormKind kind;
  std::string text;  // Prepend: what; Replace: the replacement
  std::optional<Pattern> pattern;
};

enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PreKind { kByteLevel, kSplit, kMetaspace, kDigits };
enum class Prepend { kAlways, kFirst, kNever };
struct PreStep {
  PreKind kind;
  bool add_prefix_space = false, use_regex = true;  // ByteLevel
  std::optional<Pattern> pattern;                   // Split; ByteLevel's GPT-2 regex
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  std::string replacement;  // Metaspace
  Prepend prepend = Prepend::kAlways;
  bool split = true;
  bool individual_digits = false;  // Digits
};

enum class DecKind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
struct DecStep {
  DecKind kind;
  std::string from, to;  // Replace (literal); Metaspace: from = replacement
  Prepend prepend = Prepend::kAlways;
  std::string strip;  // Strip: the character
  int64_t start = 0, stop = 0;
};

// A piece of text on its way through the pipeline; `mapped` once the
// byte-level pre-tokenizer has claimed it (its bytes stand for characters).
struct Piece {
  std::string_view text;
  bool at_start;
  bool mapped;
};

struct AddedToken {
  std::string content;  // as matched: normalized for normalized tokens
  int32_t id = 0;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = true;
};

// Leftmost-longest matching of added tokens, as Hugging Face's Aho-Corasick
// automaton with MatchKind::LeftmostLongest. Token lists are short (tens to
// hundreds), so candidates are found by their first byte.
class AddedMatcher {
 public:
  void add(const AddedToken& token) {
    if (token.content.empty()) return;
    auto& list = by_first_[static_cast<unsigned char>(token.content[0])];
    list.push_back(token);
    std::stable_sort(list.begin(), list.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
  }
  bool empty() const { return by_first_.empty(); }

  // Splits `text` into (token or -1, start, end), with the tokens' strip and
  // single-word rules.
  void split(std::string_view text, std::vector<std::tuple<int32_t, size_t, size_t>>& out) const {
    out.clear();
    size_t start_offset = 0, pos = 0;
    while (pos < text.size()) {
      const AddedToken* found = nullptr;
      size_t at = pos;
      for (; at < text.size() && !found; ++at) {
        const auto it = by_first_.find(static_cast<unsigned char>(text[at]));
        if (it == by_first_.end()) continue;
        for (const AddedToken& t : it->second)
          if (text.compare(at, t.content.size(), t.content) == 0) {
            found = &t;
            break;
          }
        if (found) break;
      }
      if (!found) break;
      size_t start = at, stop = at + found->content.size();
      pos = stop;
      if (found->single_word) {
        const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
        const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (found->lstrip)
        start = std::max(leftmost_space_at_end(text.substr(0, start)), start_offset);
      if (found->rstrip) stop += space_run_at_start(text.substr(stop));
      if (start_offset < start) out.emplace_back(-1, start_offset, start);
      out.emplace_back(found->id, start, stop);
      start_offset = stop;
    }
    if (start_offset < text.size()) out.emplace_back(-1, start_offset, text.size());
  }

 private:
  static uint32_t last_char(std::string_view s) {
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    uint32_t cp = 0;
    utf8::decode(s.substr(i), cp);
    return cp;
  }
  static bool ends_with_word(std::string_view s) {
    return !s.empty() && utf8::is_word(last_char(s));
  }
  static bool starts_with_word(std::string_view s) {
    uint32_t cp = 0;
    return !s.empty() && utf8::decode(s, cp) > 0 && utf8::is_word(cp);
  }
  static size_t leftmost_space_at_end(std::string_view s) {
    size_t end = s.size();
    while (end > 0) {
      size_t i = end - 1;
      while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
      uint32_t cp = 0;
      utf8::decode(s.substr(i), cp);
      if (!utf8::is_whitespace(cp)) break;
      end = i;
    }
    return end;
  }
  static size_t space_run_at_start(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
      uint32_t cp = 0;
      const int len = utf8::decode(s.substr(i), cp);
      if (len <= 0 || !utf8::is_whitespace(cp)) break;
      i += size_t(len);
    }
    return i;
  }

  std::unordered_map<unsigned char, std::vector<AddedToken>> by_first_;
};

}  // namespace tokenizer_detail

struct Tokenizer::Impl {
  using Fields = tokenizer_detail::Fields;
  using NormStep = tokenizer_detail::NormStep;
  using PreStep = tokenizer_detail::PreStep;
  using DecStep = tokenizer_detail::DecStep;
  using Piece = tokenizer_detail::Piece;
  using AddedMatcher = tokenizer_detail::AddedMatcher;
  std::string source;
  std::unique_ptr<Bpe> bpe;
  std::vector<NormStep> normalizers;
  std::vector<PreStep> pre_tokenizers;
  std::vector<DecStep> decoders;
  bool has_decoder = false;
  bool byte_fallback_decoder = false;
  int64_t strip_stop = 0;
  AddedMatcher raw_added, normalized_added;
  std::vector<std::string> id_to_token;
  std::vector<uint8_t> has_token, special;
  // Decoding reads a normalized added token in its normalized form, as
  // Hugging Face does, so the decoder can undo the normalisation.
  std::unordered_map<int32_t, std::string> decode_form;
  Vocab added_by_content;
  // The post-processor's single-sequence template: ids before and after.
  std::vector<int32_t> prefix_ids, suffix_ids;
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
  std::array<int16_t, 324> char_to_byte;  // the byte-level decoder's inverse mapping

  void parse(const nlohmann::json& root);
  void parse_normalizer(const Fields& f);
  void parse_pre_tokenizer(const Fields& f);
  void parse_decoder(const Fields& f);
  void parse_post_processor(const Fields& f);
  std::string normalize(std::string_view text) const;
  void pre_tokenize(std::deque<std::string>& arena, std::vector<Piece>& pieces) const;
  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  std::string decode_bytes(std::span<const int32_t> ids, bool skip_special,
                           bool drop_unknown) const;
  const std::string* token(int32_t id) const {
    return id >= 0 && size_t(id) < has_token.size() && has_token[size_t(id)]
               ? &id_to_token[size_t(id)]
               : nullptr;
  }
};

}  // namespace shardlm
