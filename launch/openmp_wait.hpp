#pragma once
// How idle OpenMP threads wait between parallel regions, chosen at start-up.
//
// Measured on a 2-core VM (docs/cpu_backend.md, "Idle threads"): on idle
// cores, threads that spin between regions decode 2.5x faster than threads
// that sleep (waking a halted virtual CPU costs tens of microseconds, and a
// decode step has a few hundred regions); with one other busy process on the
// cores, spinning threads decode 7-30x slower than sleeping ones (a thread
// that finished its share spins on the core its descheduled partner needs,
// so every region waits a scheduler slice). libgomp reads OMP_WAIT_POLICY
// once, when it is loaded, so the choice is made by starting the binary again
// with the variable set.
#include <string>

namespace shardlm {

// Unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT: when the cores this
// node's threads will use are already busy with other work (runnable tasks
// counted in /proc/stat), re-executes this binary with OMP_WAIT_POLICY=passive;
// otherwise keeps libgomp's spinning. Returns only when no re-exec happens.
void choose_openmp_wait(char** argv);

// What was chosen and why, for doctor and bench ("spin: the cores were idle
// at start", "passive: set by OMP_WAIT_POLICY", ...).
std::string openmp_wait_description();

}  // namespace shardlm
