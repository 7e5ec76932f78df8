#include "launch/openmp_wait.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "collectives/world.hpp"

namespace shardlm {
namespace {

// Set in the environment once the choice is made: the re-executed binary
// finds it and goes on, and openmp_wait_description reports it.
constexpr const char* kChoice = "SHARDLM_OPENMP_WAIT";

int int_env(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value && std::atoi(value) > 0 ? std::atoi(value) : fallback;
}

// Runnable tasks on the machine right now, this one included ("procs_running"
// of /proc/stat); -1 when unknown.
int runnable_tasks() {
  std::ifstream stat("/proc/stat");
  std::string key;
  for (int value = 0; stat >> key;) {
    if (key == "procs_running" && stat >> value) return value;
    stat.ignore(1 << 20, '\n');
  }
  return -1;
}

}  // namespace

void choose_openmp_wait(char** argv) {
  if (std::getenv(kChoice)) return;
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) {
    setenv(kChoice, "set by the environment", 1);
    return;
  }
  // This node's ranks (under mpirun) and the threads each starts by default.
  const int cores = cores_allowed();
  int local_ranks = int_env("OMPI_COMM_WORLD_LOCAL_SIZE", int_env("MPI_LOCALNRANKS", 1));
  const int threads = int_env("OMP_NUM_THREADS", std::max(1, cores / local_ranks));
  if (threads <= 1) {
    setenv(kChoice, "spin: one thread per rank, no region to wait in", 1);
    return;
  }
  // Other work: the fewest runnable tasks over a few samples (a momentary
  // blip is not a busy core), less this process and this node's other ranks,
  // which may be starting beside it.
  int fewest = 1 << 30;
  for (int sample = 0; sample < 5; ++sample) {
    const int running = runnable_tasks();
    if (running < 0) return;
    fewest = std::min(fewest, running);
    std::this_thread::sleep_for(std::chrono::milliseconds(4));
  }
  const int others = std::max(0, fewest - local_ranks);
  const int free_cores = cores - others;
  if (free_cores >= threads * local_ranks) {
    setenv(kChoice, fmt::format("spin: {} of {} cores idle at start", free_cores, cores).c_str(),
           1);
    return;
  }
  setenv(
      kChoice,
      fmt::format("passive: {} other task(s) running on {} cores at start", others, cores).c_str(),
      1);
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);
  // The re-exec failed: go on spinning rather than not at all.
  setenv(kChoice, "spin: starting again with OMP_WAIT_POLICY=passive failed", 1);
  unsetenv("OMP_WAIT_POLICY");
}

std::string openmp_wait_description() {
  const char* choice = std::getenv(kChoice);
  if (!choice) return "libgomp's default (spin, then sleep)";
  const std::string text = choice;
  if (text == "set by the environment") {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const char* spins = std::getenv("GOMP_SPINCOUNT");
    return fmt::format("set by the environment (OMP_WAIT_POLICY={}, GOMP_SPINCOUNT={})",
                       policy ? policy : "unset", spins ? spins : "unset");
  }
  return text;
}

}  // namespace shardlm
