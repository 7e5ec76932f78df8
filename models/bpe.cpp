#include "models/bpe.hpp"

#include <fmt/format.h>

#include <queue>

#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

constexpr size_t kCacheCapacity = 1 << 16;
constexpr size_t kMaxCachedWordBytes = 256;

uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t(uint32_t(a)) << 32) | uint32_t(b);
}

}  // namespace

uint32_t byte_to_unicode(uint8_t b) {
  // Printable Latin-1 bytes stand for themselves; the others (controls,
  // space, soft hyphen) take code points from 256 up, in byte order.
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
  uint32_t n = 0;
  for (uint32_t x = 0; x < b; ++x)
    if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) ++n;
  return 256 + n;
}

struct Bpe::Symbols {
  std::vector<int32_t> id;
  std::vector<int32_t> prev, next;
  std::vector<uint8_t> alive;
  void add(int32_t token) {
    const int32_t i = int32_t(id.size());
    id.push_back(token);
    prev.push_back(i - 1);
    next.push_back(-1);
    alive.push_back(1);
    if (i > 0) next[size_t(i - 1)] = i;
  }
};

Bpe::Bpe(Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options, const std::string& where)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  const size_t prefix_len =
      options_.continuing_subword_prefix ? options_.continuing_subword_prefix->size() : 0;
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = vocab_.find(a), ib = vocab_.find(b);
    if (ia == vocab_.end() || ib == vocab_.end())
      throw DataError(fmt::format("{}.merges[{}]: \"{}\" is not in the vocabulary", where, rank,
                                  ia == vocab_.end() ? a : b));
    // With a continuing-subword prefix, the right part carries it and the
    // merged token does not.
    const std::string merged = prefix_len && b.starts_with(*options_.continuing_subword_prefix)
                                   ? a + b.substr(prefix_len)
                                   : a + b;
    const auto im = vocab_.find(merged);
    if (im == vocab_.end())
      throw DataError(fmt::format("{}.merges[{}]: the merged token \"{}\" is not in the vocabulary",
                                  where, rank, merged));
    merges_[pair_key(ia->second, ib->second)] = {uint32_t(rank), im->second};
  }
  for (int b = 0; b < 256; ++b) {
    utf8::append(byte_chars_[b], byte_to_unicode(uint8_t(b)));
    const auto it = vocab_.find(byte_chars_[b]);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  if (options_.unk_token) {
    const auto it = vocab_.find(*options_.unk_token);
    if (it == vocab_.end())
      throw DataError(
          fmt::format("{}.unk_token: \"{}\" is not in the vocabulary", where, *options_.unk_token));
    unk_id_ = it->second;
  }
}

void Bpe::flush_unk(Symbols& symbols, std::optional<std::pair<int32_t, size_t>>& unk) {
  if (unk) symbols.add(unk->first);
  unk.reset();
}

// One character of the initial word, as Hugging Face's merge_word: its token,
// else its bytes as <0xXX> tokens (byte fallback), else the unknown token
// (fused with a preceding one if fuse_unk), else nothing.
void Bpe::add_char(std::string_view ch, bool first, bool last, Symbols& symbols,
                   std::optional<std::pair<int32_t, size_t>>& unk) const {
  std::string decorated;
  std::string_view s = ch;
  if ((!first && options_.continuing_subword_prefix) || (last && options_.end_of_word_suffix)) {
    if (!first && options_.continuing_subword_prefix)
      decorated = *options_.continuing_subword_prefix;
    decorated += ch;
    if (last && options_.end_of_word_suffix) decorated += *options_.end_of_word_suffix;
    s = decorated;
  }
  if (const auto it = vocab_.find(s); it != vocab_.end()) {
    flush_unk(symbols, unk);
    symbols.add(it->second);
    return;
  }
  if (options_.byte_fallback) {
    std::vector<int32_t> bytes;
    for (unsigned char b : s) {
      const auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      if (it == vocab_.end()) break;
      bytes.push_back(it->second);
    }
    if (bytes.size() == s.size()) {
      // Hugging Face leaves a pending unknown token pending across these.
      for (int32_t id : bytes) symbols.add(id);
      return;
    }
  }
  if (unk_id_) {
    if (unk && options_.fuse_unk) return;
    if (unk) symbols.add(unk->first);
    unk = std::pair{*unk_id_, s.size()};
  }
}

void Bpe::merge_word(std::string_view word, bool byte_mapped, std::vector<int32_t>& out) const {
  Symbols symbols;
  symbols.id.reserve(word.size());
  std::optional<std::pair<int32_t, size_t>> unk;
  const bool plain = !options_.continuing_subword_prefix && !options_.end_of_word_suffix;
  if (byte_mapped) {
    for (size_t i = 0; i < word.size(); ++i) {
      const uint8_t b = uint8_t(word[i]);
      if (plain && byte_ids_[b] >= 0) {
        flush_unk(symbols, unk);
        symbols.add(byte_ids_[b]);
      } else {
        add_char(byte_chars_[b], i == 0, i + 1 == word.size(), symbols, unk);
      }
    }
  } else {
    size_t i = 0;
    while (i < word.size()) {
      uint32_t cp;
      const int len = utf8::decode(word.substr(i), cp);
      const size_t n = len > 0 ? size_t(len) : 1;  // input was validated; be safe anyway
      add_char(word.substr(i, n), i == 0, i + n == word.size(), symbols, unk);
      i += n;
    }
  }
  if (unk) symbols.add(unk->first);

  // Lowest rank first, leftmost on ties (Hugging Face's heap order).
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nxt = symbols.next[size_t(pos)];
    if (nxt < 0) return;
    const auto it = merges_.find(pair_key(symbols.id[size_t(pos)], symbols.id[size_t(nxt)]));
    if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i + 1 < int32_t(symbols.id.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    const size_t pos = size_t(top.pos);
    if (!symbols.alive[pos] || symbols.next[pos] < 0) continue;
    const size_t right = size_t(symbols.next[pos]);
    // Skip entries made stale by an earlier merge of either symbol.
    const auto it = merges_.find(pair_key(symbols.id[pos], symbols.id[right]));
    if (it == merges_.end() || it->second.second != top.merged) continue;
    symbols.id[pos] = top.merged;
    symbols.alive[right] = 0;
    symbols.next[pos] = symbols.next[right];
    if (symbols.next[pos] >= 0) symbols.prev[size_t(symbols.next[pos])] = int32_t(pos);
    consider(symbols.prev[pos]);
    consider(int32_t(pos));
  }
  for (size_t i = 0; i < symbols.id.size(); ++i)
    if (symbols.alive[i]) out.push_back(symbols.id[i]);
}

void Bpe::tokenize(std::string_view word, bool byte_mapped, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (const auto it = cache_.find(word); it != cache_.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  const size_t start = out.size();
  bool whole = false;
  if (options_.ignore_merges) {
    std::string mapped;
    if (byte_mapped)
      for (unsigned char b : word) mapped += byte_chars_[b];
    const auto it = vocab_.find(byte_mapped ? std::string_view(mapped) : word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      whole = true;
    }
  }
  if (!whole) merge_word(word, byte_mapped, out);
  if (word.size() <= kMaxCachedWordBytes && cache_.size() < kCacheCapacity)
    cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + long(start), out.end()));
}

}  // namespace shardlm
