// A remote pool worker (lib/pool_remote.hpp): main_guard enters here when
// COPROC_REMOTE_ADDRESS is set. The process the launcher started is a supervisor: it
// connects to the pool and forks a runner onto the connection, which leads its own process
// group, proves the secret (and checks the pool's proof), then runs the pool's task loop,
// while a thread sends a heartbeat every interval (a busy runner still answers). The pool
// stops a task (its timeout, a cancellation) by a byte of TCP urgent data: the supervisor
// kills the runner's group, lets the pool read the connection to its end, and connects a
// new runner; so does a runner lost otherwise (killed, its connection reset). The
// supervisor ends when the pool closes the connection, refuses a new one, or, for ssh,
// when stdin closes (its ssh is gone). A failure before the pool accepted the first
// runner: a message on stderr and exit status 1.
#include "pool_remote.hpp"

#include "image_map.hpp"
#include "os.hpp"
#include "pool_protocol.hpp"
#include "pool_worker.hpp"

#include <coproc/detail/child.hpp>
#include <coproc/wire.hpp>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>

namespace coproc::detail {

namespace {

constexpr int handshake_timeout_ms = 10'000;

std::string address_text;

[[noreturn]] void refuse(const std::string& why) {
  std::cerr << "coproc remote worker (pid " << ::getpid() << "): " << why << std::endl;
  flush_stdio();
  ::_exit(1);
}

// Waits for fd to be ready for `events` (POLLIN/POLLOUT) within the handshake's time.
void wait_ready(int fd, short events, const char* doing) {
  pollfd p{fd, events, 0};
  int n;
  do n = ::poll(&p, 1, handshake_timeout_ms);
  while (n < 0 && errno == EINTR);
  if (n == 0) refuse(std::string("timed out ") + doing + " the pool at " + address_text);
  if (n < 0) refuse(std::string("poll: ") + std::strerror(errno));
}

void read_exact(int fd, void* buf, std::size_t n, const char* what) {
  auto* p = static_cast<char*>(buf);
  std::size_t done = 0;
  while (done < n) {
    wait_ready(fd, POLLIN, "waiting for");
    ssize_t got = ::recv(fd, p + done, n - done, MSG_DONTWAIT);
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got == 0)
      refuse(std::string("the pool at ") + address_text + " closed the connection before " + what +
             " (refused: a wrong COPROC_REMOTE_SECRET?)");
    if (got < 0) refuse(std::string("reading ") + what + ": " + std::strerror(errno));
    done += static_cast<std::size_t>(got);
  }
}

void write_exact(int fd, const void* buf, std::size_t n) {
  auto* p = static_cast<const char*>(buf);
  std::size_t done = 0;
  while (done < n) {
    ssize_t put = ::send(fd, p + done, n - done, MSG_NOSIGNAL);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) refuse(std::string("writing to the pool: ") + std::strerror(errno));
    done += static_cast<std::size_t>(put);
  }
}

// host:port or [v6]:port, resolved and connected (non-blocking connect, bounded wait).
int connect_to(const std::string& address, bool first) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0)
    refuse("COPROC_REMOTE_ADDRESS '" + address + "' is not host:port");
  std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0)
    refuse("cannot resolve the pool's address " + address + ": " + ::gai_strerror(rc));
  std::string last = "no address";
  for (auto* a = found; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int n;
      do n = ::poll(&p, 1, handshake_timeout_ms);
      while (n < 0 && errno == EINTR);
      int err = n == 0 ? ETIMEDOUT : 0;
      socklen_t len = sizeof err;
      if (n > 0) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc == 0) {
      ::freeaddrinfo(found);
      int flags = ::fcntl(fd, F_GETFL);
      ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      return fd;
    }
    last = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (!first) ::_exit(0);
  refuse("cannot connect to the pool at " + address + ": " + last);
}

std::string read_secret() {
  if (const char* s = std::getenv(remote_secret_env)) return s;
  // ssh: the first line of stdin.
  std::string line;
  char c;
  for (;;) {
    ssize_t n = ::read(0, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || c == '\n') break;
    line += c;
    if (line.size() > 4096) break;
  }
  if (line.empty()) refuse(std::string(remote_secret_env) + " is not set and stdin gave no secret");
  return line;
}

// The runner's heartbeats: one every interval (a busy runner still answers). A reset or
// failed connection (terminate(), a dead pool, TCP_USER_TIMEOUT on a dead link) ends the
// runner with its process group, so what its task started goes too.
void heartbeats(int fd, std::mutex& write_lock, std::chrono::nanoseconds interval) {
  std::string beat;
  encode_record(beat, record_kind::heartbeat);
  int ms = std::max<int>(1, static_cast<int>(interval.count() / 1'000'000));
  for (;;) {
    pollfd p{fd, 0, 0};
    int n = ::poll(&p, 1, ms);
    if (n < 0 && errno == EINTR) continue;
    if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) ::killpg(0, SIGKILL);
    if (n != 0) continue;
    std::lock_guard lock(write_lock);
    std::size_t done = 0;
    while (done < beat.size()) {
      ssize_t put = ::send(fd, beat.data() + done, beat.size() - done, MSG_NOSIGNAL);
      if (put < 0 && errno == EINTR) continue;
      if (put <= 0) ::killpg(0, SIGKILL);
      done += static_cast<std::size_t>(put);
    }
  }
}

// The runner: a child of the supervisor leading its own process group, on the connection
// the supervisor made. It proves the secret, then serves tasks until the pool closes the
// connection. It exits 1 if it is refused.
[[noreturn]] void run_runner(int fd, const std::string& secret, std::uint32_t run) {
  remote_hello hello{};
  std::memcpy(hello.magic, remote_magic, sizeof remote_magic);
  random_bytes(hello.nonce, sizeof hello.nonce);
  hello.pid = static_cast<std::uint64_t>(::getpid());
  hello.run = run;
  ::gethostname(hello.host, sizeof hello.host - 1);
  write_exact(fd, &hello, sizeof hello);

  remote_challenge challenge{};
  read_exact(fd, &challenge, sizeof challenge, "its challenge");
  if (std::memcmp(challenge.magic, remote_magic, sizeof remote_magic) != 0)
    refuse(address_text + " is not a coproc pool (it does not speak the remote protocol)");
  if (!equal_digests(challenge.proof,
                     remote_proof_of(secret, "coproc pool", hello.nonce, challenge.nonce)))
    refuse("the pool at " + address_text +
           " did not prove the secret: COPROC_REMOTE_SECRET is wrong, or that is another pool");
  remote_proof answer{remote_proof_of(secret, "coproc worker", challenge.nonce, hello.nonce)};
  write_exact(fd, &answer, sizeof answer);

  std::uint64_t length = 0;
  read_exact(fd, &length, sizeof length, "accepting this worker");
  if (length > (1u << 20)) refuse("the pool's welcome is too long");
  std::string body(static_cast<std::size_t>(length), '\0');
  read_exact(fd, body.data(), body.size(), "its welcome");
  remote_welcome welcome;
  try {
    welcome = wire::decode<remote_welcome>(body);
  } catch (const std::exception& e) {
    refuse(std::string("the pool's welcome does not decode: ") + e.what());
  }
  auto [name, maxtasks, initializer, heartbeat_ns, image_check, layout] = welcome;
  if (image_check != pool_image_offset(&run_remote_worker))
    refuse("this executable is not the pool's (run the same build at the same path on every "
           "host)");
  code_map code;
  try {
    code = code_map(layout);
  } catch (const std::exception& e) {
    refuse(std::string("the pool's layout does not decode: ") + e.what());
  }

  enter_child({{}, name});
  // A link that loses what this worker sends for this long is dead: its sends fail.
  unsigned user_timeout =
      static_cast<unsigned>(remote_missed_heartbeats * heartbeat_ns / 1'000'000 + 1000);
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);

  static std::mutex write_lock;
  std::thread(heartbeats, fd, std::ref(write_lock), std::chrono::nanoseconds(heartbeat_ns))
      .detach();
  run_remote_work(fd, static_cast<std::intptr_t>(initializer), maxtasks, std::move(code),
                  write_lock);
}

// After the runner is gone: what the pool sent is read and dropped until the pool closes
// its end (at most a while), so the pool reads every record the runner sent (its claims:
// it fails exactly the items that had started) and none is lost to a reset.
void end_connection(int fd) {
  ::shutdown(fd, SHUT_WR);
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, handshake_timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    ssize_t got = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) break;
  }
  ::close(fd);
}

struct runner_end {
  bool again = false; // connect a new runner
  int code = 0;       // else the supervisor's exit status
};

// Watches the runner and its connection: urgent data from the pool (a task's timeout or
// cancellation), a reset or failed connection, the runner's end, and for ssh stdin.
runner_end supervise(int fd, pid_t runner, bool watch_stdin) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, runner, 0));
  short fd_events = POLLPRI | POLLRDHUP;
  bool pool_closed = false;
  auto kill_runner = [&] {
    ::killpg(runner, SIGKILL);
    int status;
    while (::waitpid(runner, &status, 0) < 0 && errno == EINTR) {
    }
  };
  for (;;) {
    pollfd p[3] = {{fd, fd_events, 0}, {pidfd, POLLIN, 0}, {0, POLLIN, 0}};
    // Without a pidfd (a kernel before 5.3) the runner is looked at every 50 ms.
    int n = ::poll(p, watch_stdin ? 3 : 2, pidfd < 0 ? 50 : -1);
    if (n < 0 && errno == EINTR) continue;
    if (p[0].revents & POLLPRI) { // stop: the task is killed, the runner with it
      kill_runner();
      end_connection(fd);
      if (pidfd >= 0) ::close(pidfd);
      return {true, 0};
    }
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) { // reset, or a dead link
      kill_runner();
      ::close(fd);
      if (pidfd >= 0) ::close(pidfd);
      return {true, 0};
    }
    if (p[0].revents & POLLRDHUP) { // the pool closed: the runner finishes and exits
      pool_closed = true;
      fd_events = POLLPRI;
    }
    if (watch_stdin && p[2].revents) {
      char buf[256];
      ssize_t got = ::read(0, buf, sizeof buf);
      if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN)) { // its ssh is gone
        kill_runner();
        ::_exit(0);
      }
    }
    int status = 0;
    pid_t ended = ::waitpid(runner, &status, WNOHANG);
    if (ended != runner) continue;
    if (pidfd >= 0) ::close(pidfd);
    bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!(clean && pool_closed)) ::killpg(runner, SIGKILL); // what its tasks left
    end_connection(fd);
    if (clean && pool_closed) return {false, 0};
    // Refused, or its initializer failed: a new runner would fare no better.
    if (WIFEXITED(status) && !clean) return {false, WEXITSTATUS(status)};
    return {true, 0}; // killed, or maxtasksperchild
  }
}

} // namespace

// The process the launcher started is the supervisor: it connects, forks a runner onto the
// connection, and when the runner is stopped or lost, connects again with a new one.
void run_remote_worker() {
  address_text = std::getenv(remote_address_env);
  bool from_stdin = std::getenv(remote_secret_env) == nullptr;
  std::string secret = read_secret();
  std::uint32_t run = 0;
  if (const char* r = std::getenv(remote_run_env)) run = static_cast<std::uint32_t>(std::atoi(r));
  // The worker's own children are ordinary runs.
  ::unsetenv(remote_address_env);
  ::unsetenv(remote_secret_env);
  ::unsetenv(remote_run_env);
  pid_t supervisor = ::getpid();
  for (bool first = true;; first = false) {
    // A pool that ended refuses a new connection: that is the supervisor's end too.
    int fd = connect_to(address_text, first);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    flush_stdio();
    pid_t runner = ::fork();
    if (runner < 0) refuse(std::string("fork: ") + std::strerror(errno));
    if (runner == 0) {
      // Its own group: a stop kills what its tasks started. It dies with the supervisor.
      ::setpgid(0, 0);
      die_with_parent(supervisor);
      int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null >= 0) {
        ::dup2(null, 0);
        ::close(null);
      }
      run_runner(fd, secret, run);
    }
    ::setpgid(runner, runner);
    auto end = supervise(fd, runner, from_stdin);
    if (!end.again) {
      flush_stdio();
      ::_exit(end.code);
    }
  }
}

} // namespace coproc::detail
