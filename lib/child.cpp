#include <coproc/detail/child.hpp>
#include <coproc/detail/deadline.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <system_error>
#include <thread>
#include <vector>

namespace coproc::detail {

namespace {

// COPROC_CHILD_WATCH=sigchld forces the SIGCHLD path, so tests cover it on kernels
// that have pidfds.
bool pidfd_allowed() {
  static const bool allowed = [] {
    const char* mode = std::getenv("COPROC_CHILD_WATCH");
    return !(mode && std::strcmp(mode, "sigchld") == 0);
  }();
  return allowed;
}

// A pidfd for a child that has not been reaped yet (so its pid cannot have been reused),
// or -1: then the caller falls back to SIGCHLD. Opened per wait rather than kept per
// child, so a thousand running children cost no descriptors until they are awaited.
int open_pidfd(int pid) {
#ifdef SYS_pidfd_open
  static std::atomic<bool> unsupported{!pidfd_allowed()};
  if (unsupported.load(std::memory_order_relaxed)) return -1;
  for (bool raised = false;; raised = true) {
    // glibc 2.36's pidfd_open() wrapper does not link from C++ (PLATFORM.md).
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (fd >= 0) {
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
      return fd;
    }
    if (errno == ENOSYS || errno == EPERM) unsupported = true; // old kernel, seccomp
    // Many concurrent waits: the soft descriptor limit is raised to the hard one once,
    // as Go's runtime does; past that, this waiter takes the SIGCHLD path.
    if (errno != EMFILE || raised) return -1;
    rlimit limit;
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == limit.rlim_max) return -1;
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
#else
  (void)pid;
  return -1;
#endif
}

// Children whose handles went away while they ran. A thread exists only while there
// are some; it reaps each one when it exits, so no handle ever leaves a zombie.
class reaper {
public:
  static reaper& instance() {
    // Leaked: the thread may still run while static destructors do.
    static reaper* r = new reaper;
    return *r;
  }

  // Called before the child is reaped, so the pidfd names the right process.
  void adopt(int pid) {
    int pidfd = open_pidfd(pid);
    std::lock_guard lock(mutex_);
    orphans_.push_back({pid, pidfd});
    if (!running_) {
      running_ = true;
      std::thread([this] { run(); }).detach();
    }
  }

private:
  struct orphan {
    int pid, pidfd;
  };

  reaper() {
    // fork() copies the mutex, maybe held, and not the thread: the child starts over.
    ::pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                     [] {
                       auto& r = instance();
                       for (auto& o : r.orphans_)
                         if (o.pidfd >= 0) ::close(o.pidfd);
                       r.orphans_.clear();
                       r.running_ = false;
                       r.mutex_.unlock();
                     });
  }

  void run() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      {
        std::lock_guard lock(mutex_);
        std::erase_if(orphans_, [](const orphan& o) {
          int status;
          int r = ::waitpid(o.pid, &status, WNOHANG);
          if (r == 0) return false;
          if (o.pidfd >= 0) ::close(o.pidfd);
          return true;
        });
        if (orphans_.empty()) {
          running_ = false;
          return;
        }
        for (auto& o : orphans_)
          if (o.pidfd >= 0) fds.push_back({o.pidfd, POLLIN, 0});
      }
      // New orphans and those without a pidfd are picked up on the next round.
      ::poll(fds.data(), fds.size(), 100);
    }
  }

  std::mutex mutex_;
  std::vector<orphan> orphans_;
  bool running_ = false;
};

struct runtime_identity {
  std::vector<unsigned> path;
  std::string name = "MainProcess";
  unsigned children = 0;
};

runtime_identity& current_identity() {
  static runtime_identity id;
  return id;
}
std::mutex identity_mutex;

} // namespace

int decode_wait_status(int status) {
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

namespace {
// Counts the forks this process descends through, so a child object knows without a
// getpid() call whether it was inherited by a forked process that does not own it.
std::atomic<unsigned> fork_generation{0};

void install_fork_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    reaper::instance();
    ::pthread_atfork(nullptr, nullptr, [] { fork_generation.fetch_add(1, std::memory_order_relaxed); });
  });
}
} // namespace

child::child(int pid, bool group)
    : pid_(pid), owner_((install_fork_hooks(), fork_generation.load(std::memory_order_relaxed))),
      group_(group) {}

child::~child() {
  if (!owned()) return;
  std::lock_guard lock(mutex_);
  if (!poll_locked()) reaper::instance().adopt(pid_);
}

bool child::owned() const noexcept {
  return owner_ == fork_generation.load(std::memory_order_relaxed);
}

std::optional<int> child::poll() {
  std::lock_guard lock(mutex_);
  return poll_locked();
}

std::optional<int> child::exitcode() const {
  std::lock_guard lock(mutex_);
  return code_;
}

std::optional<int> child::poll_locked() {
  if (code_ || !owned()) return code_;
  int status = 0;
  int r;
  do r = ::waitpid(pid_, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  // ECHILD: someone else reaped our child (a waitpid(-1) elsewhere in the program);
  // its status is lost, so report 255 as shells do for an unknown status.
  code_ = r > 0 ? decode_wait_status(status) : 255;
  return code_;
}

boost::asio::awaitable<int> child::wait() {
  int fd;
  {
    std::lock_guard lock(mutex_);
    if (auto code = poll_locked()) co_return *code;
    if (!owned()) throw std::logic_error("can only wait for a child of this process (pid " +
                                         std::to_string(pid_) + ")");
    fd = open_pidfd(pid_);
  }
  if (fd < 0) co_return co_await wait_sigchld();
  // Each waiter watches its own pidfd, so several coroutines on several io_contexts can
  // wait for one child.
  boost::asio::posix::stream_descriptor pidfd(co_await boost::asio::this_coro::executor, fd);
  for (;;) {
    // Readiness is a hint (a stale edge can arrive after a reap, PLATFORM.md): reap
    // without blocking and wait again if the child still runs.
    if (auto code = poll()) co_return *code;
    co_await pidfd.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                              boost::asio::use_awaitable);
  }
}

boost::asio::awaitable<int> child::wait_sigchld() {
  // The set is registered before the first poll, so a SIGCHLD between the poll and
  // the wait is queued in the set, not lost.
  boost::asio::signal_set sigchld(co_await boost::asio::this_coro::executor, SIGCHLD);
  for (;;) {
    if (auto code = poll()) co_return *code;
    co_await sigchld.async_wait(boost::asio::use_awaitable);
  }
}

boost::asio::awaitable<std::optional<int>> child::wait(std::chrono::steady_clock::duration timeout) {
  using namespace boost::asio::experimental::awaitable_operators;
  if (auto code = poll()) co_return code;
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, deadline::after(timeout).when());
  auto first = co_await (wait() || timer.async_wait(boost::asio::use_awaitable));
  if (first.index() == 0) co_return std::get<0>(first);
  co_return poll();
}

bool child::signal(int sig, bool whole_group) {
  std::lock_guard lock(mutex_);
  if (code_ || !owned()) return false;
  int r = whole_group && group_ ? ::killpg(pid_, sig) : ::kill(pid_, sig);
  if (r != 0 && errno != ESRCH)
    throw std::system_error(errno, std::generic_category(),
                            "coproc: kill(" + std::to_string(pid_) + ", " +
                                std::to_string(sig) + ")");
  return true;
}

void reset_signals() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig)
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

int fork_flushed(const char* what) {
  install_fork_hooks(); // they must exist before the first fork
  std::cout.flush();
  std::cerr.flush();
  std::clog.flush();
  std::fflush(nullptr);
  int pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), what);
  // The child has one thread: no lock, and identity_mutex may have been copied held.
  if (pid == 0) current_identity().children = 0;
  return pid;
}

const std::string& process_name() {
  std::lock_guard lock(identity_mutex);
  return current_identity().name;
}

void set_process_name(std::string name) {
  std::lock_guard lock(identity_mutex);
  current_identity().name = std::move(name);
}

identity next_child_identity(const char* prefix) {
  std::lock_guard lock(identity_mutex);
  auto& self = current_identity();
  identity id{self.path, prefix};
  id.path.push_back(++self.children);
  for (std::size_t i = 0; i < id.path.size(); ++i)
    id.name += (i == 0 ? "-" : ":") + std::to_string(id.path[i]);
  return id;
}

void enter_child(identity id) {
  auto& self = current_identity();
  self.path = std::move(id.path);
  self.name = std::move(id.name);
  self.children = 0;
}

} // namespace coproc::detail
