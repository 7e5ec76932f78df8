#include "models/tokenizer.hpp"

#include <fmt/format.h>
#include <utf8proc.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/tokenizer_impl.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace tokenizer_detail {

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

Pattern parse_pattern(const Fields& f) {
  Pattern p;
  const Fields pattern = f.child("pattern");
  if (const json* s = pattern.find("String"); s && s->is_string()) {
    p.literal = s->get<std::string>();
    if (p.literal.empty()) f.fail("pattern.String", "empty");
  } else if (const json* r = pattern.find("Regex"); r && r->is_string()) {
    p.regex =
        std::make_unique<Regex>(r->get<std::string>(), f.source() + ": " + f.name("pattern.Regex"));
  } else {
    f.fail("pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  return p;
}

}  // namespace tokenizer_detail

using namespace tokenizer_detail;

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
    normalizers.push_back({NormKind::kReplace, f.string("content"), parse_pattern(f)});
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
    step.pattern = parse_pattern(f);
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
    Pattern p = parse_pattern(f);
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
  std::string max_id_field;  // where the largest id is, for the message
  for (const auto& [token, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      model.fail("vocab",
                 fmt::format("token \"{}\" has id {}, expected an integer >= 0", token, id.dump()));
    vocab.emplace(token, id.get<int32_t>());
    if (id.get<int32_t>() > max_id) {
      max_id = id.get<int32_t>();
      max_id_field = fmt::format("model.vocab[\"{}\"]", token);
    }
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
      if (a.id > max_id) {
        max_id = a.id;
        max_id_field = fmt::format("added_tokens[{}].id", i);
      }
    }
  }
  // Tables are indexed by id: ids far beyond the number of tokens (real
  // vocabularies are dense, with at most small gaps) would size them by a
  // number in the file rather than by its tokens.
  const int64_t id_limit = 4 * int64_t(vocab.size() + added.size()) + 65536;
  if (max_id >= id_limit)
    top.fail(max_id_field, fmt::format("id {} is far beyond the file's {} tokens (ids must be "
                                       "below {})",
                                       max_id, vocab.size() + added.size(), id_limit));
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

}  // namespace shardlm
