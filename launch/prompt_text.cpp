#include "launch/prompt_text.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "launch/flags.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

std::vector<TextPrompt> read_text_prompts(const std::vector<std::string>& flags,
                                          const std::string& file) {
  std::vector<TextPrompt> prompts;
  for (size_t i = 0; i < flags.size(); ++i)
    prompts.push_back(
        {flags[i], flags.size() > 1 ? fmt::format("--prompt {}", i + 1) : "--prompt", true});
  if (file.empty()) return prompts;
  std::ifstream in = open_input_file(file, "--prompt-file");
  std::string line;
  std::optional<bool> jsonl;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    if (!jsonl) jsonl = line[first] == '{';
    const std::string where = fmt::format("{} line {}", file, number);
    if (!*jsonl) {
      prompts.push_back({line, where, false});
      continue;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(
          fmt::format("{}: not a JSON object (the file is JSON Lines, as its first "
                      "prompt line starts with '{{'): {}",
                      where, e.what()));
    }
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      throw DataError(fmt::format("{}: expected an object with a \"prompt\" string", where));
    prompts.push_back({j["prompt"].get<std::string>(), where, false});
  }
  if (in.bad()) throw DataError(fmt::format("{}: read failed", file));
  if (prompts.empty()) throw DataError(fmt::format("{}: holds no prompt (--prompt-file)", file));
  return prompts;
}

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const TextPrompt& prompt) {
  if (const auto bad = utf8::first_invalid(prompt.text)) {
    const std::string message =
        fmt::format("{}: the text is not valid UTF-8 (byte {})", prompt.where, *bad);
    if (prompt.from_flag) throw UsageError(message);
    throw DataError(message);
  }
  std::vector<int32_t> ids = tokenizer.encode(prompt.text);
  if (ids.empty()) {
    const std::string message = fmt::format("{}: the prompt encodes to no tokens", prompt.where);
    if (prompt.from_flag) throw UsageError(message);
    throw DataError(message);
  }
  return ids;
}

}  // namespace shardlm
