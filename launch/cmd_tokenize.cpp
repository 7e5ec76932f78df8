// `shardlm tokenize` and `shardlm detokenize`: the model's tokenizer on its
// own, to inspect what a prompt becomes and what ids read as.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <nlohmann/json.hpp>

#include "launch/commands.hpp"
#include "models/tokenizer.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

std::vector<int32_t> parse_id_list(const std::vector<std::string>& args) {
  std::vector<int32_t> ids;
  for (const std::string& arg : args) {
    size_t i = 0;
    while (i <= arg.size()) {
      size_t end = arg.find_first_of(", ", i);
      if (end == std::string::npos) end = arg.size();
      const std::string item = arg.substr(i, end - i);
      i = end + 1;
      if (item.empty()) continue;
      int64_t value = 0;
      const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
      if (ec != std::errc() || ptr != item.data() + item.size() || value < INT32_MIN ||
          value > INT32_MAX)
        throw UsageError(
            fmt::format("IDS: \"{}\" is not a token id (expected integers "
                        "separated by commas or spaces)",
                        item));
      ids.push_back(int32_t(value));
    }
  }
  if (ids.empty()) throw UsageError("IDS: no token ids");
  return ids;
}

}  // namespace

void add_tokenize_commands(CLI::App& app) {
  struct Options {
    std::string model;
    std::vector<std::string> text;
    bool no_special = false, json = false, skip_special = false;
  };
  auto o = std::make_shared<Options>();
  auto* tok =
      app.add_subcommand("tokenize", "print the token ids of a text (the model's tokenizer.json)");
  tok->add_option("--model", o->model, "model directory holding tokenizer.json")->required();
  tok->add_option("text", o->text, "the text (several arguments are joined by spaces)")
      ->required()
      ->expected(1, -1);
  tok->add_flag("--no-special-tokens", o->no_special,
                "do not add BOS and the like (the tokenizer's post-processor)");
  tok->add_flag("--json", o->json, "print {\"ids\": [...], \"tokens\": [...]}");
  tok->callback([o] {
    const Tokenizer tokenizer = Tokenizer::load(o->model);
    std::string text;
    for (size_t i = 0; i < o->text.size(); ++i) text += (i ? " " : "") + o->text[i];
    if (const auto bad = utf8::first_invalid(text))
      throw UsageError(fmt::format("TEXT: not valid UTF-8 (byte {})", *bad));
    const std::vector<int32_t> ids = tokenizer.encode(text, !o->no_special);
    if (o->json) {
      std::vector<std::string> tokens;
      for (int32_t id : ids) tokens.push_back(*tokenizer.id_to_token(id));
      fmt::print("{}\n", nlohmann::json{{"ids", ids}, {"tokens", tokens}}.dump(
                             -1, ' ', false, nlohmann::json::error_handler_t::replace));
    } else {
      fmt::print("{}\n", fmt::join(ids, ","));
    }
  });

  auto d = std::make_shared<Options>();
  auto* detok =
      app.add_subcommand("detokenize", "print the text of token ids (the model's tokenizer.json)");
  detok->add_option("--model", d->model, "model directory holding tokenizer.json")->required();
  detok->add_option("ids", d->text, "token ids, separated by commas or spaces")
      ->required()
      ->expected(1, -1);
  detok->add_flag("--skip-special-tokens", d->skip_special, "leave out special tokens (BOS, EOS)");
  detok->callback([d] {
    const std::vector<int32_t> ids = parse_id_list(d->text);
    const Tokenizer tokenizer = Tokenizer::load(d->model);
    const std::string text = tokenizer.decode(ids, d->skip_special);
    fmt::print("{}\n", text);
  });
}

}  // namespace shardlm
