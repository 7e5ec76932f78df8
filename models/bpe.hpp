#pragma once
// The BPE model of a tokenizer.json: a word (one pre-tokenized piece) starts
// as one symbol per character (or per byte, after the byte-level mapping) and
// the pair of adjacent symbols with the lowest merge rank is merged until no
// pair has a rank, exactly as Hugging Face's BPE (leftmost pair on ties).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace shardlm {

// Lookup by string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;  // a character not in the vocabulary becomes <0xXX> tokens
  bool ignore_merges = false;  // a word found whole in the vocabulary is one token (Llama 3)
};

class Bpe {
 public:
  // `merges` pairs token strings; `where` names the tokenizer.json field for errors.
  Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options, const std::string& where);

  // Appends the ids of `word` to `out`. With `byte_mapped`, `word` holds raw
  // bytes that stand for their GPT-2 byte-to-unicode characters (the
  // byte-level pre-tokenizer's output) and the cache is keyed on those bytes.
  void tokenize(std::string_view word, bool byte_mapped, std::vector<int32_t>& out) const;

  const Vocab& vocab() const { return vocab_; }

 private:
  struct Symbols;
  void merge_word(std::string_view word, bool byte_mapped, std::vector<int32_t>& out) const;
  static void flush_unk(Symbols& symbols, std::optional<std::pair<int32_t, size_t>>& unk);
  void add_char(std::string_view ch, bool first, bool last, Symbols& symbols,
                std::optional<std::pair<int32_t, size_t>>& unk) const;

  Vocab vocab_;
  BpeOptions options_;
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges_;  // (a, b) -> (rank, merged)
  int32_t byte_ids_[256];        // id of each byte's mapped character, or -1
  std::string byte_chars_[256];  // GPT-2's byte-to-unicode mapping, as UTF-8
  std::optional<int32_t> unk_id_;
  // Words seen before and their ids: text repeats, and merging dominates
  // the cost of a new word. Bounded, like Hugging Face's.
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

// GPT-2's reversible mapping of the 256 byte values to printable characters.
uint32_t byte_to_unicode(uint8_t b);

}  // namespace shardlm
