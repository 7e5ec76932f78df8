#include "models/tokenizer.hpp"

#include <fmt/format.h>
#include <utf8proc.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/bpe.hpp"
#include "models/tokenizer_regex.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

using json = nlohmann::json;

// GPT-2's split pattern: the ByteLevel pre-tokenizer's with use_regex.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Reads fields of one JSON object; errors name the file and the field path.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string path)
      : j_(j), source_(std::move(source)), path_(std::move(path)) {}

  [[noreturn]] void fail(std::string_view field, std::string_view what) const {
    throw DataError(fmt::format("{}: {}: {}", source_, name(field), what));
  }
  std::string name(std::string_view field) const {
    return path_.empty() ? std::string(field) : fmt::format("{}.{}", path_, field);
  }
  const json* find(std::string_view field) const {
    if (!j_.is_object()) throw DataError(fmt::format("{}: {}: expected an object", source_, path_));
    const auto it = j_.find(field);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  const json& required(std::string_view field) const {
    const json* v = find(field);
    if (!v) fail(field, "missing");
    return *v;
  }
  std::string string(std::string_view field, std::optional<std::string> fallback = {}) const {
    const json* v = find(field);
    if (!v) {
      if (fallback) return *fallback;
      fail(field, "missing (expected a string)");
    }
    if (!v->is_string()) fail(field, fmt::format("expected a string, got {}", v->dump()));
    return v->get<std::string>();
  }
  std::optional<std::string> optional_string(std::string_view field) const {
    if (!find(field)) return std::nullopt;
    return string(field);
  }
  bool boolean(std::string_view field, bool fallback) const {
    const json* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, fmt::format("expected true or false, got {}", v->dump()));
    return v->get<bool>();
  }
  int64_t integer(std::string_view field, std::optional<int64_t> fallback = {}) const {
    const json* v = find(field);
    if (!v) {
      if (fallback) return *fallback;
      fail(field, "missing (expected an integer)");
    }
    if (!v->is_number_integer()) fail(field, fmt::format("expected an integer, got {}", v->dump()));
    return v->get<int64_t>();
  }
  Fields child(std::string_view field) const {
    return Fields(required(field), source_, name(field));
  }
  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  const json& value() const { return j_; }

 private:
  const json& j_;
  std::string source_, path_;
};

[[noreturn]] void unsupported(const Fields& f, std::string_view kind, std::string_view type,
                              std::string_view supported) {
  f.fail("type", fmt::format("{} \"{}\" is not supported (supported: {})", kind, type, supported));
}

// A Replace pattern or a Split pattern: {"String": s} or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::unique_ptr<Regex> regex;

  static Pattern parse(const Fields& f) {
    Pattern p;
    const Fields pattern = f.child("pattern");
    if (const json* s = pattern.find("String"); s && s->is_string()) {
      p.literal = s->get<std::string>();
      if (p.literal.empty()) f.fail("pattern.String", "empty");
    } else if (const json* r = pattern.find("Regex"); r && r->is_string()) {
      p.regex = std::make_unique<Regex>(r->get<std::string>(),
                                        f.source() + ": " + f.name("pattern.Regex"));
    } else {
      f.fail("pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
    }
    return p;
  }

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

Behavior parse_behavior(const Fields& f) {
  const std::string b = f.string("behavior");
  if (b == "Removed") return Behavior::kRemoved;
  if (b == "Isolated") return Behavior::kIsolated;
  if (b == "MergedWithPrevious") return Behavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::kMergedWithNext;
  if (b == "Contiguous") return Behavior::kContiguous;
  f.fail("behavior", fmt::format("\"{}\" is not a split behaviour (Removed, Isolated, "
                                 "MergedWithPrevious, MergedWithNext, Contiguous)",
                                 b));
}

Prepend parse_prepend(const Fields& f) {
  if (const auto scheme = f.optional_string("prepend_scheme")) {
    if (*scheme == "always") return Prepend::kAlways;
    if (*scheme == "first") return Prepend::kFirst;
    if (*scheme == "never") return Prepend::kNever;
    f.fail("prepend_scheme", fmt::format("\"{}\" is not always, first or never", *scheme));
  }
  return f.boolean("add_prefix_space", true) ? Prepend::kAlways : Prepend::kNever;
}

std::string single_char(const Fields& f, std::string_view field) {
  const std::string s = f.string(field);
  uint32_t cp;
  if (s.empty() || utf8::decode(s, cp) != int(s.size()))
    f.fail(field, fmt::format("expected one character, got \"{}\"", s));
  return s;
}

// Turns a covering list of (segment, is_delimiter) into pieces, as Hugging
// Face's NormalizedString::split does for each behaviour.
void apply_behavior(const std::vector<std::tuple<size_t, size_t, bool>>& segments,
                    Behavior behavior, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const auto& [s, e, m] : segments)
        if (!m) out.emplace_back(s, e);
      break;
    case Behavior::kIsolated:
      for (const auto& [s, e, m] : segments) out.emplace_back(s, e);
      break;
    case Behavior::kMergedWithPrevious:
      for (const auto& [s, e, m] : segments) {
        if (m && !previous_match && !out.empty())
          out.back().second = e;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        const auto& [s, e, m] = *it;
        if (m && !previous_match && !out.empty())
          out.back().first = s;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      std::reverse(out.begin(), out.end());
      break;
    case Behavior::kContiguous:
      for (const auto& [s, e, m] : segments) {
        if (m == previous_match && !out.empty())
          out.back().second = e;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      break;
  }
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(fmt::format("{}: cannot open", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw DataError(fmt::format("{}: read failed", path.string()));
  return text.str();
}

std::optional<json> read_optional_json(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

// "bos_token": "<s>" or {"content": "<s>", ...}.
std::optional<std::string> token_name(const json& config, const char* key) {
  if (!config.is_object()) return std::nullopt;
  const auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

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

struct Tokenizer::Impl {
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

  void parse(const json& root);
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

void Tokenizer::Impl::parse_normalizer(const Fields& f) {
  const std::string type = f.string("type");
  if (type == "Sequence") {
    const json& list = f.required("normalizers");
    if (!list.is_array()) f.fail("normalizers", "expected a list");
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(Fields(list[i], f.source(), f.name(fmt::format("normalizers[{}]", i))));
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    const NormKind kind = type == "NFC"    ? NormKind::kNfc
                          : type == "NFD"  ? NormKind::kNfd
                          : type == "NFKC" ? NormKind::kNfkc
                                           : NormKind::kNfkd;
    normalizers.push_back({kind, "", std::nullopt});
  } else if (type == "Prepend") {
    normalizers.push_back({NormKind::kPrepend, f.string("prepend"), std::nullopt});
  } else if (type == "Replace") {
    normalizers.push_back({NormKind::kReplace, f.string("content"), Pattern::parse(f)});
  } else {
    unsupported(f, "normalizer", type, "Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace");
  }
}

void Tokenizer::Impl::parse_pre_tokenizer(const Fields& f) {
  const std::string type = f.string("type");
  if (!pre_tokenizers.empty() && pre_tokenizers.back().kind == PreKind::kByteLevel)
    f.fail("type", fmt::format("pre-tokenizer \"{}\" after ByteLevel is not supported (ByteLevel "
                               "must come last)",
                               type));
  PreStep step{};
  if (type == "Sequence") {
    const json& list = f.required("pretokenizers");
    if (!list.is_array()) f.fail("pretokenizers", "expected a list");
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre_tokenizer(Fields(list[i], f.source(), f.name(fmt::format("pretokenizers[{}]", i))));
    return;
  } else if (type == "ByteLevel") {
    step.kind = PreKind::kByteLevel;
    step.add_prefix_space = f.boolean("add_prefix_space", true);
    step.use_regex = f.boolean("use_regex", true);
    if (step.use_regex) {
      step.pattern.emplace();
      step.pattern->regex = std::make_unique<Regex>(kGpt2Pattern, "ByteLevel");
    }
  } else if (type == "Split") {
    step.kind = PreKind::kSplit;
    step.pattern = Pattern::parse(f);
    step.behavior = parse_behavior(f);
    step.invert = f.boolean("invert", false);
  } else if (type == "Metaspace") {
    step.kind = PreKind::kMetaspace;
    step.replacement = single_char(f, "replacement");
    step.prepend = parse_prepend(f);
    step.split = f.boolean("split", true);
  } else if (type == "Digits") {
    step.kind = PreKind::kDigits;
    step.individual_digits = f.boolean("individual_digits", false);
  } else {
    unsupported(f, "pre-tokenizer", type, "Sequence, ByteLevel, Split, Metaspace, Digits");
  }
  pre_tokenizers.push_back(std::move(step));
}

void Tokenizer::Impl::parse_decoder(const Fields& f) {
  const std::string type = f.string("type");
  if (type == "Sequence") {
    const json& list = f.required("decoders");
    if (!list.is_array()) f.fail("decoders", "expected a list");
    for (size_t i = 0; i < list.size(); ++i)
      parse_decoder(Fields(list[i], f.source(), f.name(fmt::format("decoders[{}]", i))));
    return;
  }
  DecStep step{};
  if (type == "ByteLevel") {
    step.kind = DecKind::kByteLevel;
  } else if (type == "Metaspace") {
    step.kind = DecKind::kMetaspace;
    step.from = single_char(f, "replacement");
    step.prepend = parse_prepend(f);
  } else if (type == "Replace") {
    step.kind = DecKind::kReplace;
    Pattern p = Pattern::parse(f);
    if (p.regex) f.fail("pattern", "a regular expression in a Replace decoder is not supported");
    step.from = p.literal;
    step.to = f.string("content");
  } else if (type == "ByteFallback") {
    step.kind = DecKind::kByteFallback;
    byte_fallback_decoder = true;
  } else if (type == "Fuse") {
    step.kind = DecKind::kFuse;
  } else if (type == "Strip") {
    step.kind = DecKind::kStrip;
    step.strip = single_char(f, "content");
    step.start = f.integer("start");
    step.stop = f.integer("stop");
    if (step.start < 0 || step.stop < 0) f.fail("start", "start and stop must be >= 0");
    strip_stop = std::max(strip_stop, step.stop);
  } else {
    unsupported(f, "decoder", type,
                "Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip");
  }
  decoders.push_back(std::move(step));
}

void Tokenizer::Impl::parse_post_processor(const Fields& f) {
  const std::string type = f.string("type");
  auto special_id = [&](const json& pair, std::string_view field) {
    // ["<s>", 1] in Bert/Roberta processors.
    if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer())
      f.fail(field, "expected [token, id]");
    return pair[1].get<int32_t>();
  };
  if (type == "Sequence") {
    const json& list = f.required("processors");
    if (!list.is_array()) f.fail("processors", "expected a list");
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(Fields(list[i], f.source(), f.name(fmt::format("processors[{}]", i))));
  } else if (type == "ByteLevel") {
    // Adjusts offsets only; ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& single = f.required("single");
    if (!single.is_array()) f.fail("single", "expected a list");
    const Fields specials = f.child("special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const Fields item(single[i], f.source(), f.name(fmt::format("single[{}]", i)));
      if (item.find("Sequence")) {
        seen_sequence = true;
      } else if (const json* sp = item.find("SpecialToken")) {
        const Fields token(*sp, f.source(), item.name("SpecialToken"));
        const std::string name = token.string("id");
        const Fields entry = specials.child(name);
        const json& ids = entry.required("ids");
        if (!ids.is_array()) entry.fail("ids", "expected a list of ids");
        for (const json& id : ids) {
          if (!id.is_number_integer()) entry.fail("ids", "expected integers");
          (seen_sequence ? suffix_ids : prefix_ids).push_back(id.get<int32_t>());
        }
      } else {
        item.fail("", "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    prefix_ids.push_back(special_id(f.required("cls"), "cls"));
    suffix_ids.push_back(special_id(f.required("sep"), "sep"));
  } else {
    unsupported(f, "post-processor", type,
                "Sequence, ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing");
  }
}

void Tokenizer::Impl::parse(const json& root) {
  const Fields top(root, source, "");
  if (!root.is_object()) throw DataError(fmt::format("{}: expected a JSON object", source));
  for (const char* field : {"truncation", "padding"})
    if (top.find(field)) top.fail(field, "must be null: shardlm does not truncate or pad prompts");

  // The model.
  const Fields model = top.child("model");
  const std::string type = model.string("type", std::string("BPE"));
  if (type != "BPE") unsupported(model, "model type", type, "BPE");
  if (const json* dropout = model.find("dropout");
      dropout && !(dropout->is_number() && dropout->get<double>() == 0.0))
    model.fail("dropout", "must be null or 0: BPE dropout is for training");
  const json& vocab_json = model.required("vocab");
  if (!vocab_json.is_object()) model.fail("vocab", "expected an object of token: id");
  Vocab vocab;
  vocab.reserve(vocab_json.size());
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      model.fail("vocab",
                 fmt::format("token \"{}\" has id {}, expected an integer >= 0", token, id.dump()));
    vocab.emplace(token, id.get<int32_t>());
    max_id = std::max(max_id, id.get<int32_t>());
  }
  const json& merges_json = model.required("merges");
  if (!merges_json.is_array()) model.fail("merges", "expected a list");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    // "a b" in older files, ["a", "b"] in newer ones.
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        model.fail(fmt::format("merges[{}]", i), fmt::format("\"{}\" is not two tokens", s));
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      model.fail(fmt::format("merges[{}]", i), "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
  BpeOptions options;
  options.unk_token = model.optional_string("unk_token");
  options.continuing_subword_prefix = model.optional_string("continuing_subword_prefix");
  options.end_of_word_suffix = model.optional_string("end_of_word_suffix");
  options.fuse_unk = model.boolean("fuse_unk", false);
  options.byte_fallback = model.boolean("byte_fallback", false);
  options.ignore_merges = model.boolean("ignore_merges", false);

  // Pipeline stages; null means none.
  if (top.find("normalizer")) parse_normalizer(top.child("normalizer"));
  if (top.find("pre_tokenizer")) parse_pre_tokenizer(top.child("pre_tokenizer"));
  if (top.find("decoder")) {
    has_decoder = true;
    parse_decoder(top.child("decoder"));
  }
  if (top.find("post_processor")) parse_post_processor(top.child("post_processor"));

  // Added tokens: matched in the raw text, or (normalized ones) in the
  // normalized text with their content normalized alike.
  std::vector<AddedToken> added;
  if (const json* list = top.find("added_tokens")) {
    if (!list->is_array()) top.fail("added_tokens", "expected a list");
    for (size_t i = 0; i < list->size(); ++i) {
      const Fields t((*list)[i], source, fmt::format("added_tokens[{}]", i));
      AddedToken a;
      const int64_t id = t.integer("id");
      if (id < 0 || id > INT32_MAX) t.fail("id", fmt::format("{} is not a valid id", id));
      a.id = int32_t(id);
      a.content = t.string("content");
      if (a.content.empty()) t.fail("content", "empty");
      a.special = t.boolean("special", false);
      a.lstrip = t.boolean("lstrip", false);
      a.rstrip = t.boolean("rstrip", false);
      a.single_word = t.boolean("single_word", false);
      a.normalized = t.boolean("normalized", !a.special);
      added.push_back(a);
      max_id = std::max(max_id, a.id);
    }
  }
  id_to_token.assign(size_t(max_id + 1), {});
  has_token.assign(size_t(max_id + 1), 0);
  special.assign(size_t(max_id + 1), 0);
  for (const auto& [token, id] : vocab) {
    id_to_token[size_t(id)] = token;
    has_token[size_t(id)] = 1;
  }
  for (const AddedToken& a : added) {
    id_to_token[size_t(a.id)] = a.content;
    has_token[size_t(a.id)] = 1;
    special[size_t(a.id)] = a.special;
    added_by_content[a.content] = a.id;
    if (a.normalized) {
      AddedToken n = a;
      n.content = normalize(a.content);
      if (n.content != a.content) decode_form[a.id] = n.content;
      normalized_added.add(n);
    } else {
      raw_added.add(a);
    }
  }
  for (const std::vector<int32_t>* ids : {&prefix_ids, &suffix_ids})
    for (int32_t id : *ids)
      if (!token(id))
        top.fail("post_processor", fmt::format("special token id {} has no token", id));
  bpe = std::make_unique<Bpe>(std::move(vocab), merges, std::move(options), source + ": model");

  char_to_byte.fill(-1);
  for (int b = 0; b < 256; ++b) char_to_byte[byte_to_unicode(uint8_t(b))] = int16_t(b);
}

std::string Tokenizer::Impl::normalize(std::string_view text) const {
  std::string s(text);
  for (const NormStep& step : normalizers) {
    switch (step.kind) {
      case NormKind::kNfc:
      case NormKind::kNfd:
      case NormKind::kNfkc:
      case NormKind::kNfkd: {
        // Text below U+0300 (ASCII, Latin-1, Latin Extended) is already in
        // NFC; skip the library call for it.
        if (step.kind == NormKind::kNfc &&
            std::none_of(s.begin(), s.end(), [](char c) { return (unsigned char)(c) >= 0xCC; }))
          break;
        int options = UTF8PROC_STABLE;
        if (step.kind == NormKind::kNfc || step.kind == NormKind::kNfkc)
          options |= UTF8PROC_COMPOSE;
        else
          options |= UTF8PROC_DECOMPOSE;
        if (step.kind == NormKind::kNfkc || step.kind == NormKind::kNfkd)
          options |= UTF8PROC_COMPAT;
        utf8proc_uint8_t* out = nullptr;
        const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(options));
        if (n < 0)
          throw DataError(fmt::format("{}: normalizer failed: {}", source, utf8proc_errmsg(n)));
        s.assign(reinterpret_cast<const char*>(out), size_t(n));
        free(out);
        break;
      }
      case NormKind::kPrepend:
        if (!s.empty()) s.insert(0, step.text);
        break;
      case NormKind::kReplace: {
        std::vector<std::pair<size_t, size_t>> matches;
        step.pattern->find_all(s, matches);
        if (matches.empty()) break;
        std::string out;
        size_t last = 0;
        for (const auto& [b, e] : matches) {
          out.append(s, last, b - last);
          out += step.text;
          last = e;
        }
        out.append(s, last);
        s = std::move(out);
        break;
      }
    }
  }
  return s;
}

void Tokenizer::Impl::pre_tokenize(std::deque<std::string>& arena,
                                   std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> matches, parts;
  std::vector<std::tuple<size_t, size_t, bool>> segments;
  // Splits every piece at the delimiters `find` reports, with `behavior`.
  auto split_all = [&](auto&& find, Behavior behavior, bool invert, bool map) {
    next.clear();
    for (const Piece& p : pieces) {
      matches.clear();
      find(p.text, matches);
      segments.clear();
      size_t prev = 0;
      for (const auto& [s, e] : matches) {
        if (prev != s) segments.emplace_back(prev, s, invert);
        segments.emplace_back(s, e, !invert);
        prev = e;
      }
      if (prev != p.text.size()) segments.emplace_back(prev, p.text.size(), invert);
      apply_behavior(segments, behavior, parts);
      for (const auto& [s, e] : parts)
        if (e > s) next.push_back({p.text.substr(s, e - s), p.at_start && s == 0, p.mapped || map});
    }
    pieces.swap(next);
  };
  auto each_char = [](auto&& predicate) {
    return [predicate](std::string_view text, std::vector<std::pair<size_t, size_t>>& out) {
      size_t i = 0;
      while (i < text.size()) {
        uint32_t cp;
        const int len = std::max(1, utf8::decode(text.substr(i), cp));
        if (predicate(cp)) out.emplace_back(i, i + size_t(len));
        i += size_t(len);
      }
    };
  };
  for (const PreStep& step : pre_tokenizers) {
    switch (step.kind) {
      case PreKind::kByteLevel: {
        if (step.add_prefix_space)
          for (Piece& p : pieces)
            if (!p.text.starts_with(' ')) p.text = arena.emplace_back(" " + std::string(p.text));
        if (step.use_regex) {
          split_all([&](std::string_view t, auto& out) { step.pattern->find_all(t, out); },
                    Behavior::kIsolated, false, true);
        } else {
          for (Piece& p : pieces) p.mapped = true;
        }
        break;
      }
      case PreKind::kSplit:
        split_all([&](std::string_view t, auto& out) { step.pattern->find_all(t, out); },
                  step.behavior, step.invert, false);
        break;
      case PreKind::kMetaspace: {
        for (Piece& p : pieces) {
          std::string s;
          s.reserve(p.text.size() + 3);
          for (char c : p.text) {
            if (c == ' ')
              s += step.replacement;
            else
              s += c;
          }
          const bool prepend =
              step.prepend == Prepend::kAlways || (step.prepend == Prepend::kFirst && p.at_start);
          if (prepend && !s.empty() && !s.starts_with(step.replacement))
            s.insert(0, step.replacement);
          p.text = arena.emplace_back(std::move(s));
        }
        if (step.split)
          split_all(
              [&](std::string_view t, auto& out) {
                for (size_t at = t.find(step.replacement); at != std::string_view::npos;
                     at = t.find(step.replacement, at + step.replacement.size()))
                  out.emplace_back(at, at + step.replacement.size());
              },
              Behavior::kMergedWithNext, false, false);
        break;
      }
      case PreKind::kDigits:
        split_all(each_char([](uint32_t cp) { return utf8::is_numeric(cp); }),
                  step.individual_digits ? Behavior::kIsolated : Behavior::kContiguous, false,
                  false);
        break;
    }
  }
}

std::vector<int32_t> Tokenizer::Impl::encode(std::string_view text, bool add_special) const {
  if (const auto bad = utf8::first_invalid(text))
    throw DataError(fmt::format("the text is not valid UTF-8 (byte {})", *bad));
  std::vector<int32_t> ids;
  if (add_special) ids = prefix_ids;
  std::vector<std::tuple<int32_t, size_t, size_t>> raw_parts, norm_parts;
  std::deque<std::string> arena;
  std::vector<Piece> pieces;
  raw_added.split(text, raw_parts);
  for (const auto& [id, start, end] : raw_parts) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    const std::string_view raw = text.substr(start, end - start);
    std::string_view normalized = raw;
    if (!normalizers.empty()) normalized = arena.emplace_back(normalize(raw));
    normalized_added.split(normalized, norm_parts);
    for (const auto& [nid, nstart, nend] : norm_parts) {
      if (nid >= 0) {
        ids.push_back(nid);
        continue;
      }
      pieces.clear();
      pieces.push_back(
          {normalized.substr(nstart, nend - nstart), start == 0 && nstart == 0, false});
      pre_tokenize(arena, pieces);
      for (const Piece& p : pieces) bpe->tokenize(p.text, p.mapped, ids);
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_ids.begin(), suffix_ids.end());
  return ids;
}

std::string Tokenizer::Impl::decode_bytes(std::span<const int32_t> ids, bool skip_special,
                                          bool drop_unknown) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* t = token(ids[i]);
    if (!t) {
      if (drop_unknown) continue;
      throw DataError(
          fmt::format("token id {} (position {}) is not in the vocabulary of {} "
                      "(ids 0 to {})",
                      ids[i], i, source, int64_t(has_token.size()) - 1));
    }
    if (skip_special && special[size_t(ids[i])]) continue;
    const auto form = decode_form.find(ids[i]);
    tokens.push_back(form == decode_form.end() ? *t : form->second);
  }
  if (!has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  for (const DecStep& step : decoders) {
    switch (step.kind) {
      case DecKind::kByteLevel: {
        // Each token's characters back to bytes; a token with a character
        // outside the mapping (an added token) passes through as it is.
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool all = true;
          for (size_t i = 0; i < t.size() && all;) {
            uint32_t cp;
            const int len = utf8::decode(std::string_view(t).substr(i), cp);
            if (len <= 0 || cp >= char_to_byte.size() || char_to_byte[cp] < 0) {
              all = false;
            } else {
              mapped += char(char_to_byte[cp]);
              i += size_t(len);
            }
          }
          bytes += all ? mapped : t;
        }
        tokens.assign(1, std::move(bytes));
        break;
      }
      case DecKind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          const std::string& t = tokens[i];
          for (size_t at = 0; at < t.size();) {
            if (t.compare(at, step.from.size(), step.from) == 0) {
              if (!(i == 0 && step.prepend != Prepend::kNever)) out += ' ';
              at += step.from.size();
            } else {
              out += t[at++];
            }
          }
          tokens[i] = std::move(out);
        }
        break;
      case DecKind::kReplace:
        for (std::string& t : tokens) {
          std::string out;
          for (size_t at = 0; at < t.size();) {
            if (t.compare(at, step.from.size(), step.from) == 0) {
              out += step.to;
              at += step.from.size();
            } else {
              out += t[at++];
            }
          }
          t = std::move(out);
        }
        break;
      case DecKind::kByteFallback: {
        // Runs of <0xXX> tokens become their bytes when those are UTF-8, or
        // one U+FFFD per byte when not (Hugging Face's rule).
        std::vector<std::string> out;
        std::string run;
        size_t run_tokens = 0;
        auto flush = [&] {
          if (run_tokens == 0) return;
          if (utf8::first_invalid(run)) {
            std::string replacement;
            for (size_t k = 0; k < run_tokens; ++k) replacement += "\xEF\xBF\xBD";
            out.push_back(std::move(replacement));
          } else {
            out.push_back(run);
          }
          run.clear();
          run_tokens = 0;
        };
        for (std::string& t : tokens) {
          if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>' &&
              std::isxdigit(static_cast<unsigned char>(t[3])) &&
              std::isxdigit(static_cast<unsigned char>(t[4]))) {
            run += char(std::stoi(t.substr(3, 2), nullptr, 16));
            ++run_tokens;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case DecKind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecKind::kStrip:
        for (std::string& t : tokens) {
          size_t begin = 0, end = t.size();
          for (int64_t k = 0;
               k < step.start && t.compare(begin, step.strip.size(), step.strip) == 0; ++k)
            begin += step.strip.size();
          for (int64_t k = 0;
               k < step.stop && end >= begin + step.strip.size() &&
               t.compare(end - step.strip.size(), step.strip.size(), step.strip) == 0;
               ++k)
            end -= step.strip.size();
          t = t.substr(begin, end - begin);
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& source) {
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  try {
    impl->parse(root);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: unexpected structure: {}", source, e.what()));
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::load(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "tokenizer.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw DataError(
        fmt::format("{}: cannot open (a Hugging Face tokenizer.json is needed for text "
                    "prompts; --prompt-ids takes token ids without one)",
                    path.string()));
  Tokenizer t = from_json(read_file(path), path.string());
  Impl& impl = *t.impl_;

  // Names of BOS and EOS: tokenizer_config.json, then special_tokens_map.json;
  // ids from config.json and generation_config.json as well.
  const auto tokenizer_config = read_optional_json(dir / "tokenizer_config.json");
  const auto special_map = read_optional_json(dir / "special_tokens_map.json");
  const auto config = read_optional_json(dir / "config.json");
  const auto generation_config = read_optional_json(dir / "generation_config.json");
  auto named = [&](const char* key) -> std::optional<int32_t> {
    for (const auto* file : {&tokenizer_config, &special_map}) {
      if (!*file) continue;
      if (const auto name = token_name(**file, key)) {
        const auto id = t.token_to_id(*name);
        if (!id)
          throw DataError(fmt::format(
              "{}: {}: \"{}\" is not a token of {}",
              (dir /
               (file == &tokenizer_config ? "tokenizer_config.json" : "special_tokens_map.json"))
                  .string(),
              key, *name, path.string()));
        return id;
      }
    }
    return std::nullopt;
  };
  auto ids_of = [](const std::optional<json>& j, const char* key) {
    std::vector<int32_t> ids;
    if (!j || !j->is_object() || !j->contains(key)) return ids;
    const json& v = (*j)[key];
    if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
    if (v.is_array())
      for (const json& x : v)
        if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
    return ids;
  };
  impl.bos = named("bos_token");
  if (!impl.bos) {
    const auto ids = ids_of(config, "bos_token_id");
    if (!ids.empty()) impl.bos = ids[0];
  }
  std::set<int32_t> eos;
  if (const auto id = named("eos_token")) eos.insert(*id);
  for (int32_t id : ids_of(config, "eos_token_id")) eos.insert(id);
  for (int32_t id : ids_of(generation_config, "eos_token_id")) eos.insert(id);
  impl.eos.assign(eos.begin(), eos.end());

  // Without a post-processor, tokenizer_config.json's add_bos_token and
  // add_eos_token say what encode adds (the post-processor wins otherwise,
  // as in Hugging Face's fast tokenizers, which keep the two in step).
  if (tokenizer_config && impl.prefix_ids.empty() && impl.suffix_ids.empty()) {
    const json& c = *tokenizer_config;
    if (c.value("add_bos_token", false) && impl.bos) impl.prefix_ids.push_back(*impl.bos);
    if (c.value("add_eos_token", false) && !eos.empty())
      if (const auto id = named("eos_token")) impl.suffix_ids.push_back(*id);
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens,
                              bool drop_unknown) const {
  return utf8::lossy(impl_->decode_bytes(ids, skip_special_tokens, drop_unknown));
}

int32_t Tokenizer::vocab_size() const {
  return int32_t(impl_->has_token.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = impl_->added_by_content.find(token); it != impl_->added_by_content.end())
    return it->second;
  if (const auto it = impl_->bpe->vocab().find(token); it != impl_->bpe->vocab().end())
    return it->second;
  return std::nullopt;
}

const std::string* Tokenizer::id_to_token(int32_t id) const {
  return impl_->token(id);
}

bool Tokenizer::is_special(int32_t id) const {
  return impl_->token(id) && impl_->special[size_t(id)];
}

std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_->bos;
}
const std::vector<int32_t>& Tokenizer::eos_ids() const {
  return impl_->eos;
}
const std::string& Tokenizer::source() const {
  return impl_->source;
}

TextStream::TextStream(const Tokenizer& tokenizer, bool skip_special_tokens, bool drop_unknown)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens), drop_unknown_(drop_unknown) {}

std::string TextStream::push(int32_t id) {
  const Tokenizer::Impl& impl = *tokenizer_.impl_;
  ids_.push_back(id);
  // A trailing run of byte-fallback tokens can still turn into U+FFFDs, and
  // trailing characters a Strip decoder removes can still be kept: neither
  // is final yet.
  size_t settled = ids_.size();
  if (impl.byte_fallback_decoder)
    while (settled > 0) {
      const std::string* t = impl.token(ids_[settled - 1]);
      if (!t || !(t->size() == 6 && t->starts_with("<0x") && t->back() == '>')) break;
      --settled;
    }
  std::string bytes =
      impl.decode_bytes(std::span(ids_).first(settled), skip_special_, drop_unknown_);
  size_t safe = bytes.size();
  for (int64_t k = 0; k < impl.strip_stop && safe > 0; ++k) {
    --safe;
    while (safe > 0 && (static_cast<unsigned char>(bytes[safe]) & 0xC0) == 0x80) --safe;
  }
  safe -= utf8::incomplete_tail(std::string_view(bytes).substr(0, safe));
  if (safe <= emitted_.size() || bytes.compare(0, emitted_.size(), emitted_) != 0) return "";
  std::string fresh = bytes.substr(emitted_.size(), safe - emitted_.size());
  emitted_.append(fresh);
  return utf8::lossy(fresh);
}

std::string TextStream::finish() {
  const std::string bytes = tokenizer_.impl_->decode_bytes(ids_, skip_special_, drop_unknown_);
  const std::string shown = utf8::lossy(emitted_);
  const std::string all = utf8::lossy(bytes);
  // `emitted_` is a prefix of `bytes` that ends where no later byte changes
  // its lossy form, so `shown` is a prefix of `all`.
  emitted_ = bytes;
  return all.starts_with(shown) ? all.substr(shown.size()) : std::string();
}

}  // namespace shardlm
