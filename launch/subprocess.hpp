#pragma once
// Running one child command (an `mpirun` job) with a deadline, its output
// captured, and the whole process group ended on timeout or Ctrl-C.
#include <atomic>
#include <map>
#include <string>
#include <vector>

namespace shardlm {

struct ChildResult {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  bool timed_out = false, interrupted = false;
  std::string out, err;  // stdout whole; stderr's last 64 KiB
  double seconds = 0;
};

// Set by the SIGINT/SIGTERM handler install_interrupt_handler() installs.
extern std::atomic<bool> g_interrupted;
void install_interrupt_handler();

// Runs argv[0] (searched on PATH) with `env` added to this environment, in a
// process group of its own so that a terminal's Ctrl-C reaches only this
// process, which then ends the child's group (SIGTERM, SIGKILL 3 s later)
// and reports `interrupted`; the same on reaching `timeout_s`.
ChildResult run_child(const std::vector<std::string>& argv,
                      const std::map<std::string, std::string>& env, double timeout_s);

}  // namespace shardlm
