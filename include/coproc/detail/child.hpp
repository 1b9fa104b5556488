// coproc/detail/child.hpp — one child process that this process owns and must reap.
//
// Shared by coproc::process, coproc::popen and the pool. Waiting is event-driven on the
// awaiting coroutine's executor: a pidfd (Linux 5.3+) whose readiness is only a hint,
// followed by a non-blocking reap; where pidfd_open is refused (ENOSYS, EPERM, seccomp)
// or COPROC_CHILD_WATCH=sigchld is set, SIGCHLD wakes the waiters instead. Nothing ever
// blocks in waitpid, and no handler reaps children that other code owns.
//
// The program may reap a child itself (a waitpid(-1) of its own), and the kernel may then
// give the pid to the program's next child. So a child is named by the process, not its
// pid: a pidfd opened right after fork, held until the reap, reaped through
// waitid(P_PIDFD) and signalled through pidfd_send_signal. Without pidfds, the child's
// /proc/<pid> directory is held instead: lookups under it fail once that process is
// reaped, even if the pid is reused, and the pid is reaped or signalled only after that
// check (a window of two system calls). When the check says someone else reaped it, the
// code is 255 and the pid is never touched again; the runtime's orphan reaper holds the
// same reference. The cost: one descriptor per running child (Go's os.Process does the
// same); waiting dups it, so each waiter has its own.
//
// SIGCHLD is the program's too: while a fallback wait is in progress coproc's handler
// stands in for the program's and calls it, and the last waiter puts the program's
// disposition (handler, flags, mask) back exactly.
//
// fork() copies coproc's mutexes, maybe held by another thread, and not the thread:
// pthread_atfork hooks hold every mutex a child may take (identity, SIGCHLD watch,
// orphan reaper, descriptor-wait registry) across fork and release them on both sides.
#pragma once

#include <coproc/detail/deadline.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace coproc::detail {

// What names one child process itself rather than its pid (see above).
struct process_ref {
  enum kind_t { none, pidfd, proc_dir } kind = none;
  int fd = -1;
};

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
  // -N killed by signal N, 255 if the program reaped it itself.
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
  // nullopt at the deadline (a timer of the awaiting executor, none for never).
  boost::asio::awaitable<std::optional<int>> wait_until(deadline until);
  boost::asio::awaitable<std::optional<int>>
  wait_sigchld(std::optional<boost::asio::steady_timer>& timer);

  int pid_;
  unsigned owner_;
  bool group_;
  mutable std::mutex mutex_;
  std::optional<int> code_;
  process_ref ref_; // closed once reaped, or handed to the reaper
};

// Python's exit code from a wait status.
int decode_wait_status(int status);

// Forks with stdio flushed; in the child, coproc's runtime state is reset. Returns
// fork()'s result; throws std::system_error naming what on failure.
int fork_flushed(const char* what);

// In a fresh child: default signal dispositions, empty signal mask.
void reset_signals();
// The same where the signals not at their default are known (non_default_signal_set(),
// taken in the process the child copies): no look at /proc.
void reset_signals(std::uint64_t non_default);
// The signals of this process not at their default disposition (bit N-1 for signal N);
// every one where /proc cannot tell.
std::uint64_t non_default_signal_set();

// this_process::name(); the pool names its workers with set_process_name.
std::string process_name();
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
// This process's identity.
identity current_identity_of_process();

} // namespace coproc::detail
