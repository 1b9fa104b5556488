#include <coproc/process.hpp>

#include <doctest/doctest.h>

#include "support/capture.hpp"
#include "support/checks.hpp"
#include "support/daemon.hpp"
#include "support/timing.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <pwd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <stdexcept>
#include <thread>
#include <fstream>

using namespace std::chrono_literals;
using coproc_test::capture;
using coproc_test::run;
using coproc_test::sleep_for;

namespace {

int exit_with(int code) { return code; }
void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }
void forever() {
  for (;;) ::pause();
}

// Holds children until the test lets them go: a byte per child, so children that inherit
// the write end do not keep the others waiting.
class gate {
public:
  gate() { REQUIRE(::pipe(fd_) == 0); }
  gate(const gate&) = delete;
  ~gate() {
    ::close(fd_[0]);
    ::close(fd_[1]);
  }
  // In the child.
  void pass() const {
    char byte;
    (void)!::read(fd_[0], &byte, 1);
  }
  void release(int children = 1) const {
    for (int i = 0; i < children; ++i) (void)!::write(fd_[1], "x", 1);
  }

private:
  int fd_[2];
};

int join(coproc::process& p) { return run(p.join()); }

bool has_pidfd() {
  DIR* dir = ::opendir("/proc/self/fd");
  bool found = false;
  while (auto* e = ::readdir(dir)) {
    char target[256] = {};
    auto link = std::string("/proc/self/fd/") + e->d_name;
    if (::readlink(link.c_str(), target, sizeof target - 1) > 0 &&
        std::string(target).find("pidfd") != std::string::npos)
      found = true;
  }
  ::closedir(dir);
  return found;
}

int thread_count() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/task");
  while (auto* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n;
}

// Whether a thread of this process has this name (coproc names its threads).
bool has_thread_named(const std::string& name) {
  bool found = false;
  DIR* dir = ::opendir("/proc/self/task");
  while (auto* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream comm("/proc/self/task/" + std::string(e->d_name) + "/comm");
    std::string line;
    if (std::getline(comm, line) && line == name) found = true;
  }
  ::closedir(dir);
  return found;
}

// TSan starts a background thread of its own when it first needs it.
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr int sanitizer_threads = 1;
#else
constexpr int sanitizer_threads = 0;
#endif
#else
constexpr int sanitizer_threads = 0;
#endif

} // namespace

TEST_CASE("exit codes: return value and exception and signals") {
  coproc::process zero([] {});
  coproc::process seven(exit_with, 7);
  coproc::process thrown([]() -> int { throw std::runtime_error("boom"); });
  coproc::process termed(forever);
  coproc::process killed(forever);
  for (auto* p : {&zero, &seven, &termed, &killed}) p->start();
  auto err = capture(2, [&] {
    thrown.start();
    CHECK(join(thrown) == 1);
  });
  CHECK(join(zero) == 0);
  CHECK(join(seven) == 7);
  termed.terminate();
  killed.kill();
  CHECK(join(termed) == -15);
  CHECK(join(killed) == -9);
  CHECK(termed.exitcode() == -15);
  CHECK(err.find("Process " + thrown.name() + ":\nstd::runtime_error: boom\n") !=
        std::string::npos);
}

TEST_CASE("targets may return void or int or awaitables") {
  coproc::process v([] {});
  coproc::process i([] { return 3; });
  coproc::process av([]() -> coproc::awaitable<void> { co_await sleep_for(10ms); });
  coproc::process ai([]() -> coproc::awaitable<int> {
    co_await sleep_for(10ms);
    co_return 4;
  });
  coproc::process at([]() -> coproc::awaitable<int> {
    co_await sleep_for(1ms);
    throw std::logic_error("in coroutine");
  });
  for (auto* p : {&v, &i, &av, &ai}) p->start();
  CHECK(join(v) == 0);
  CHECK(join(i) == 3);
  CHECK(join(av) == 0);
  CHECK(join(ai) == 4);
  auto err = capture(2, [&] {
    at.start();
    CHECK(join(at) == 1);
  });
  CHECK(err.find("std::logic_error: in coroutine") != std::string::npos);
}

TEST_CASE("arguments are copied at construction and std::ref passes a reference") {
  int value = 1;
  coproc::process copied([](int v) { return v; }, value);
  coproc::process referenced([](int& v) { return v; }, std::ref(value));
  value = 5;
  copied.start();
  referenced.start();
  CHECK(join(copied) == 1);
  CHECK(join(referenced) == 5);
}

TEST_CASE("the child works on its own copy of globals") {
  static int counter = 100;
  coproc::process p([] {
    counter += 1;
    return counter == 101 ? 0 : 1;
  });
  p.start();
  CHECK(join(p) == 0);
  CHECK(counter == 100);
}

TEST_CASE("names default to Process-N and children know their name") {
  coproc::process a([] {});
  coproc::process b([] {});
  auto n = std::stoi(a.name().substr(8));
  CHECK(a.name().rfind("Process-", 0) == 0);
  CHECK(b.name() == "Process-" + std::to_string(n + 1));
  coproc::process named({.name = "worker"},
                        [] { return coproc::this_process::name() == "worker" ? 0 : 1; });
  named.start();
  CHECK(join(named) == 0);
  named.name("renamed");
  CHECK(named.name() == "renamed");
  // A grandchild is named after its parent's number, as in Python.
  coproc::process outer([] {
    auto expected = coproc::this_process::name() + ":1";
    coproc::process check([expected] { return coproc::this_process::name() == expected ? 0 : 9; });
    check.start();
    return coproc::block_on(check.join());
  });
  outer.start();
  CHECK(join(outer) == 0);
}

TEST_CASE("pid and is_alive and exitcode through the lifecycle") {
  gate running;
  coproc::process p([&running] { running.pass(); });
  CHECK(p.pid() == 0);
  CHECK_FALSE(p.is_alive());
  CHECK_FALSE(p.exitcode());
  p.start();
  CHECK(p.pid() > 0);
  CHECK(p.pid() != ::getpid());
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode());
  running.release();
  CHECK(join(p) == 0);
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 0);
  p.terminate(); // no-op once exited
  p.kill();
  CHECK(p.exitcode() == 0);
}

TEST_CASE("is_alive and exitcode reap without a join or io_context") {
  coproc::process p(exit_with, 3);
  p.start();
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (p.is_alive() && std::chrono::steady_clock::now() < deadline) sleep_ms(1);
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == 3);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("join with a timeout returns nullopt while running and the code once exited") {
  gate running;
  coproc::process p([&running] { running.pass(); });
  p.start();
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(run(p.join(50ms)));
  auto waited = std::chrono::steady_clock::now() - start;
  CHECK(waited >= 50ms);
  CHECK(waited < 5s);  // the child runs until released: the timeout ended the wait
  CHECK(p.is_alive()); // left alone
  running.release();
  CHECK(run(p.join(10s)) == 0);
  CHECK(run(p.join(1ms)) == 0);
}

TEST_CASE("several coroutines join one process") {
  coproc::process p(exit_with, 11);
  p.start();
  auto codes = run([&]() -> coproc::awaitable<std::vector<int>> {
    std::vector<coproc::awaitable<int>> joins;
    for (int i = 0; i < 3; ++i) joins.push_back(p.join());
    co_return co_await coproc::gather(std::move(joins));
  }());
  CHECK(codes == std::vector<int>{11, 11, 11});
}

TEST_CASE("joins from two threads with their own io_contexts") {
  coproc::process p(sleep_ms, 100);
  p.start();
  int a = -1, b = -1;
  std::thread t([&] { a = run(p.join()); });
  b = run(p.join());
  t.join();
  CHECK(a == 0);
  CHECK(b == 0);
}

TEST_CASE("200 children joined with gather leak no fd and use no thread per child") {
  const char* mode = std::getenv("COPROC_CHILD_WATCH");
  bool sigchld = mode && std::string(mode) == "sigchld"; // one thread turns SIGCHLD into wake-ups
  int fds = coproc_test::count_fds();
  int threads = thread_count();
  std::vector<coproc::process> procs;
  for (int i = 0; i < 200; ++i) procs.emplace_back(exit_with, i % 100);
  for (auto& p : procs) p.start();
  int peak_threads = 0;
  auto codes = run([&]() -> coproc::awaitable<std::vector<int>> {
    std::vector<coproc::awaitable<int>> joins;
    for (auto& p : procs) joins.push_back(p.join());
    auto watch = [&]() -> coproc::awaitable<int> {
      peak_threads = thread_count();
      co_return 0;
    };
    joins.push_back(watch());
    co_return co_await coproc::gather(std::move(joins));
  }());
  codes.pop_back();
  for (int i = 0; i < 200; ++i) CHECK(codes[i] == i % 100);
  CHECK(peak_threads <= threads + sigchld + sanitizer_threads);
  procs.clear();
  CHECK(coproc_test::count_fds() == fds);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE("waiting uses a pidfd unless COPROC_CHILD_WATCH=sigchld forces the fallback") {
  const char* mode = std::getenv("COPROC_CHILD_WATCH");
  bool forced = mode && std::string(mode) == "sigchld";
  gate running;
  coproc::process p([&running] { running.pass(); });
  p.start();
  bool seen = false;
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    boost::asio::co_spawn(
        ex,
        [&]() -> coproc::awaitable<void> {
          // Runs on once the join below is suspended in its wait.
          co_await boost::asio::post(ex, boost::asio::use_awaitable);
          seen = has_pidfd();
          running.release();
          co_return;
        },
        boost::asio::detached);
    CHECK(co_await p.join() == 0);
  }());
  CHECK(seen == !forced);
}

namespace {
class counting_process : public coproc::process {
public:
  explicit counting_process(int n) : coproc::process({.name = "counter"}), n_(n) {}

protected:
  void run() override {
    if (coproc::this_process::name() != "counter" || n_ != 3)
      throw std::runtime_error("wrong state");
  }

private:
  int n_;
};
} // namespace

TEST_CASE("a subclass overrides run") {
  counting_process p(3);
  p.start();
  CHECK(join(p) == 0);
  CHECK(p.name() == "counter");
}

TEST_CASE("the child flushes its stdout and never repeats the parent's buffered output") {
  std::string out = capture(1, [] {
    std::printf("parent-buffered;");
    coproc::process p([] { std::printf("child-unflushed;"); });
    p.start();
    CHECK(join(p) == 0);
    std::fflush(stdout);
  });
  CHECK(out == "parent-buffered;child-unflushed;");
}

namespace {
int atexit_fd = -1;
void on_exit_hook() {
  if (atexit_fd >= 0) (void)!::write(atexit_fd, "atexit", 6);
}
} // namespace

TEST_CASE("the child runs neither atexit handlers nor static destructors of the parent") {
  static bool registered = (std::atexit(on_exit_hook), true);
  (void)registered;
  int p[2];
  REQUIRE(::pipe(p) == 0);
  atexit_fd = p[1];
  coproc::process child([] { return 0; });
  child.start();
  CHECK(join(child) == 0);
  atexit_fd = -1;
  ::close(p[1]);
  char buf[16];
  CHECK(::read(p[0], buf, sizeof buf) == 0);
  ::close(p[0]);
}

TEST_CASE("the child starts with default signal handlers and an empty mask") {
  auto old_handler = std::signal(SIGTERM, SIG_IGN);
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  ::sigprocmask(SIG_BLOCK, &block, &old_mask);
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  // Reports once its target runs, after coproc has reset the dispositions.
  coproc::process p([fd = ready[1]] {
    (void)!::write(fd, "r", 1);
    forever();
  });
  p.start();
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  std::signal(SIGTERM, old_handler);
  char byte;
  CHECK(::read(ready[0], &byte, 1) == 1);
  ::close(ready[0]);
  ::close(ready[1]);
  p.terminate();
  CHECK(join(p) == -15);
  coproc::process q([] {
    sigset_t mask;
    ::sigprocmask(SIG_SETMASK, nullptr, &mask);
    return sigismember(&mask, SIGUSR1);
  });
  ::sigprocmask(SIG_BLOCK, &block, &old_mask);
  q.start();
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  CHECK(join(q) == 0);
}

namespace {
volatile std::sig_atomic_t g_interrupted = 0;
void on_interrupt(int) { g_interrupted = 1; }
} // namespace

TEST_CASE("interrupt sends SIGINT, so the child's handler can clean up") {
  coproc::process plain(forever);
  plain.interrupt(); // no-op before start
  plain.start();
  plain.interrupt();
  CHECK(join(plain) == -SIGINT);
  plain.interrupt(); // and once exited
  CHECK(plain.exitcode() == -SIGINT);

  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  coproc::process cleaning([fd = ready[1]] {
    // SIGINT stays blocked outside sigsuspend: one arriving between the check and a
    // pause() would be handled there and the pause() would wait forever.
    sigset_t interrupt, unblocked;
    sigemptyset(&interrupt);
    sigaddset(&interrupt, SIGINT);
    ::sigprocmask(SIG_BLOCK, &interrupt, &unblocked);
    sigdelset(&unblocked, SIGINT);
    std::signal(SIGINT, on_interrupt);
    (void)!::write(fd, "r", 1);
    while (!g_interrupted) ::sigsuspend(&unblocked);
    return 5; // the cleanup ran
  });
  cleaning.start();
  char byte;
  CHECK(::read(ready[0], &byte, 1) == 1);
  ::close(ready[0]);
  ::close(ready[1]);
  cleaning.interrupt();
  CHECK(join(cleaning) == 5);
}

TEST_CASE("misuse is a logic_error that names the process") {
  coproc::process p({.name = "misused"}, [] {});
  CHECK_THROWS_WITH_AS((void)p.join(), "cannot join process 'misused': it was not started",
                       std::logic_error);
  CHECK_THROWS_AS((void)p.join(1s), std::logic_error);
  p.start();
  CHECK_THROWS_WITH_AS(p.start(), "cannot start process 'misused' twice", std::logic_error);
  CHECK_THROWS_WITH_AS(p.daemon(true), "cannot set daemon on process 'misused': already started",
                       std::logic_error);
  CHECK(join(p) == 0);
}

TEST_CASE("fork failure is a system_error naming the process") {
  // RLIMIT_NPROC binds only unprivileged users, so the check runs in a child that drops
  // root first.
  int pid = ::fork();
  if (pid == 0) {
    if (::getuid() == 0) {
      passwd* nobody = ::getpwnam("nobody");
      if (!nobody || ::setgid(nobody->pw_gid) != 0 || ::setuid(nobody->pw_uid) != 0) ::_exit(2);
    }
    rlimit none{0, 0};
    ::setrlimit(RLIMIT_NPROC, &none);
    coproc::process p({.name = "limited"}, [] {});
    try {
      p.start();
    } catch (const std::system_error& e) {
      bool ok = e.code().value() == EAGAIN &&
                std::string(e.what()).find("process 'limited'") != std::string::npos;
      ::_exit(ok ? 0 : 3);
    }
    ::_exit(4);
  }
  int status;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a daemon child dies with its parent even by SIGKILL") {
  CHECK(coproc_test::daemon_dies_with_killed_parent(
      [] {
        int ready[2];
        if (::pipe(ready) != 0) return 0;
        // Never destroyed: the handle's destructor would SIGTERM the daemon first.
        auto* d = new coproc::process({.daemon = true}, [fd = ready[1]] {
          (void)!::write(fd, "r", 1);
          forever();
        });
        d->start();
        char byte;
        return ::read(ready[0], &byte, 1) == 1 ? d->pid() : 0;
      },
      std::chrono::seconds(5)));
}

TEST_CASE("a daemon started from a thread that ends lives on with its parent") {
  CHECK(coproc_test::daemon_outlives_starting_thread([](coproc::connection<std::string> c) {
    auto d = std::make_unique<coproc::process>(
        coproc::process_options{.daemon = true, .method = coproc::start_method::fork},
        coproc_test::echo_once, c);
    d->start();
    return d;
  }));
}

TEST_CASE("a destroyed handle terminates a daemon and lets a plain child run on") {
  int daemon_pid, plain_pid;
  int p[2];
  REQUIRE(::pipe(p) == 0);
  gate handles_gone;
  {
    coproc::process d({.daemon = true}, forever);
    coproc::process plain([fd = p[1], &handles_gone] {
      handles_gone.pass();
      (void)!::write(fd, "done", 4);
    });
    d.start();
    plain.start();
    daemon_pid = d.pid();
    plain_pid = plain.pid();
  }
  handles_gone.release();
  ::close(p[1]);
  char buf[8];
  CHECK(::read(p[0], buf, sizeof buf) == 4); // the plain child finished its work
  ::close(p[0]);
  // Both are reaped by the runtime: no zombie remains.
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while ((coproc_test::pid_exists(daemon_pid) || coproc_test::pid_exists(plain_pid)) &&
         std::chrono::steady_clock::now() < deadline)
    sleep_ms(5);
  CHECK_FALSE(coproc_test::pid_exists(daemon_pid));
  CHECK_FALSE(coproc_test::pid_exists(plain_pid));
}

TEST_CASE("a moved process keeps its child and a pending join survives the handle") {
  coproc::process a(exit_with, 5);
  a.start();
  coproc::process b = std::move(a);
  CHECK(b.pid() > 0);
  CHECK(join(b) == 5);
  auto code = run([]() -> coproc::awaitable<int> {
    auto p = std::make_unique<coproc::process>(exit_with, 6);
    p->start();
    auto op = p->join();
    p.reset();
    co_return co_await std::move(op);
  }());
  CHECK(code == 6);
}

namespace {
std::atomic<int> program_sigchld{0};
void program_handler(int) { program_sigchld.fetch_add(1); }
void program_action(int, siginfo_t*, void*) { program_sigchld.fetch_add(1); }

bool same_disposition(const struct sigaction& a, const struct sigaction& b) {
  bool same =
      a.sa_flags == b.sa_flags &&
      ((a.sa_flags & SA_SIGINFO) ? a.sa_sigaction == b.sa_sigaction : a.sa_handler == b.sa_handler);
  for (int sig = 1; sig < NSIG; ++sig)
    same = same && sigismember(&a.sa_mask, sig) == sigismember(&b.sa_mask, sig);
  return same;
}

template <class F> bool eventually(F condition, std::chrono::milliseconds limit = 10s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    sleep_ms(1);
  }
  return true;
}
} // namespace

// The SIGCHLD fallback (COPROC_CHILD_WATCH=sigchld, the second ctest run of this file)
// must share SIGCHLD with the program; on the pidfd path coproc never touches it.
TEST_CASE("coproc chains to the program's SIGCHLD handler and restores it exactly") {
  for (bool siginfo : {true, false}) {
    CAPTURE(siginfo);
    struct sigaction mine {};
    if (siginfo) mine.sa_sigaction = program_action;
    else mine.sa_handler = program_handler;
    mine.sa_flags = siginfo ? SA_SIGINFO | SA_RESTART : SA_NOCLDSTOP;
    sigemptyset(&mine.sa_mask);
    sigaddset(&mine.sa_mask, SIGUSR2);
    struct sigaction saved {
    }, before{}, after{};
    ::sigaction(SIGCHLD, &mine, &saved);
    ::sigaction(SIGCHLD, nullptr, &before);
    for (int i = 0; i < 5; ++i) {
      int seen = program_sigchld.load();
      coproc::process p(exit_with, i);
      p.start();
      CHECK(join(p) == i);
      bool called = eventually([&] { return program_sigchld.load() > seen; });
      CHECK(called);
      if (!called) break;
    }
    // Several waiters at once, the last one restores the handler.
    int seen = program_sigchld.load();
    std::vector<coproc::process> procs;
    for (int i = 0; i < 4; ++i) procs.emplace_back(sleep_ms, 20 * i);
    for (auto& p : procs) p.start();
    run([&]() -> coproc::awaitable<void> {
      std::vector<coproc::awaitable<int>> joins;
      for (auto& p : procs) joins.push_back(p.join());
      co_await coproc::gather(std::move(joins));
    }());
    CHECK(eventually([&] { return program_sigchld.load() > seen; }));
    ::sigaction(SIGCHLD, nullptr, &after);
    CHECK(same_disposition(after, before));
    ::sigaction(SIGCHLD, &saved, nullptr);
  }
}

namespace {
// Forces the next fork of this pid namespace to get `pid` (root only).
bool next_pid_is(int pid) {
  int fd = ::open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
  if (fd < 0) return false;
  auto text = std::to_string(pid - 1);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

// A raw fork with pid `pid` that exits with 42 once the gate's read end sees end of
// file (or at once without a gate).
int reuse_pid(int pid, const int* gate = nullptr) {
  if (!next_pid_is(pid)) return -1;
  int n = ::fork();
  if (n == 0) {
    char byte;
    if (gate) {
      ::close(gate[1]);
      (void)!::read(gate[0], &byte, 1);
    }
    ::_exit(42);
  }
  return n;
}

// The program reaps coproc's child itself, then its own new child gets the same pid.
// Returns 0, or which expectation failed.
int pid_reuse_scenario() {
  // Reaped while the handle lives: the handle must not take the new child for its own.
  {
    coproc::process o(exit_with, 7);
    o.start();
    int status;
    if (::waitpid(o.pid(), &status, 0) != o.pid()) return 10;
    int n = reuse_pid(o.pid());
    if (n != o.pid()) return 11;
    siginfo_t info{};
    if (::waitid(P_PID, n, &info, WEXITED | WNOWAIT) != 0) return 12; // until it exits
    if (o.exitcode() == 42) return 13; // the program's child's status, and reaped
    if (::waitpid(n, &status, 0) != n || WEXITSTATUS(status) != 42) return 14;
  }
  // Reaped while the handle lives, and the handle goes away while the new child runs: the
  // orphan reaper must not adopt it.
  {
    int gate[2];
    if (::pipe(gate) != 0) return 20;
    int pid;
    {
      coproc::process o(exit_with, 7);
      o.start();
      pid = o.pid();
      int status;
      if (::waitpid(pid, &status, 0) != pid) return 21;
      if (reuse_pid(pid, gate) != pid) return 22;
    }
    ::close(gate[1]);
    ::close(gate[0]);
    int status;
    if (::waitpid(pid, &status, 0) != pid || WEXITSTATUS(status) != 42) return 23;
  }
  // An orphan the program reaps itself (waitpid(-1) elsewhere in the program), its pid
  // reused by a child that exits at once: the runtime's reaper must leave that one alone.
  // (Who reaps first is a race the program wins in a few of the attempts; a release build
  // on a quiet machine loses most of them.)
  int won = 0;
  for (int attempt = 0; attempt < 400 && won < 3; ++attempt) {
    int gate[2];
    if (::pipe(gate) != 0) return 30;
    int pid;
    {
      coproc::process o([&gate] {
        char byte;
        ::close(gate[1]);
        (void)!::read(gate[0], &byte, 1);
      });
      o.start();
      pid = o.pid();
    }
    ::close(gate[0]);
    ::close(gate[1]); // the orphan exits
    int status;
    if (::waitpid(pid, &status, 0) != pid) continue; // the reaper was first: fine, again
    ++won;
    int n = reuse_pid(pid);
    if (n != pid) return 31;
    siginfo_t info{};
    (void)::waitid(P_PID, n, &info, WEXITED | WNOWAIT); // until it exits, not reaping
    // The reaper's thread ends once it has no orphan left.
    if (!eventually([] { return !has_thread_named("coproc-reaper"); })) return 32;
    if (::waitpid(n, &status, WNOHANG) != n) return 33; // taken by the reaper
    if (WEXITSTATUS(status) != 42) return 34;
  }
  return won > 0 ? 0 : 35;
}
} // namespace

TEST_CASE("a pid the program reaped and reused is never reaped or adopted by coproc") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: forcing pid reuse needs root");
    return;
  }
  // In a fresh pid namespace no other process takes the pid, and its own /proc.
  int helper = ::fork();
  REQUIRE(helper >= 0);
  if (helper == 0) {
    if (::unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) ::_exit(2);
    int init = ::fork();
    if (init == 0) {
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          ::mount("proc", "/proc", "proc", 0, nullptr) != 0)
        ::_exit(3);
      ::_exit(pid_reuse_scenario());
    }
    int status = 0;
    if (init < 0 || ::waitpid(init, &status, 0) != init) ::_exit(4);
    ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status));
  }
  int status;
  REQUIRE(::waitpid(helper, &status, 0) == helper);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
