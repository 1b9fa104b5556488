// start_method::forkserver (lib/forkserver.hpp): a small single-threaded server forks
// each child, so a child costs the fork of a small process, whatever the size or the
// threads of the process that asks for it.
//
// The server is a fresh image (image_kind::forkserver, lib/fresh_image.cpp) that its
// requester, the process that started it, spawns on first use or at forkserver_preload().
// They talk over a SOCK_SEQPACKET socketpair the server inherits at descriptor 4, nothing
// named. Every exchange is the requester's: one request, one reply, under the link's
// mutex, so threads of the requester take turns and the server never speaks unasked.
//   start: 0-2 of the requester (those open) and the kind's own descriptors ride along
//          (SCM_RIGHTS), the payload in the request itself (a memfd beside them when it is
//          large); the server forks, and the child puts them at 0-2, (3) and 4.. as a
//          fresh image finds them and enters as one does (enter_served_image). The reply:
//          the pid, and the read end of the child's status pipe. The server reaps its
//          children (SIGCHLD on a signalfd) and writes each wait status into that pipe
//          before it closes its end: the requester waits for the pipe to be readable and
//          reads the status, with no question to ask; end of file without one is a status
//          lost with the server. A handle that goes away just closes its end.
//   signal: the server signals its child unless it reaped it: until then the pid is its
//          child's, whatever the requester's own children do with pids.
// On end of file (the requester exited or was killed, even by SIGKILL) the server
// SIGKILLs the requester's daemon children that still run and exits; the plain ones run
// on, reparented. The requester reaps the server, its own child (detail::child, then the
// orphan reaper). The server does not die with its requester through PR_SET_PDEATHSIG:
// that signal follows the thread that started the server, which may end long before the
// process does. Its daemon children do die with the server that way (it is one thread).
#include "forkserver.hpp"

#include <coproc/start_method.hpp>

#include "child_wait.hpp"
#include "os.hpp"
#include "sync_block.hpp"

#include <boost/asio/deferred.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/single_threaded.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace coproc::detail {

namespace {

enum class op : std::uint8_t { start = 1, signal = 2 };

struct request {
  op what = op::start;
  image_kind kind = image_kind::process; // start
  std::uint8_t daemon = 0;               // start: SIGKILLed when the requester is gone
  std::uint8_t stdio = 0;                // start: bit i set: descriptor i rides along
  std::uint8_t extra = 0;                // start: the kind's own descriptors after the payload
  std::uint8_t pad[3] = {};              // no uninitialized bytes on the wire
  std::int32_t pid = 0;                  // signal
  std::uint32_t payload = 0; // start: the payload's bytes follow; 0: a memfd rides along;
                             // signal: the signal
};

// gone: signal found the child reaped, its status in its pipe.
enum class state : std::uint8_t { running = 0, gone = 1, failed = 2 };

struct reply {
  state what = state::failed;
  std::uint8_t pad[3] = {};
  std::int32_t pid = 0;   // start
  std::int32_t value = 0; // failed: an errno
};

// More than a start ever carries (3 + 1 + the kind's own), fewer than SCM_MAX_FD.
constexpr std::size_t max_fds = 64;
// A payload up to this size travels in the start request itself, a larger one in a memfd:
// a memfd's creation, write and read cost more than the fork of a small process.
constexpr std::size_t max_inline_payload = 32 * 1024;

// 0 or an errno. MSG_NOSIGNAL: a dead peer is an error, not a SIGPIPE. `tail` follows data
// in the same message.
int send_with_fds(int fd, const void* data, std::size_t size, std::span<const int> fds,
                  std::string_view tail = {}) {
  iovec iov[2] = {{const_cast<void*>(data), size}, {const_cast<char*>(tail.data()), tail.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = tail.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno;
  return static_cast<std::size_t>(n) == size + tail.size() ? 0 : EPROTO;
}

// The bytes received (0 at end of file), or -errno; the descriptors that came with them
// are appended to fds, close-on-exec. Bytes past `size` go to `tail` (its size).
ssize_t recv_with_fds(int fd, void* data, std::size_t size, std::vector<int>& fds,
                      std::span<char> tail = {}) {
  iovec iov[2] = {{data, size}, {tail.data(), tail.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = tail.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int got;
      std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
      fds.push_back(got);
    }
  }
  // A message cut short (more than it should carry) is not believed.
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return -EPROTO;
  return n;
}

void close_all(std::vector<int>& fds) noexcept {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

// ---- the server ----------------------------------------------------------------------

// The server's fork. The atfork handlers keep locks other threads hold from being copied
// held, and reset what the parent's child objects, reaper and SIGCHLD watch left: a server
// that never made a thread holds no lock another thread could, and has none of that
// state (it serves from main_guard on), while the handlers' page faults, in it and in
// each child, were a tenth of a child's cost. Sanitizers see only fork().
int fork_without_hooks() {
  constexpr bool sanitized = address_sanitized || thread_sanitized;
  return !sanitized && __libc_single_threaded ? ::_Fork() : ::fork();
}

class fork_server {
public:
  explicit fork_server(int fd) : fd_(fd), self_(::getpid()) {}

  [[noreturn]] void run() {
    setup();
    for (;;) {
      pollfd fds[2] = {{fd_, POLLIN, 0}, {signals_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        ::_exit(71);
      }
      if (fds[1].revents) reap_all();
      if (fds[0].revents) serve_one();
    }
  }

private:
  struct served {
    bool daemon = false;
    int status_fd = -1; // the write end of its status pipe
  };

  void setup() {
    // A terminal's Ctrl-C goes to the whole foreground group: the requester decides.
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    ::sigaction(SIGINT, &ignore, nullptr);
    // A requester that let a handle go closed the read end: the status is just not wanted.
    ::sigaction(SIGPIPE, &ignore, nullptr);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ::sigprocmask(SIG_BLOCK, &chld, nullptr);
    signals_ = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signals_ < 0) ::_exit(71);
    ::fcntl(fd_, F_SETFD, FD_CLOEXEC);
    // The requester's 0-2 as they were when it started the server are not held: each child
    // gets the requester's of its start, and a pipe the requester had as its stdout then
    // must see its end of file.
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) ::_exit(71);
    for (int i = 0; i < 3; ++i)
      if (i != null) ::dup2(null, i);
    if (null > 2) ::close(null);
    // Every child resets the same (SIGINT and SIGPIPE among them): what a look at /proc
    // costs is paid once.
    non_default_ = non_default_signal_set();
  }

  void reap_all() {
    signalfd_siginfo info;
    while (::read(signals_, &info, sizeof info) > 0) {
    }
    for (;;) {
      int status = 0;
      int pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      record(pid, status);
    }
  }

  void record(int pid, int status) {
    auto it = children_.find(pid);
    if (it == children_.end()) return;
    if (int fd = it->second.status_fd; fd >= 0) {
      // The pipe is empty before this write, and a write of 4 bytes is all or nothing.
      ssize_t n;
      do n = ::write(fd, &status, sizeof status);
      while (n < 0 && errno == EINTR);
      ::close(fd);
    }
    children_.erase(it);
  }

  void serve_one() {
    request r{};
    std::vector<int> fds;
    payload_.resize(max_inline_payload);
    ssize_t n = recv_with_fds(fd_, &r, sizeof r, fds, payload_);
    if (n == -EAGAIN) return;
    if (n < static_cast<ssize_t>(sizeof r) ||
        static_cast<std::size_t>(n) - sizeof r != (r.what == op::start ? r.payload : 0)) {
      // End of file, or a message that is not a request: the requester is gone (or is not
      // coproc's), and nothing more from it is believed.
      close_all(fds);
      requester_gone();
    }
    switch (r.what) {
    case op::start:
      return start(r, fds);
    case op::signal:
      close_all(fds);
      return signal(r.pid, static_cast<int>(r.payload));
    }
    close_all(fds);
    requester_gone();
  }

  void answer(const reply& rep, int fd = -1) {
    int err = fd >= 0 ? send_with_fds(fd_, &rep, sizeof rep, std::span<const int>(&fd, 1))
                      : send_with_fds(fd_, &rep, sizeof rep, {});
    if (err != 0) requester_gone();
  }

  void start(const request& r, std::vector<int>& fds) {
    std::size_t expected =
        static_cast<std::size_t>(std::popcount(r.stdio & 7u)) + (r.payload == 0 ? 1 : 0) + r.extra;
    bool kind_ok = r.kind == image_kind::process || r.kind == image_kind::pool_worker;
    if (fds.size() != expected || !kind_ok) {
      close_all(fds);
      return answer({.what = state::failed, .value = EPROTO});
    }
    int pid = fork_without_hooks();
    if (pid == 0) become_child(r, fds);
    int err = errno;
    close_all(fds);
    if (pid < 0) return answer({.what = state::failed, .value = err});
    // After the fork: no child holds a status pipe but the server.
    int status[2];
    if (::pipe2(status, O_CLOEXEC | O_NONBLOCK) != 0) {
      err = errno;
      ::kill(pid, SIGKILL);
      children_[pid] = {false, -1}; // reaped, its status goes nowhere
      return answer({.what = state::failed, .value = err});
    }
    children_[pid] = {r.daemon != 0, status[1]};
    answer({.what = state::running, .pid = pid}, status[0]);
    ::close(status[0]);
  }

  // In the child: the descriptors where a fresh image has them, then the image's entry.
  [[noreturn]] void become_child(const request& r, const std::vector<int>& fds) {
    int top = fresh_image_first_fd + r.extra;
    // Every source above every target, so no dup2 overwrites a source it has yet to copy:
    // they usually are already (received after the server's own), which saves a copy each.
    std::vector<int> moved(fds.begin(), fds.end());
    if (std::any_of(fds.begin(), fds.end(), [top](int fd) { return fd < top; }))
      for (int& fd : moved)
        if ((fd = ::fcntl(fd, F_DUPFD, top)) < 0) ::_exit(71);
    std::size_t next = 0;
    for (int i = 0; i < 3; ++i) {
      if (r.stdio & (1u << i)) {
        if (::dup2(moved[next++], i) < 0) ::_exit(71);
      } else {
        ::close(i);
      }
    }
    // The payload at 3 when it came as a memfd, the kind's own from 4.
    if (r.payload != 0) ::close(3);
    for (int target = r.payload != 0 ? 4 : 3; target < top; ++target)
      if (::dup2(moved[next++], target) < 0) ::_exit(71);
    // The copies, the server's socket and signalfd: nothing of the server stays.
    ::close_range(static_cast<unsigned>(top), ~0u, 0);
    forget_self_identity(); // the one cached state a hook resets that a server may hold
    reset_signals(non_default_);
    if (r.payload == 0) enter_served_image(r.kind, self_);
    std::string payload(payload_.data(), r.payload);
    enter_served_image(r.kind, self_, &payload);
  }

  // Unreaped children are still this server's, so their pids are theirs to signal.
  void signal(int pid, int sig) {
    if (children_.find(pid) == children_.end()) return answer({.what = state::gone, .pid = pid});
    if (::kill(pid, sig) != 0) return answer({.what = state::failed, .pid = pid, .value = errno});
    answer({.what = state::running, .pid = pid});
  }

  [[noreturn]] void requester_gone() {
    for (auto& [pid, c] : children_)
      if (c.daemon) ::kill(pid, SIGKILL);
    ::_exit(0);
  }

  const int fd_;
  const int self_;
  int signals_ = -1;
  std::uint64_t non_default_ = 0; // signals not at their default, SIGINT among them
  std::map<int, served> children_;
  std::vector<char> payload_; // of the request being served
};

// ---- the requester's side ------------------------------------------------------------

std::string server_is(int pid) { return "the fork server (pid " + std::to_string(pid) + ")"; }

// fd, moved above 2 if it took the number of a closed 0-2 (which would then ride along as
// the child's stdin, stdout or stderr).
int above_stdio(int fd, const std::string& who) {
  if (fd > 2) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int err = errno;
  ::close(fd);
  if (moved < 0) throw_errno(err, who + ": dup of a fresh image's payload");
  return moved;
}

class server_link {
public:
  struct started {
    int pid;
    int status_fd;
    unsigned epoch;
  };

  void preload(const std::string& who) {
    auto id = current_identity_of_process(); // before the lock: see before_fork
    std::unique_ptr<direct_child> stale;
    std::lock_guard lock(mutex_);
    ensure_locked(who, id, stale);
  }

  started start(const fresh_image_spec& spec, std::span<const int> fds, const std::string& who) {
    if (fds.size() + 4 > max_fds)
      throw std::invalid_argument(who + ": too many descriptors for the fork server");
    auto id = current_identity_of_process();
    std::unique_ptr<direct_child> stale; // destroyed after the lock is released
    std::lock_guard lock(mutex_);
    ensure_locked(who, id, stale);
    request r{.what = op::start,
              .kind = spec.kind,
              .daemon = spec.dies_with_parent,
              .stdio = 7,
              .extra = static_cast<std::uint8_t>(fds.size())};
    std::string payload = fresh_image_payload_bytes(spec);
    int memfd = -1;
    if (payload.size() <= max_inline_payload)
      r.payload = static_cast<std::uint32_t>(payload.size());
    else memfd = above_stdio(fresh_image_payload(spec, who), who);
    std::vector<int> sent{0, 1, 2};
    if (memfd >= 0) sent.push_back(memfd);
    sent.insert(sent.end(), fds.begin(), fds.end());
    std::string_view inline_payload(payload.data(), r.payload);
    int err = send_with_fds(fd_, &r, sizeof r, sent, inline_payload);
    if (err == EBADF) {
      // Some of 0-2 are closed (sending all is one look instead of three): only the open
      // ones ride along. A failed send sent nothing.
      r.stdio = 0;
      sent.erase(sent.begin(), sent.begin() + 3);
      for (int i = 2; i >= 0; --i)
        if (::fcntl(i, F_GETFD) >= 0) {
          r.stdio = static_cast<std::uint8_t>(r.stdio | (1u << i));
          sent.insert(sent.begin(), i);
        }
      err = send_with_fds(fd_, &r, sizeof r, sent, inline_payload);
    }
    std::vector<int> got;
    reply rep;
    int server = server_pid_;
    err = receive_locked(err, rep, got, stale);
    if (memfd >= 0) ::close(memfd);
    if (err != 0)
      throw std::system_error(err, std::generic_category(),
                              who + ": " + server_is(server) + " died");
    if (rep.what == state::failed) {
      close_all(got);
      throw std::system_error(rep.value, std::generic_category(),
                              who + ": " + server_is(server) + " could not fork the child");
    }
    if (rep.what != state::running || got.size() != 1 || rep.pid <= 0) {
      close_all(got);
      lost_locked(stale);
      throw std::system_error(EPROTO, std::generic_category(),
                              who + ": " + server_is(server) + " answered nonsense");
    }
    return {rep.pid, got[0], epoch_};
  }

  // Whether the server signalled its child pid; false if it reaped it first. The children
  // of a server that is gone are nobody's to signal: their pids may be anyone's by now.
  bool signal(int pid, int sig, unsigned epoch, const std::string& who) {
    std::unique_ptr<direct_child> stale;
    std::lock_guard lock(mutex_);
    if (epoch != epoch_ || fd_ < 0) return false;
    reply rep;
    std::vector<int> got;
    request r{.what = op::signal, .pid = pid, .payload = static_cast<std::uint32_t>(sig)};
    if (exchange_locked(r, {}, rep, got, stale) != 0) return false;
    close_all(got);
    if (rep.what == state::failed)
      throw std::system_error(rep.value, std::generic_category(),
                              who + ": " + server_is(server_pid_) + " could not send signal " +
                                  std::to_string(sig));
    return rep.what == state::running;
  }

  unsigned generation() const noexcept { return generation_.load(std::memory_order_relaxed); }

  // Held across fork (pthread_atfork): a forked child neither uses nor holds this
  // process's server, and starts its own when it needs one. While the mutex is held the
  // link takes no other coproc mutex (the identity is read first, a lost server's handle
  // is destroyed after), so the hooks cannot deadlock with child.cpp's.
  void before_fork() { mutex_.lock(); }
  void after_fork_in_parent() { mutex_.unlock(); }
  void after_fork_in_child() {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
    stale_ = server_ != nullptr; // the parent's: dropped at the next use, not in a fork hook
    ++epoch_;
    generation_.fetch_add(1, std::memory_order_relaxed);
    mutex_.unlock();
  }

private:
  void ensure_locked(const std::string& who, const identity& id,
                     std::unique_ptr<direct_child>& stale) {
    if (stale_) {
      stale = std::move(server_);
      stale_ = false;
    }
    if (fd_ >= 0) return;
    require_main_guard(who);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      throw_errno(errno, who + ": socketpair for the fork server");
    int pid;
    try {
      pid = spawn_fresh_image({image_kind::forkserver, id, false, {}, true},
                              std::span<const int>(&sv[1], 1), who + " (starting the fork server)");
      server_ = std::make_unique<direct_child>(pid);
    } catch (...) {
      ::close(sv[0]);
      ::close(sv[1]);
      throw;
    }
    ::close(sv[1]);
    fd_ = sv[0];
    server_pid_ = pid;
    ++epoch_;
  }

  // 0 or an errno (the server is gone, and forgotten: the next start starts another).
  int exchange_locked(const request& r, std::span<const int> fds, reply& rep, std::vector<int>& got,
                      std::unique_ptr<direct_child>& stale) {
    return receive_locked(send_with_fds(fd_, &r, sizeof r, fds), rep, got, stale);
  }

  // The reply to a request sent with send_error as the result.
  int receive_locked(int send_error, reply& rep, std::vector<int>& got,
                     std::unique_ptr<direct_child>& stale) {
    int err = send_error;
    if (err == 0) {
      ssize_t n = recv_with_fds(fd_, &rep, sizeof rep, got);
      if (n != static_cast<ssize_t>(sizeof rep)) err = n < 0 ? static_cast<int>(-n) : ECONNRESET;
    }
    if (err != 0) {
      close_all(got);
      lost_locked(stale);
    }
    return err;
  }

  void lost_locked(std::unique_ptr<direct_child>& stale) {
    ::close(std::exchange(fd_, -1));
    stale = std::move(server_); // reaped by its handle, or by the orphan reaper
    ++epoch_;
  }

  std::mutex mutex_;
  int fd_ = -1;
  int server_pid_ = 0;
  std::unique_ptr<direct_child> server_;
  bool stale_ = false;
  unsigned epoch_ = 0; // which server: a handle asks only the one that forked its child
  std::atomic<unsigned> generation_{0};
};

// Made at load time, as child.cpp's objects: a forked child must not build it.
server_link& link() {
  static server_link* l = [] {
    auto* made = new server_link; // leaked: children may be waited for during exit
    ::pthread_atfork([] { link().before_fork(); }, [] { link().after_fork_in_parent(); },
                     [] { link().after_fork_in_child(); });
    return made;
  }();
  return *l;
}
[[maybe_unused]] const bool link_made = (link(), true);

// A child the fork server forked for this process: its pid, and the read end of the pipe
// the server writes its wait status into once it reaped it.
class served_child final : public process_child {
public:
  served_child(int pid, int status_fd, unsigned epoch)
      : pid_(pid), status_fd_(status_fd), epoch_(epoch), generation_(link().generation()) {}
  served_child(const served_child&) = delete;
  served_child& operator=(const served_child&) = delete;

  ~served_child() override {
    if (status_fd_ >= 0) ::close(status_fd_);
  }

  int pid() const noexcept override { return pid_; }

  // An inherited copy (a forked child of the requester) answers without the lock, which
  // fork may have copied held.
  std::optional<int> poll() override {
    if (!owned()) return code_;
    std::lock_guard lock(mutex_);
    return poll_locked();
  }

  boost::asio::awaitable<int> wait() override {
    auto wait = wait_until(deadline::never());
    auto code = co_await std::move(wait);
    co_return *code;
  }

  boost::asio::awaitable<std::optional<int>>
  wait(std::chrono::steady_clock::duration timeout) override {
    if (auto code = poll()) co_return code;
    auto wait = wait_until(deadline::after(timeout));
    co_return co_await std::move(wait);
  }

  bool signal(int sig) override {
    if (!owned()) return false;
    std::lock_guard lock(mutex_);
    if (code_) return false;
    return link().signal(pid_, sig, epoch_,
                         "coproc: signal " + std::to_string(sig) + " to pid " +
                             std::to_string(pid_));
  }

private:
  bool owned() const noexcept { return generation_ == link().generation(); }

  std::optional<int> poll_locked() {
    if (code_) return code_;
    int status = 0;
    ssize_t n;
    do n = ::read(status_fd_, &status, sizeof status);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN) return std::nullopt;
    // End of file without a status: the server died first, and it is lost.
    code_ = n == static_cast<ssize_t>(sizeof status) ? decode_wait_status(status) : 255;
    ::close(std::exchange(status_fd_, -1));
    return code_;
  }

  boost::asio::awaitable<std::optional<int>> wait_until(deadline until) {
    if (!owned())
      throw std::logic_error("can only wait for a child of this process (pid " +
                             std::to_string(pid_) + ")");
    int fd = -1;
    {
      std::lock_guard lock(mutex_);
      if (auto code = poll_locked()) co_return code;
      // Each waiter watches its own duplicate, as detail::child's do: the pipe stays
      // readable once the status came (end of file after it), whoever read it.
      fd = ::fcntl(status_fd_, F_DUPFD_CLOEXEC, 0);
      if (fd < 0)
        throw_errno(errno, "coproc: dup of the status pipe of pid " + std::to_string(pid_));
    }
    auto ex = co_await boost::asio::this_coro::executor;
    auto state = co_await boost::asio::this_coro::cancellation_state;
    std::optional<boost::asio::steady_timer> timer;
    if (!until.is_never()) timer.emplace(ex, until.when());
    boost::asio::posix::stream_descriptor pipe(ex, fd);
    for (;;) {
      if (!timer) {
        auto op = pipe.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                                  boost::asio::use_awaitable);
        co_await std::move(op);
      } else {
        auto woken =
            event_or_timer(pipe.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                                           boost::asio::deferred),
                           *timer);
        bool event = co_await std::move(woken);
        throw_if_cancelled(state);
        if (!event) co_return poll();
      }
      if (auto code = poll()) co_return code;
    }
  }

  const int pid_;
  int status_fd_;
  const unsigned epoch_;
  const unsigned generation_;
  std::mutex mutex_;
  std::optional<int> code_;
};

} // namespace

void run_fork_server(int fd) { fork_server(fd).run(); }

void preload_fork_server(const std::string& who) { link().preload(who); }

std::shared_ptr<process_child>
start_served_child(const fresh_image_spec& spec, std::span<const int> fds, const std::string& who) {
  auto s = link().start(spec, fds, who);
  try {
    return std::make_shared<served_child>(s.pid, s.status_fd, s.epoch);
  } catch (...) {
    ::close(s.status_fd);
    throw;
  }
}

} // namespace coproc::detail

namespace coproc {

void forkserver_preload() { detail::preload_fork_server("coproc::forkserver_preload"); }

} // namespace coproc
