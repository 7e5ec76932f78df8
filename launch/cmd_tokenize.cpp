// `shardlm tokenize` and `shardlm detokenize`: the model's tokenizer on its
// own, to inspect what a prompt becomes and what ids read as. With a file of
// many inputs they print JSON Lines, one object per input, in order.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "launch/commands.hpp"
#include "launch/flags.hpp"
#include "launch/prompt_text.hpp"
#include "models/tokenizer.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

// Ids separated by commas and/or spaces; `where` names the argument or line.
template <typename Error>
std::vector<int32_t> parse_id_list(const std::vector<std::string>& args, const std::string& where) {
  std::vector<int32_t> ids;
  for (const std::string& arg : args) {
    size_t i = 0;
    while (i <= arg.size()) {
      size_t end = arg.find_first_of(", \t", i);
      if (end == std::string::npos) end = arg.size();
      const std::string item = arg.substr(i, end - i);
      i = end + 1;
      if (item.empty()) continue;
      int64_t value = 0;
      const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
      if (ec != std::errc() || ptr != item.data() + item.size() || value < INT32_MIN ||
          value > INT32_MAX)
        throw Error(fmt::format(
            "{}: \"{}\" is not a token id (expected integers separated by commas or spaces)", where,
            item));
      ids.push_back(int32_t(value));
    }
  }
  return ids;
}

// Lines of ids, or JSON Lines with an "ids" list.
std::vector<std::vector<int32_t>> read_id_lists(const std::string& file) {
  std::ifstream in = open_input_file(file, "--ids-file");
  std::vector<std::vector<int32_t>> lists;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const size_t first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos) continue;
    const std::string where = fmt::format("{} line {}", file, number);
    if (line[first] != '{') {
      lists.push_back(parse_id_list<DataError>({line}, where));
      continue;
    }
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      lists.push_back(j.at("ids").get<std::vector<int32_t>>());
    } catch (const nlohmann::json::exception& e) {
      throw DataError(fmt::format("{}: expected {{\"ids\": [integers]}}: {}", where, e.what()));
    }
  }
  if (in.bad()) throw DataError(fmt::format("{}: read failed", file));
  return lists;
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void add_tokenize_commands(CLI::App& app) {
  struct Options {
    std::string model, file;
    std::vector<std::string> args;
    bool no_special = false, json = false, skip_special = false, stream = false;
    int repeat = 0;
  };
  auto o = std::make_shared<Options>();
  auto* tok =
      app.add_subcommand("tokenize", "print the token ids of a text (the model's tokenizer.json)");
  tok->add_option("--model", o->model, "model directory holding tokenizer.json")->required();
  auto* text = tok->add_option("text", o->args, "the text (several arguments are joined by spaces)")
                   ->expected(0, -1);
  auto* file = tok->add_option(
      "--prompt-file", o->file,
      "texts to encode, one a line or JSON Lines with \"prompt\"; prints one {\"ids\"} a line");
  text->excludes(file);
  tok->add_flag("--no-special-tokens", o->no_special,
                "do not add BOS and the like (the tokenizer's post-processor)");
  tok->add_flag("--json", o->json, "print {\"ids\": [...], \"tokens\": [...]}");
  tok->add_option("--repeat", o->repeat,
                  "encode the texts N times and print timings as JSON instead of ids "
                  "(perf/tokenizer_bench.py)")
      ->check(CLI::Range(1, 1000000));
  tok->callback([o, tok] {
    if (tok->count("text") == 0 && o->file.empty())
      throw UsageError("tokenize: give the text or --prompt-file");
    std::vector<TextPrompt> prompts;
    if (!o->file.empty()) {
      prompts = read_text_prompts({}, o->file);
    } else {
      std::string joined;
      for (size_t i = 0; i < o->args.size(); ++i) joined += (i ? " " : "") + o->args[i];
      prompts.push_back({joined, "TEXT", true});
    }
    for (const TextPrompt& p : prompts)
      if (const auto bad = utf8::first_invalid(p.text)) {
        const std::string message =
            fmt::format("{}: the text is not valid UTF-8 (byte {})", p.where, *bad);
        if (p.from_flag) throw UsageError(message);
        throw DataError(message);
      }
    const Tokenizer tokenizer = Tokenizer::load(o->model);
    if (o->repeat > 0) {
      // One thread, the same texts each round; the first round fills the
      // word cache, as a server's first requests do.
      std::vector<double> seconds;
      size_t bytes = 0, tokens = 0;
      for (const TextPrompt& p : prompts) bytes += p.text.size();
      for (int r = 0; r < o->repeat; ++r) {
        const auto start = std::chrono::steady_clock::now();
        size_t count = 0;
        for (const TextPrompt& p : prompts)
          count += tokenizer.encode(p.text, !o->no_special).size();
        seconds.push_back(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        tokens = count;
      }
      fmt::print("{}\n", dump({{"texts", prompts.size()},
                               {"bytes", bytes},
                               {"tokens", tokens},
                               {"seconds", seconds}}));
      return;
    }
    // Everything is encoded before anything is printed: an error leaves no
    // partial output behind.
    std::string out;
    for (const TextPrompt& p : prompts) {
      const std::vector<int32_t> ids = tokenizer.encode(p.text, !o->no_special);
      if (o->json || !o->file.empty()) {
        nlohmann::json j = {{"ids", ids}};
        if (o->json) {
          std::vector<std::string> tokens;
          for (int32_t id : ids) tokens.push_back(*tokenizer.id_to_token(id));
          j["tokens"] = tokens;
        }
        out += dump(j) + "\n";
      } else {
        out += fmt::format("{}\n", fmt::join(ids, ","));
      }
    }
    fmt::print("{}", out);
  });

  auto d = std::make_shared<Options>();
  auto* detok =
      app.add_subcommand("detokenize", "print the text of token ids (the model's tokenizer.json)");
  detok->add_option("--model", d->model, "model directory holding tokenizer.json")->required();
  auto* ids = detok->add_option("ids", d->args, "token ids, separated by commas or spaces")
                  ->expected(0, -1);
  auto* ids_file = detok->add_option(
      "--ids-file", d->file,
      "id lists, one a line or JSON Lines with \"ids\"; prints one {\"text\"} a line");
  ids->excludes(ids_file);
  detok->add_flag("--skip-special-tokens", d->skip_special, "leave out special tokens (BOS, EOS)");
  detok->add_flag("--stream", d->stream,
                  "also decode id by id as generate streams, printing {\"text\", \"chunks\"}");
  detok->callback([d, detok] {
    std::vector<std::vector<int32_t>> lists;
    if (!d->file.empty()) {
      lists = read_id_lists(d->file);
    } else {
      if (detok->count("ids") == 0) throw UsageError("detokenize: give the ids or --ids-file");
      lists.push_back(parse_id_list<UsageError>(d->args, "IDS"));
    }
    const Tokenizer tokenizer = Tokenizer::load(d->model);
    std::string out;
    for (const auto& list : lists) {
      const std::string text = tokenizer.decode(list, d->skip_special);
      if (!d->stream && d->file.empty()) {
        out += text + "\n";
        continue;
      }
      nlohmann::json j = {{"text", text}};
      if (d->stream) {
        TextStream stream(tokenizer, d->skip_special, false);
        std::vector<std::string> chunks;
        for (int32_t id : list) chunks.push_back(stream.push(id));
        chunks.push_back(stream.finish());
        j["chunks"] = chunks;
      }
      out += dump(j) + "\n";
    }
    fmt::print("{}", out);
  });
}

}  // namespace shardlm
