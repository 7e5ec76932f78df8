#include "models/demo_tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "models/bpe.hpp"
#include "models/tokenizer_regex.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {
namespace fs = std::filesystem;
namespace {

using ojson = nlohmann::ordered_json;

// Training text: plain English about what this program does, so that the
// learnt pieces are common English words and word parts.
constexpr const char* kCorpus = R"(
The model reads a prompt, turns it into tokens, and writes the next token, one at a time.
Each token is a piece of a word: a short word is often one token, and a long word is a few.
When the weights are random, the text that comes out is not English, but every part of the
path is real: the tokenizer splits the prompt, the engine runs the layers over many devices,
and the sampler picks the next token from the logits of the last position.
Inference at scale is a question of where the weights and the cache live. A small model fits
on one chip; a large one is split over many, and the chips talk to each other after every
layer. The planner looks at the shape of the model, the size of the batch and the length of
the prompt, and picks the layout that should be the fastest for each phase of the run.
Prefill reads the whole prompt at once and is limited by compute; decode makes one token for
every sequence in each step and is limited by how fast the weights can be read from memory.
This is why the two phases may use different layouts, and why the cache is moved between them.
Hello, my name is Ada, and I am glad to meet you. What is your name, and where are you from?
Once upon a time there was a little village by the river. The people of the village worked in
the fields during the day and told stories by the fire at night. One evening a traveller came
from the mountains with a book that nobody could read. The children wanted to know what was
written in it, and the oldest woman in the village said that the book would teach them if
they were patient. They learned the letters one by one, then the words, and then the stories.
After many years they could read every page, and they wrote new books of their own.
Numbers matter too: 1, 2, 3, 10, 42, 100, 2024, 3.14 and 1,000,000 are all split by the
same rules as the words around them.
)";

constexpr int kSpecials = 3;  // <unk>, <s>, </s>

bool all_letters(const std::string& token) {
  return !token.empty() && std::all_of(token.begin(), token.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  });
}

}  // namespace

void write_demo_tokenizer(const ModelConfig& config, const fs::path& dir) {
  const int64_t vocab_size = config.vocab_size;
  if (vocab_size < kSpecials + 256)
    throw UsageError(fmt::format("a byte-level tokenizer needs vocab_size >= {}, the model has {}",
                                 kSpecials + 256, vocab_size));
  // Vocabulary: the special tokens, then the 256 byte characters in byte order.
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8::append(s, byte_to_unicode(uint8_t(b)));
    tokens.push_back(s);
  }
  std::set<std::string> known(tokens.begin(), tokens.end());
  std::vector<std::pair<std::string, std::string>> merges;

  // Word frequencies after GPT-2's split, each word as byte-token ids.
  std::map<std::string, int> counts;
  {
    std::vector<std::pair<size_t, size_t>> spans;
    const std::string_view corpus = kCorpus;
    Regex(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)",
          "demo tokenizer")
        .find_all(corpus, spans);
    for (const auto& [b, e] : spans) ++counts[std::string(corpus.substr(b, e - b))];
  }
  std::vector<std::pair<std::vector<int32_t>, int>> words;
  for (const auto& [word, count] : counts) {
    std::vector<int32_t> ids;
    for (unsigned char c : word) ids.push_back(kSpecials + c);
    words.emplace_back(std::move(ids), count);
  }

  // Learn merges: the most frequent adjacent pair (ties to the smaller ids)
  // while it occurs at least twice.
  while (int64_t(tokens.size()) < vocab_size) {
    std::map<std::pair<int32_t, int32_t>, int> pairs;
    for (const auto& [ids, count] : words)
      for (size_t i = 0; i + 1 < ids.size(); ++i) pairs[{ids[i], ids[i + 1]}] += count;
    auto best = pairs.end();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (best == pairs.end() || it->second > best->second) best = it;
    if (best == pairs.end() || best->second < 2) break;
    const auto [a, b] = best->first;
    const std::string merged = tokens[size_t(a)] + tokens[size_t(b)];
    const int32_t id = int32_t(tokens.size());
    merges.emplace_back(tokens[size_t(a)], tokens[size_t(b)]);
    tokens.push_back(merged);
    known.insert(merged);
    for (auto& [ids, count] : words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < ids.size(); ++i) {
        if (i + 1 < ids.size() && ids[i] == a && ids[i + 1] == b) {
          out.push_back(id);
          ++i;
        } else {
          out.push_back(ids[i]);
        }
      }
      ids = std::move(out);
    }
  }

  // Fill the rest of the embedding rows with joins of learnt pieces: a piece
  // that starts a word (or continues one) followed by a piece of letters.
  // Both halves precede the join, so these are ordinary BPE merges.
  std::vector<std::string> learnt(tokens.begin() + kSpecials + 256, tokens.end());
  const std::string space = tokens[size_t(kSpecials + ' ')];  // "Ġ"
  std::vector<std::string> heads, tails;
  for (const std::string& t : learnt) {
    const std::string rest = t.starts_with(space) ? t.substr(space.size()) : t;
    if (all_letters(rest)) heads.push_back(t);
    if (all_letters(t)) tails.push_back(t);
  }
  // A join is a head itself, so the supply grows faster than it is used.
  for (size_t sum = 0; int64_t(tokens.size()) < vocab_size; ++sum) {
    if (tails.empty() || sum > heads.size() + tails.size())
      throw UsageError(fmt::format("the built-in tokenizer cannot fill vocab_size {}", vocab_size));
    for (size_t i = 0; i <= sum && int64_t(tokens.size()) < vocab_size; ++i) {
      const size_t j = sum - i;
      if (i >= heads.size() || j >= tails.size()) continue;
      const std::string merged = heads[i] + tails[j];
      if (!known.insert(merged).second) continue;
      merges.emplace_back(heads[i], tails[j]);
      tokens.push_back(merged);
      heads.push_back(merged);
    }
  }

  ojson vocab = ojson::object();
  for (size_t id = 0; id < tokens.size(); ++id) vocab[tokens[id]] = id;
  ojson merge_list = ojson::array();
  for (const auto& [a, b] : merges) merge_list.push_back({a, b});
  ojson added = ojson::array();
  for (int id = 0; id < kSpecials; ++id)
    added.push_back({{"id", id},
                     {"content", tokens[size_t(id)]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  const ojson byte_level = {{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", true},
                            {"use_regex", true}};
  const ojson tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
          {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merge_list}}},
  };
  const ojson tokenizer_config = {
      {"tokenizer_class", "PreTrainedTokenizerFast"},
      {"bos_token", "<s>"},
      {"eos_token", "</s>"},
      {"unk_token", "<unk>"},
      {"add_bos_token", true},
      {"add_eos_token", false},
      {"model_max_length", config.max_position_embeddings},
  };
  write_file_atomically(dir / "tokenizer.json", tokenizer.dump(1) + "\n");
  write_file_atomically(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n");
}

}  // namespace shardlm
