#include "launch/subprocess.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "runtime/errors.hpp"

namespace shardlm {

std::atomic<bool> g_interrupted{false};

namespace {

void on_interrupt(int) {
  g_interrupted = true;
}

constexpr size_t kErrKeep = 64 * 1024;

// Ends every process of the group: politely first, so mpirun can stop its
// ranks (which may sit in process groups of their own), then for certain.
void end_group(pid_t pid) {
  kill(-pid, SIGTERM);
  for (int i = 0; i < 30; ++i) {
    siginfo_t info{};
    // WNOWAIT: look without reaping; run_child collects the status later.
    if (waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid)
      break;
    usleep(100000);
  }
  kill(-pid, SIGKILL);
}

}  // namespace

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: poll() returns at once with EINTR
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

ChildResult run_child(const std::vector<std::string>& argv,
                      const std::map<std::string, std::string>& env, double timeout_s) {
  ChildResult r;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC))
    throw DataError(fmt::format("cannot create a pipe: {}", std::strerror(errno)));
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) throw DataError(fmt::format("cannot fork: {}", std::strerror(errno)));
  if (pid == 0) {
    setpgid(0, 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    const std::string msg =
        fmt::format("shardlm: error: cannot run {}: {}\n", argv[0], std::strerror(errno));
    (void)!write(2, msg.data(), msg.size());
    _exit(127);
  }
  setpgid(pid, pid);  // also here: no race with a signal sent before the child's own call
  close(out_pipe[1]);
  close(err_pipe[1]);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[65536];
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  bool ended = false;
  while (open_fds > 0) {
    if (!ended && (g_interrupted || elapsed() > timeout_s)) {
      r.interrupted = g_interrupted;
      r.timed_out = !r.interrupted;
      end_group(pid);
      ended = true;
    }
    const int n = poll(fds, 2, 100);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2 && n > 0; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      std::string& dest = i == 0 ? r.out : r.err;
      dest.append(buf, size_t(got));
      if (i == 1 && dest.size() > 2 * kErrKeep) dest.erase(0, dest.size() - kErrKeep);
    }
  }
  // The pipes closed: every process that held them (the job's ranks
  // included) has exited or was ended above, so this wait is short.
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (r.err.size() > kErrKeep) r.err.erase(0, r.err.size() - kErrKeep);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.seconds = elapsed();
  return r;
}

}  // namespace shardlm
