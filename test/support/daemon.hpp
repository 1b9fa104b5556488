// Shared by the tests of daemon children dying with a parent killed by SIGKILL.
#pragma once

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <thread>

namespace coproc_test {

// Forks a subreaper, which forks a parent that runs start_daemon (the daemon's pid once
// its death signal is armed, 0 on failure) and then dies by SIGKILL. True when the
// subreaper, which adopts the orphan, sees the daemon end by SIGKILL within limit.
template <class Start>
bool daemon_dies_with_killed_parent(Start start_daemon, std::chrono::milliseconds limit) {
  int report[2];
  if (::pipe(report) != 0) return false;
  int helper = ::fork();
  if (helper == 0) {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    int ids[2];
    if (::pipe(ids) != 0) ::_exit(2);
    int parent = ::fork();
    if (parent == 0) {
      int pid = start_daemon();
      (void)!::write(ids[1], &pid, sizeof pid);
      ::raise(SIGKILL);
    }
    int daemon_pid = 0;
    if (::read(ids[0], &daemon_pid, sizeof daemon_pid) != sizeof daemon_pid || daemon_pid <= 0)
      ::_exit(3);
    ::waitpid(parent, nullptr, 0);
    auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(daemon_pid, &status, WNOHANG) == daemon_pid) {
        int result = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
        (void)!::write(report[1], &result, sizeof result);
        ::_exit(0);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(daemon_pid, SIGKILL);
    ::waitpid(daemon_pid, nullptr, 0);
    ::_exit(4);
  }
  ::close(report[1]);
  int result = 0;
  bool read_it = ::read(report[0], &result, sizeof result) == sizeof result;
  ::close(report[0]);
  int status = 0;
  ::waitpid(helper, &status, 0);
  return read_it && WIFEXITED(status) && WEXITSTATUS(status) == 0 && result == 1;
}

} // namespace coproc_test
