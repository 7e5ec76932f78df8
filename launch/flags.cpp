#include "launch/flags.hpp"

#include <cmath>

namespace shardlm {

Mesh mesh_flag(const std::string& text, int ranks) {
  if (!text.empty()) return parse_flag("--mesh", text, Mesh::parse);
  Mesh best{1, 1, ranks, 1};
  const double target = 0.5 * std::sqrt(double(ranks));
  for (int x = 1; x <= ranks; ++x)
    if (ranks % x == 0 && std::abs(x - target) < std::abs(best.x - target))
      best = {1, x, ranks / x, 1};
  return best;
}

}  // namespace shardlm
