#pragma once
// Text to token ids and back, as a Hugging Face tokenizer.json describes it:
// byte-level BPE (GPT-2, Llama 3, Qwen2 split patterns), SentencePiece-style
// BPE with byte fallback and the ▁ metaspace (Llama 2, Mistral), added and
// special tokens, and the normalisers these families use. Anything else in a
// tokenizer.json (another model type, normaliser, pre-tokenizer, decoder,
// post-processor, truncation or padding) is refused with an error naming the
// field, never approximated. docs/tokenizer.md lists what is supported.
//
// Chat templates (tokenizer_config.json's `chat_template`, Jinja) are not
// applied: text goes in as given. A template engine would sit in front of
// encode(), turning a list of messages into that text.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shardlm {

class Tokenizer {
 public:
  // Reads dir/tokenizer.json, and where present tokenizer_config.json,
  // special_tokens_map.json (BOS/EOS tokens, add_bos_token) and config.json
  // (bos_token_id / eos_token_id when nothing else names them). Throws
  // DataError naming the file and field.
  static Tokenizer load(const std::filesystem::path& dir);
  // From the text of a tokenizer.json; `source` names it in errors.
  static Tokenizer from_json(const std::string& text, const std::string& source);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // `text` must be valid UTF-8 (DataError otherwise, naming the byte offset).
  // add_special_tokens applies the post-processor (BOS and the like), as
  // Hugging Face's encode() does by default. Not thread-safe: encode keeps a
  // cache of tokenized words.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids to text, as Hugging Face's decode(); bytes that do not form UTF-8
  // become U+FFFD. An id with no token is a DataError naming it, unless
  // `drop_unknown` (a model's vocabulary can be padded beyond its tokenizer's;
  // Hugging Face drops such ids).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false,
                     bool drop_unknown = false) const;

  // One past the largest id (model vocabulary and added tokens).
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Null when `id` has no token.
  const std::string* id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  std::optional<int32_t> bos_id() const;
  // Every id that ends a sequence (config.json may list several).
  const std::vector<int32_t>& eos_ids() const;
  const std::string& source() const;

 private:
  friend class TextStream;
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The decoded text of one sequence as its ids arrive. push() returns only text
// that no later id can change: a character split over several tokens (byte-
// level BPE or byte fallback) comes out once its last byte has arrived. The
// concatenation of every push() and finish() equals decode() of all ids.
// Each push re-decodes the sequence (linear in its length), which costs
// microseconds beside a decode step of the model.
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, bool skip_special_tokens, bool drop_unknown);
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_, drop_unknown_;
  std::vector<int32_t> ids_;
  std::string emitted_;  // bytes of text returned so far
};

}  // namespace shardlm
