#include "runtime/errors.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace shardlm {

void warn(std::string_view message) {
  // The launcher's rank variables are read instead of MPI so that warnings
  // given before MPI starts (config parsing) are also said once.
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (const char* rank = std::getenv(name); rank && std::strcmp(rank, "0") != 0) return;
  fmt::print(stderr, "shardlm: warning: {}\n", message);
}

std::string format_bytes(double bytes) {
  if (bytes >= double(1ull << 40)) return fmt::format("{:.2f} TiB", bytes / double(1ull << 40));
  if (bytes >= double(1ull << 30)) return fmt::format("{:.2f} GiB", bytes / double(1ull << 30));
  if (bytes >= double(1 << 20)) return fmt::format("{:.1f} MiB", bytes / double(1 << 20));
  return fmt::format("{:.0f} KiB", bytes / 1024);
}

}  // namespace shardlm
