// shardlm: the command-line entry point. Exit codes: 0 success, 2 usage
// error (bad flag or request), 1 data error (bad file, value or runtime fault).
#include <cstdio>
#include <exception>

#include <fmt/core.h>

#include "launch/commands.hpp"
#include "runtime/errors.hpp"

int main(int argc, char** argv) {
  CLI::App app{"shardlm: sharded LLM inference after Pope et al., Efficiently Scaling Transformer Inference"};
  app.require_subcommand(1);
  shardlm::add_make_model_command(app);
  shardlm::add_generate_command(app);
  shardlm::add_plan_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fmt::print(stderr, "shardlm: error: {}\n", e.what());
    return 2;
  } catch (const shardlm::UsageError& e) {
    fmt::print(stderr, "shardlm: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "shardlm: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
