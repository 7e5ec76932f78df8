// Catch2 runner for tests that run on every rank of an mpirun job. Tests use
// CHECK, not REQUIRE, so a failing rank still joins every later collective.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "collectives/world.hpp"

int main(int argc, char** argv) {
  shardlm::World& world = shardlm::World::get();
  const int failed = Catch::Session().run(argc, argv);
  world.all().barrier();
  world.finalize();
  return failed;
}
