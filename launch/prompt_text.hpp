#pragma once
// Text prompts for `generate` and the `tokenize` / `detokenize` commands:
// reading them from flags and files, and turning token ids typed by a user
// into a list.
#include <cstdint>
#include <string>
#include <vector>

#include "models/tokenizer.hpp"

namespace shardlm {

struct TextPrompt {
  std::string text;
  std::string where;  // "--prompt 2" or "FILE line 3", for messages
  bool from_flag;     // a bad one is a usage error, else a data error
};

// `--prompt` values, or the prompts of `--prompt-file`: one a line, or JSON
// Lines with a "prompt" string (chosen when the first non-blank line starts
// with '{'); blank lines are skipped.
std::vector<TextPrompt> read_text_prompts(const std::vector<std::string>& flags,
                                          const std::string& file);

// Encodes a prompt; invalid UTF-8 is an error naming where the prompt came from.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const TextPrompt& prompt);

}  // namespace shardlm
