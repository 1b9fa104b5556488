// coproc/detail/child.hpp — one child process that this process owns and must reap.
//
// Shared by coproc::process, coproc::popen and the pool. Waiting is event-driven on the
// awaiting coroutine's executor: a pidfd (Linux 5.3+) whose readiness is only a hint,
// followed by a non-blocking reap; where pidfd_open is refused (ENOSYS, EPERM, seccomp)
// or COPROC_CHILD_WATCH=sigchld is set, SIGCHLD wakes the waiters instead and each reaps
// only its own pid with waitpid(pid, WNOHANG). Nothing ever blocks in waitpid, and no
// handler reaps children that other code owns.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace coproc::detail {

class child {
public:
  // Takes ownership of a freshly forked or spawned pid. group: the child leads its own
  // process group (setsid/setpgid), so signal() may reach the whole group.
  explicit child(int pid, bool group = false);
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  // Still running: handed to the runtime's reaper, which reaps it when it exits.
  ~child();

  int pid() const noexcept { return pid_; }

  // Reaps if the child has exited, never blocks. Python's convention: >= 0 exit status,
  // -N killed by signal N.
  std::optional<int> poll();
  // The exit code once known, without reaping.
  std::optional<int> exitcode() const;

  boost::asio::awaitable<int> wait();
  // nullopt when the deadline passes first; the child is left alone.
  boost::asio::awaitable<std::optional<int>> wait(std::chrono::steady_clock::duration timeout);

  // Sends sig to the child (or its whole group) unless it has been reaped: a reaped pid
  // may belong to someone else by now. Returns false if it was already reaped.
  bool signal(int sig, bool whole_group = false);

  // Whether this process still owns the child (false in a forked grandchild that
  // inherited the object).
  bool owned() const noexcept;

private:
  std::optional<int> poll_locked();
  boost::asio::awaitable<int> wait_sigchld();

  int pid_;
  unsigned owner_;
  bool group_;
  mutable std::mutex mutex_;
  std::optional<int> code_;
};

// Python's exit code from a wait status.
int decode_wait_status(int status);

// Forks with stdio flushed; in the child, coproc's runtime state is reset. Returns
// fork()'s result; throws std::system_error naming what on failure.
int fork_flushed(const char* what);

// In a fresh child: default signal dispositions, empty signal mask.
void reset_signals();

// this_process::name(); the pool names its workers with set_process_name.
const std::string& process_name();
void set_process_name(std::string name);

// Names as in Python: "Process-1" is the parent's first child, "Process-1:2" the second
// child of that one.
struct identity {
  std::vector<unsigned> path;
  std::string name;
};
// The identity of the next child of this process, named prefix-path.
identity next_child_identity(const char* prefix);
// In the child: take this identity (this_process::name() then returns its name).
void enter_child(identity id);

} // namespace coproc::detail
