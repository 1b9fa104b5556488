#include <coproc/detail/child.hpp>
#include <coproc/detail/deadline.hpp>

#include "child_wait.hpp"
#include "os.hpp"

#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace coproc::detail {

namespace {

// Every lazily made object a forked child may touch is made at load time instead: a
// function-local static is built by whichever thread comes first, and a child forked
// while another thread builds it waits on its guard for a thread it does not have.

// COPROC_CHILD_WATCH=sigchld forces the SIGCHLD path, so tests cover it on kernels
// that have pidfds.
const bool pidfd_allowed = [] {
  const char* mode = std::getenv("COPROC_CHILD_WATCH");
  return !(mode && std::strcmp(mode, "sigchld") == 0);
}();
std::atomic<bool> pidfd_unsupported{!pidfd_allowed};
std::atomic<bool> no_p_pidfd{false}; // Linux 5.3 has pidfds, 5.4 waitid(P_PIDFD)

// Runs open until it gives a descriptor; on EMFILE the soft descriptor limit is raised to
// the hard one once, as Go's runtime does. -1 if that does not help.
template <class Open> int open_with_room(Open open) {
  for (bool raised = false;; raised = true) {
    int fd = open();
    if (fd >= 0 || errno != EMFILE || raised) return fd;
    rlimit limit;
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == limit.rlim_max) return -1;
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// A pidfd for a child that has not been reaped yet (so its pid cannot have been reused),
// or -1 where pidfds are refused.
int open_pidfd(int pid) {
#ifdef SYS_pidfd_open
  if (pidfd_unsupported.load(std::memory_order_relaxed)) return -1;
  // glibc 2.36's pidfd_open() wrapper does not link from C++ (docs/platform.md).
  // A pidfd is always close-on-exec.
  int fd = open_with_room([pid] { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); });
  if (errno == ENOSYS || errno == EPERM) pidfd_unsupported = true; // old kernel, seccomp
  return fd;
#else
  (void)pid;
  return -1;
#endif
}

// /proc/<pid> of an unreaped child, as a descriptor: once the process is reaped, lookups
// under it fail even if the pid is reused. -1 when /proc is not this pid namespace's.
int open_proc_dir(int pid) {
  char self[32] = {};
  if (::readlink("/proc/self", self, sizeof self - 1) <= 0 || std::atoi(self) != ::getpid())
    return -1;
  auto path = "/proc/" + std::to_string(pid);
  return open_with_room([&] { return ::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC); });
}

bool is_pidfd(const process_ref& ref) { return ref.kind == process_ref::pidfd; }

// Whether the process ref names has not been reaped yet (a zombie counts).
bool unreaped(const process_ref& ref) {
  switch (ref.kind) {
  case process_ref::pidfd:
    return ::syscall(SYS_pidfd_send_signal, ref.fd, 0, nullptr, 0) == 0 || errno != ESRCH;
  case process_ref::proc_dir:
    return ::faccessat(ref.fd, "stat", F_OK, 0) == 0 || (errno != ENOENT && errno != ESRCH);
  case process_ref::none:
    break;
  }
  return true;
}

// Reaps the child if it has exited and is still the process ref names, never blocks.
// 255 when someone else reaped it (a waitpid(-1) elsewhere in the program): its status
// is lost, as shells report an unknown status, and its pid is no longer ours to touch.
std::optional<int> reap(int pid, const process_ref& ref) {
  int r;
  if (is_pidfd(ref) && !no_p_pidfd.load(std::memory_order_relaxed)) {
    siginfo_t info{};
    do
      r = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(ref.fd), &info,
                   WEXITED | WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
      if (info.si_pid == 0) return std::nullopt;
      return info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    }
    if (errno != EINVAL) return 255;
    no_p_pidfd = true;
  }
  // Without waitid(P_PIDFD) the last step is by pid: the check that the pid is still
  // ours and the reap are two calls, so the program would have to reap our child and
  // fork a new one into its pid in between.
  if (!unreaped(ref)) return 255;
  int status = 0;
  do r = ::waitpid(pid, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  return r > 0 ? decode_wait_status(status) : 255;
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

  // Takes over ref, held since the child was forked, so it names the right process.
  void adopt(int pid, process_ref ref) {
    std::lock_guard lock(mutex_);
    orphans_.push_back({pid, ref});
    if (!running_) {
      running_ = true;
      without_signals([this] {
        std::thread([this] {
          ::pthread_setname_np(::pthread_self(), "coproc-reaper");
          run();
        }).detach();
      });
    }
  }

  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  // The child has none of the parent's threads and owns none of its children.
  void after_fork_in_child() {
    for (auto& o : orphans_)
      if (o.ref.fd >= 0) ::close(o.ref.fd);
    orphans_.clear();
    running_ = false;
    mutex_.unlock();
  }

private:
  struct orphan {
    int pid;
    process_ref ref;
  };

  void run() {
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      {
        std::lock_guard lock(mutex_);
        std::erase_if(orphans_, [](const orphan& o) {
          if (!reap(o.pid, o.ref)) return false;
          if (o.ref.fd >= 0) ::close(o.ref.fd);
          return true;
        });
        if (orphans_.empty()) {
          running_ = false;
          return;
        }
        for (auto& o : orphans_)
          if (is_pidfd(o.ref)) fds.push_back({o.ref.fd, POLLIN, 0});
      }
      // New orphans and those without a pidfd are picked up on the next round.
      ::poll(fds.data(), fds.size(), 100);
    }
  }

  std::mutex mutex_;
  std::vector<orphan> orphans_;
  bool running_ = false;
};

// SIGCHLD, shared with the program, for waits without a pidfd. While coproc waits, its
// handler stands in for the program's: it wakes the waiters, then calls the program's
// handler; after the last waiter the program's disposition is put back as it was (Asio's
// signal_set would leave SIG_DFL). The handler only writes a byte to a pipe; a thread
// turns the bytes into wake-ups on each waiter's executor. The pipe and the thread live
// from the first waiter to the last, so an idle program holds neither.
class sigchld_watch {
public:
  static sigchld_watch& instance() {
    static sigchld_watch* w = new sigchld_watch; // leaked, as the reaper
    return *w;
  }

  // Registered before the waiter's first look at the child, so no SIGCHLD after it is lost.
  class waiter {
  public:
    explicit waiter(const boost::asio::any_io_executor& ex) : wake_(ex, 1) { instance().add(this); }
    waiter(const waiter&) = delete;
    waiter& operator=(const waiter&) = delete;
    ~waiter() { instance().remove(this); }

    // Completes after a SIGCHLD since the last call (or since registration).
    boost::asio::awaitable<void> next() {
      auto op = wake_.async_receive(boost::asio::use_awaitable);
      co_await std::move(op);
    }
    auto next_op() { return wake_.async_receive(boost::asio::deferred); }

  private:
    friend class sigchld_watch;
    boost::asio::experimental::concurrent_channel<void(boost::system::error_code)> wake_;
  };

  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  // The child has no waiter and not the thread: the program's disposition, no pipe.
  void after_fork_in_child() {
    if (!waiters_.empty()) {
      restore_program_handler();
      wake_fd.store(-1);
      ::close(std::exchange(write_fd_, -1));
      ::close(std::exchange(read_fd_, -1));
    }
    waiters_.clear();
    mutex_.unlock();
  }

private:
  void add(waiter* w) {
    std::lock_guard lock(mutex_);
    if (waiters_.empty()) start();
    waiters_.push_back(w);
  }

  void remove(waiter* w) {
    int write_fd;
    pthread_t thread;
    {
      std::lock_guard lock(mutex_);
      std::erase(waiters_, w);
      if (!waiters_.empty()) return;
      restore_program_handler();
      // A handler already running may still be about to write: wait until it has.
      wake_fd.store(-1);
      while (writing.load() != 0) std::this_thread::yield();
      write_fd = std::exchange(write_fd_, -1);
      read_fd_ = -1; // the thread's now
      thread = thread_;
    }
    ::close(write_fd); // the thread reads end of file, closes its end and returns
    ::pthread_join(thread, nullptr);
  }

  void start() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      throw std::system_error(errno, std::generic_category(), "coproc: pipe2 for SIGCHLD");
    ::fcntl(fds[1], F_SETFL, O_NONBLOCK); // never blocks the handler
    auto* read_fd = reinterpret_cast<void*>(static_cast<std::intptr_t>(fds[0]));
    if (int e =
            without_signals([&] { return ::pthread_create(&thread_, nullptr, run, read_fd); })) {
      ::close(fds[0]);
      ::close(fds[1]);
      throw std::system_error(e, std::generic_category(), "coproc: pthread_create for SIGCHLD");
    }
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    wake_fd.store(fds[1]);
    // program_action is only written while coproc's handler is not installed.
    ::sigaction(SIGCHLD, nullptr, &program_action);
    struct sigaction mine {};
    mine.sa_sigaction = on_sigchld;
    mine.sa_mask = program_action.sa_mask;
    // The program's choices where it has a handler; otherwise no EINTR, exits only.
    mine.sa_flags =
        SA_SIGINFO |
        (chains() ? program_action.sa_flags & (SA_RESTART | SA_NOCLDSTOP | SA_ONSTACK | SA_NODEFER)
                  : SA_RESTART | SA_NOCLDSTOP);
    ::sigaction(SIGCHLD, &mine, nullptr); // cannot fail for SIGCHLD with a valid action
  }

  // Unless the program replaced coproc's handler meanwhile: then its own choice stands.
  static void restore_program_handler() {
    struct sigaction now {};
    ::sigaction(SIGCHLD, nullptr, &now);
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigchld)
      ::sigaction(SIGCHLD, &program_action, nullptr);
  }

  static bool chains() {
    return program_action.sa_handler != SIG_DFL && program_action.sa_handler != SIG_IGN;
  }

  static void on_sigchld(int sig, siginfo_t* info, void* context) {
    int saved = errno;
    writing.fetch_add(1);
    int fd = wake_fd.load();
    if (fd >= 0) (void)!::write(fd, "", 1);
    writing.fetch_sub(1);
    errno = saved;
    if (!chains()) return;
    if (program_action.sa_flags & SA_SIGINFO) program_action.sa_sigaction(sig, info, context);
    else program_action.sa_handler(sig);
  }

  static void* run(void* arg) {
    int fd = static_cast<int>(reinterpret_cast<std::intptr_t>(arg));
    ::pthread_setname_np(::pthread_self(), "coproc-sigchld");
    char bytes[64];
    for (;;) {
      ssize_t n = ::read(fd, bytes, sizeof bytes);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      auto& self = instance();
      std::lock_guard lock(self.mutex_);
      for (auto* w : self.waiters_) w->wake_.try_send(boost::system::error_code{});
    }
    ::close(fd);
    return nullptr;
  }

  static inline struct sigaction program_action {};
  static inline std::atomic<int> wake_fd{-1};
  static inline std::atomic<int> writing{0};
  std::mutex mutex_;
  std::vector<waiter*> waiters_;
  int read_fd_ = -1, write_fd_ = -1;
  pthread_t thread_{};
};

// The signals (bit N-1 for signal N) this process ignores or catches, from the sigignore
// and sigcatch fields of /proc/self/stat (3 system calls where asking each signal is 62);
// nullopt where /proc cannot tell. Async-signal-safe: a forked child calls it.
std::optional<std::uint64_t> non_default_signals() {
  // On the stack: a forked child's first read of a read-only data page is a page fault.
  char path[] = "/proc/self/stat";
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char text[2048];
  std::size_t size = 0;
  for (;;) {
    ssize_t n = ::read(fd, text + size, sizeof text - 1 - size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size += static_cast<std::size_t>(n);
    if (text[size - 1] == '\n') break; // the whole line: no read for the end of file
  }
  ::close(fd);
  text[size] = '\0';
  // "pid (comm) state ...": comm may hold spaces and parentheses, the fields after the
  // last ')' do not. sigignore is field 33, sigcatch 34.
  // (A loop, not memrchr: a function only children call costs each one a lazy binding.)
  const char* p = text + size;
  while (p != text && p[-1] != ')') --p;
  if (p == text) return std::nullopt;
  std::uint64_t set = 0;
  for (int field = 3; field <= 34; ++field) {
    if (*p != ' ') return std::nullopt;
    ++p;
    if (field < 33) {
      while (*p && *p != ' ') ++p;
      continue;
    }
    if (*p < '0' || *p > '9') return std::nullopt;
    std::uint64_t value = 0;
    while (*p >= '0' && *p <= '9') value = value * 10 + static_cast<std::uint64_t>(*p++ - '0');
    set |= value;
  }
  return set;
}

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

// Counts the forks this process descends through, so a child object knows without a
// getpid() call whether it was inherited by a forked process that does not own it.
std::atomic<unsigned> fork_generation{0};

// fork() copies each mutex, maybe held by another thread, and not that thread: every
// mutex a forked child may take is held across fork and released on both sides.
void install_fork_hooks() {
  static std::once_flag once;
  std::call_once(once, [] {
    // A forked child's first call of a function through the PLT resolves it (a symbol
    // lookup in every loaded object, page faults on their tables), and a child starts
    // with the parent's table each time: what only children call (reset_signals) is
    // resolved here, once, by calls that change nothing.
    sigset_t unchanged;
    sigemptyset(&unchanged);
    ::sigprocmask(SIG_BLOCK, nullptr, &unchanged);
    struct sigaction current {};
    ::sigaction(SIGCHLD, nullptr, &current);
    (void)non_default_signals(); // open, read, close
    reaper::instance();
    sigchld_watch::instance();
    current_identity();
    ::pthread_atfork(
        [] {
          identity_mutex.lock();
          sigchld_watch::instance().before_fork();
          reaper::instance().before_fork();
        },
        [] {
          reaper::instance().after_fork_in_parent();
          sigchld_watch::instance().after_fork_in_parent();
          identity_mutex.unlock();
        },
        [] {
          fork_generation.fetch_add(1, std::memory_order_relaxed);
          reaper::instance().after_fork_in_child();
          sigchld_watch::instance().after_fork_in_child();
          current_identity().children = 0;
          identity_mutex.unlock();
        });
  });
}
// At load time, so a program's own fork() is covered before coproc forks anything.
[[maybe_unused]] const bool fork_hooks_installed = (install_fork_hooks(), true);

process_ref open_process_ref(int pid) {
  install_fork_hooks();
  if (int fd = open_pidfd(pid); fd >= 0) return {process_ref::pidfd, fd};
  if (int fd = open_proc_dir(pid); fd >= 0) return {process_ref::proc_dir, fd};
  return {};
}

} // namespace

int decode_wait_status(int status) {
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return WEXITSTATUS(status);
}

child::child(int pid, bool group)
    : pid_(pid), owner_(fork_generation.load(std::memory_order_relaxed)), group_(group),
      ref_(open_process_ref(pid)) {}

child::~child() {
  // An inherited copy: another process owns the child; and its mutex may be held.
  if (!owned()) {
    if (ref_.fd >= 0) ::close(ref_.fd);
    return;
  }
  std::lock_guard lock(mutex_);
  if (!poll_locked()) reaper::instance().adopt(pid_, std::exchange(ref_, {}));
}

bool child::owned() const noexcept {
  return owner_ == fork_generation.load(std::memory_order_relaxed);
}

// An inherited copy answers without the lock, which fork may have copied held; only the
// forking thread was copied, so nothing writes code_ there.
std::optional<int> child::poll() {
  if (!owned()) return code_;
  std::lock_guard lock(mutex_);
  return poll_locked();
}

std::optional<int> child::exitcode() const {
  if (!owned()) return code_;
  std::lock_guard lock(mutex_);
  return code_;
}

std::optional<int> child::poll_locked() {
  if (code_ || !owned()) return code_;
  code_ = reap(pid_, ref_);
  if (code_ && ref_.fd >= 0) ::close(std::exchange(ref_.fd, -1));
  return code_;
}

boost::asio::awaitable<int> child::wait() {
  auto wait = wait_until(deadline::never());
  auto code = co_await std::move(wait);
  co_return *code;
}

boost::asio::awaitable<std::optional<int>>
child::wait(std::chrono::steady_clock::duration timeout) {
  if (auto code = poll()) co_return code;
  auto wait = wait_until(deadline::after(timeout));
  co_return co_await std::move(wait);
}

boost::asio::awaitable<std::optional<int>> child::wait_until(deadline until) {
  if (!owned())
    throw std::logic_error("can only wait for a child of this process (pid " +
                           std::to_string(pid_) + ")");
  int fd = -1;
  std::optional<int> code;
  {
    std::lock_guard lock(mutex_);
    // The code if it is known; the look at the child is the loop's below (one waitid per
    // wait saved: a child just started has hardly ever exited yet).
    code = code_;
    // Each waiter watches its own duplicate, so several coroutines on several io_contexts
    // (or threads of one) can wait for one child.
    if (!code && is_pidfd(ref_))
      fd = open_with_room([this] { return ::fcntl(ref_.fd, F_DUPFD_CLOEXEC, 0); });
  }
  if (code) co_return code;
  auto ex = co_await boost::asio::this_coro::executor;
  std::optional<boost::asio::steady_timer> timer;
  if (!until.is_never()) timer.emplace(ex, until.when());
  if (fd < 0) co_return co_await wait_sigchld(timer);
  auto state = co_await boost::asio::this_coro::cancellation_state;
  // Registered (EPOLL_CTL_ADD) before the first look below, and every wait re-arms it
  // (EPOLL_CTL_MOD, which reports a pidfd that is already readable): an exit between a
  // look and the next wait is not lost, whichever thread of the io_context takes it. The
  // look comes first: children that have exited are reaped at once, their descriptors
  // closed (1000 concurrent joins would otherwise hold 2000 until their wake-ups).
  boost::asio::posix::stream_descriptor pidfd(ex, fd);
  for (;;) {
    // Readiness is a hint (a stale edge can arrive after a reap, docs/platform.md): reap
    // without blocking and wait again if the child still runs.
    if (auto code = poll()) co_return code;
    if (!timer) {
      co_await pidfd.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                                boost::asio::use_awaitable);
      continue;
    }
    auto woken = event_or_timer(
        pidfd.async_wait(boost::asio::posix::stream_descriptor::wait_read, boost::asio::deferred),
        *timer);
    bool event = co_await std::move(woken);
    throw_if_cancelled(state);
    if (!event) co_return poll();
  }
}

boost::asio::awaitable<std::optional<int>>
child::wait_sigchld(std::optional<boost::asio::steady_timer>& timer) {
  auto state = co_await boost::asio::this_coro::cancellation_state;
  sigchld_watch::waiter sigchld(co_await boost::asio::this_coro::executor);
  for (;;) {
    if (auto code = poll()) co_return code;
    if (!timer) {
      co_await sigchld.next();
      continue;
    }
    auto woken = event_or_timer(sigchld.next_op(), *timer);
    bool event = co_await std::move(woken);
    throw_if_cancelled(state);
    if (!event) co_return poll();
  }
}

bool child::signal(int sig, bool whole_group) {
  if (!owned()) return false;
  std::lock_guard lock(mutex_);
  // Reaped elsewhere in the program: the pid may be someone else's by now.
  if (code_ || !unreaped(ref_)) return false;
  int r;
  if (whole_group && group_) r = ::killpg(pid_, sig);
  else if (is_pidfd(ref_))
    r = static_cast<int>(::syscall(SYS_pidfd_send_signal, ref_.fd, sig, nullptr, 0));
  else r = ::kill(pid_, sig);
  if (r != 0 && errno != ESRCH)
    throw std::system_error(errno, std::generic_category(),
                            "coproc: kill(" + std::to_string(pid_) + ", " + std::to_string(sig) +
                                ")");
  return true;
}

void reset_signals() { reset_signals(non_default_signal_set()); }

void reset_signals(std::uint64_t non_default) {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  // Only the signals that are not at their default: a program has a handful, and one
  // rt_sigaction per signal was most of a forked child's own work.
  for (int sig = 1; sig < NSIG && sig <= 64; ++sig)
    if ((non_default >> (sig - 1) & 1) && sig != SIGKILL && sig != SIGSTOP)
      ::sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

std::uint64_t non_default_signal_set() { return non_default_signals().value_or(~std::uint64_t{0}); }

int fork_flushed(const char* what) {
  install_fork_hooks(); // they must exist before the first fork
  flush_stdio();
  int pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), what);
  return pid;
}

std::string process_name() {
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
  std::lock_guard lock(identity_mutex);
  auto& self = current_identity();
  self.path = std::move(id.path);
  self.name = std::move(id.name);
  self.children = 0;
}

identity current_identity_of_process() {
  std::lock_guard lock(identity_mutex);
  auto& self = current_identity();
  return {self.path, self.name};
}

} // namespace coproc::detail
