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

}  // namespace shardlm
