#pragma once
// Turning flag text into values, shared by every subcommand: a parser's
// std::invalid_argument becomes a UsageError (exit 2) that names the flag.
#include <fmt/format.h>

#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>

#include "partitioning/mesh.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

template <typename Parse>
auto parse_flag(const char* flag, const std::string& text, Parse parse) {
  try {
    return parse(text);
  } catch (const std::invalid_argument& e) {
    throw UsageError(fmt::format("{} {}: {}", flag, text, e.what()));
  }
}

// Empty text means the flag was not given.
template <typename T, typename Parse>
std::optional<T> parse_optional_flag(const char* flag, const std::string& text, Parse parse) {
  if (text.empty()) return std::nullopt;
  return parse_flag(flag, text, parse);
}

// An input file a flag names, open for reading; DataError naming the file and
// the flag when it is missing, unreadable or a directory.
std::ifstream open_input_file(const std::string& file, const char* flag);

// `s` without leading and trailing white space.
std::string trim(std::string s);

// `--mesh X,Y,Z`, or for `ranks` ranks: x near the paper's 2-D optimum
// 0.5·sqrt(ranks) (for d_ff = 4·d_model), y the rest.
Mesh mesh_flag(const std::string& text, int ranks);

}  // namespace shardlm
