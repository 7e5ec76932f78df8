// The command line of every subcommand, parsed exactly as `shardlm` parses it
// (launch/app.cpp), stopped once parsing, validation and requirements are done
// and before a subcommand runs: the input is argv, one argument per line.
// Refusals are CLI11's parse errors (help included) and UsageError.
#include <cstdint>
#include <string>
#include <vector>

#include "launch/commands.hpp"
#include "tests/fuzz/fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  std::vector<std::string> args{"shardlm"};
  std::string current;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n') {
      args.push_back(current);
      current.clear();
    } else {
      current.push_back(char(data[i]));
    }
  }
  if (!current.empty()) args.push_back(current);
  if (args.size() > 64) return 0;
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());

  CLI::App app{"shardlm"};
  add_all_commands(app);
  // CLI11 calls the top level's parse-complete callback after every check and
  // before the subcommands' own callbacks, which would run the command.
  struct Parsed {};
  app.parse_complete_callback([] { throw Parsed{}; });
  fuzz::refused_cleanly_or_read([&] {
    try {
      refuse_empty_values(app, int(argv.size()), argv.data());
      app.parse(int(argv.size()), argv.data());
    } catch (const CLI::ParseError&) {
      // Help, version and every refusal CLI11 reports to the user.
    } catch (const Parsed&) {
    }
  });
  return 0;
}
