#include "launch/flags.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

namespace shardlm {

std::ifstream open_input_file(const std::string& file, const char* flag) {
  if (std::error_code ec; std::filesystem::is_directory(file, ec))
    throw DataError(fmt::format("{}: is a directory, expected a file ({})", file, flag));
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw DataError(fmt::format("{}: cannot open ({}): {}", file, flag, std::strerror(errno)));
  return in;
}

Mesh mesh_flag(const std::string& text, int ranks) {
  if (!text.empty()) return parse_flag("--mesh", text, Mesh::parse);
  Mesh best{1, 1, ranks, 1};
  const double target = 0.5 * std::sqrt(double(ranks));
  for (int x = 1; x <= ranks; ++x)
    if (ranks % x == 0 && std::abs(x - target) < std::abs(best.x - target))
      best = {1, x, ranks / x, 1};
  return best;
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

}  // namespace shardlm
