// start_method::forkserver (coproc/start_method.hpp): what only the fork server does —
// plain and daemon children after a SIGKILLed requester, a dying server, threads, many
// children, the pool. What a forkserver child does as a spawn child does is in
// test_fresh_children.cpp.
//
// The fork server is this test program's child for the whole run, so it starts before the
// first case (forkserver_preload, in a listener): the runner's leak check counts the
// children each case leaves behind. Cases that need a requester of their own (one that
// dies, or whose server dies) fork one.
#include <coproc/main_guard.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/start_method.hpp>
#include <coproc/this_process.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/daemon.hpp"
#include "support/fresh_image.hpp"
#include "support/proc.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;
using namespace coproc_test::fresh_image;

namespace {

constexpr auto served = coproc::start_method::forkserver;

int exit_with(int code) { return code; }
// The parent pid and state of a process, from /proc/<pid>/stat; {0, 0} if it is gone.
std::pair<int, char> parent_and_state(int pid) {
  auto stat = coproc_test::read_proc_stat(pid);
  return stat ? std::pair{stat->ppid, stat->state} : std::pair{0, '\0'};
}

bool gone_within(int pid, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (coproc_test::pid_exists(pid))
    if (std::chrono::steady_clock::now() > deadline) return false;
    else std::this_thread::sleep_for(2ms);
  return true;
}

// Runs f in a forked child (a requester of its own, with its own fork server); f's result
// is the child's exit status, 0 for success. Checks inside cannot report: f returns which
// step failed.
int in_forked_requester(const std::function<int()>& f) {
  std::cout.flush();
  std::fflush(nullptr);
  int pid = ::fork();
  if (pid == 0) {
    int code = 100;
    try {
      code = f();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "forked requester: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int square(int x) { return x * x; }
std::string worker_name() { return coproc::this_process::name(); }
int worker_pid() { return ::getpid(); }
int die_by_signal(int sig) {
  ::raise(sig);
  return 0;
}

// A field of /proc/self/status ("SigIgn", "SigBlk") as a number; ~0 if it is missing.
unsigned long long status_field(const std::string& name) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + ":", 0) == 0)
      return std::stoull(line.substr(name.size() + 1), nullptr, 16);
  return ~0ull;
}
// 0 if no signal is ignored or blocked; 1 if one is.
int signals_at_defaults() {
  return status_field("SigIgn") == 0 && status_field("SigBlk") == 0 ? 0 : 1;
}
// 0: no LD_BIND_NOW; 1: it is "1"; 2: another value.
int bind_now_seen() {
  const char* v = std::getenv("LD_BIND_NOW");
  return !v ? 0 : std::string(v) == "1" ? 1 : 2;
}

template <class E> coproc::awaitable<E> failure_of(coproc::awaitable<int> op) {
  try {
    co_await std::move(op);
  } catch (const E& e) {
    co_return e;
  }
  throw std::runtime_error("expected a failure");
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

TEST_CASE("forkserver: a plain child outlives its requester, whose server exits when it is gone") {
  temp_dir dir;
  int test_server = coproc_test::live_children().at(0);
  CHECK(coproc_test::plain_child_outlives_killed_parent(
      [&] {
        auto* p = new coproc::process({.method = served}, report_then_wait, dir.file("pid"));
        p->start();
        auto ids = wait_for_report(dir.file("pid"));
        // The forked requester has a server of its own, not this process's.
        if (ids.size() != 2 || ids[1] == test_server) return std::array<int, 2>{0, 0};
        return std::array<int, 2>{static_cast<int>(ids[0]), static_cast<int>(ids[1])};
      },
      std::chrono::seconds(20)));
}

TEST_CASE("forkserver: destroying a running daemon's handle terminates it, a plain one runs on") {
  temp_dir dir;
  int test_server = coproc_test::live_children().at(0);
  int daemon_pid = 0, plain_pid = 0;
  {
    coproc::process d({.daemon = true, .method = served}, report_then_wait, dir.file("d"));
    coproc::process p({.method = served}, report_then_wait, dir.file("p"));
    d.start();
    p.start();
    REQUIRE(wait_for_report(dir.file("d")).size() == 2);
    REQUIRE(wait_for_report(dir.file("p")).size() == 2);
    daemon_pid = d.pid();
    plain_pid = p.pid();
  }
  CHECK(gone_within(daemon_pid, 20s)); // terminated, and reaped by the server
  CHECK(parent_and_state(plain_pid).second == 'S');
  ::kill(plain_pid, SIGKILL); // the test's cleanup: the server reaps it
  CHECK(gone_within(plain_pid, 20s));
  // Nobody reads those statuses: the server's writes into pipes closed at the other end
  // are no SIGPIPE for it, and it serves on.
  CHECK(coproc_test::live_children() == std::vector<int>{test_server});
  coproc::process next({.method = served}, exit_with, 5);
  next.start();
  CHECK(run(next.join()) == 5);
}

TEST_CASE("forkserver: a signal to a child the server reaped already is nothing, its status "
          "stays") {
  coproc::process p({.method = served}, exit_with, 3);
  p.start();
  CHECK(gone_within(p.pid(), 20s)); // exited, and reaped by the server
  p.terminate();
  p.kill();
  CHECK(run(p.join()) == 3);
  CHECK(p.exitcode() == 3);
}

TEST_CASE("forkserver: a child's status is lost with a server killed while it runs (255), "
          "the child runs on, left alone by terminate") {
  temp_dir dir;
  CHECK(in_forked_requester([&] {
          ::prctl(PR_SET_CHILD_SUBREAPER, 1); // the orphan comes here, to be cleaned up
          coproc::process p({.method = served}, report_then_wait, dir.file("pid"));
          p.start();
          if (wait_for_report(dir.file("pid")).size() != 2) return 1;
          auto servers = coproc_test::live_children();
          if (servers.size() != 1) return 2;
          ::kill(servers[0], SIGKILL);
          if (coproc::block_on(p.join()) != 255) return 3;
          p.terminate(); // no longer this process's: left alone
          // The pipe's end of file comes as the server's descriptors close, before the
          // kernel hands its children on.
          auto deadline = std::chrono::steady_clock::now() + 20s;
          while (parent_and_state(p.pid()).first != ::getpid())
            if (std::chrono::steady_clock::now() > deadline) return 4;
            else std::this_thread::sleep_for(2ms);
          if (parent_and_state(p.pid()).second != 'S') return 4;
          ::kill(p.pid(), SIGKILL);
          if (::waitpid(p.pid(), nullptr, 0) != p.pid()) return 5; // coproc reaps the server
          return 0;
        }) == 0);
}

TEST_CASE("forkserver: a child starts with every signal at its default, and LD_BIND_NOW as "
          "the program has it") {
  // The server ignores SIGINT and SIGPIPE, blocks SIGCHLD and runs with LD_BIND_NOW=1: none
  // of it is the child's.
  coproc::process p({.method = served}, signals_at_defaults);
  p.start();
  CHECK(run(p.join()) == 0);
  int expected = bind_now_seen();
  coproc::process q({.method = served}, bind_now_seen);
  q.start();
  CHECK(run(q.join()) == expected);
  // A program started with LD_BIND_NOW keeps it in its forkserver children.
  CHECK(in_forked_requester([] {
          ::setenv("LD_BIND_NOW", "1", 1);
          coproc::process r({.method = coproc::start_method::forkserver}, bind_now_seen);
          r.start();
          return coproc::block_on(r.join()) == 1 ? 0 : 1;
        }) == 0);
}

TEST_CASE(
    "forkserver_preload starts a server before any process, a forked requester starts its own") {
  int test_server = coproc_test::live_children().at(0);
  CHECK(in_forked_requester([&] {
          if (!coproc_test::live_children().empty()) return 1; // the parent's server is not ours
          coproc::forkserver_preload();
          auto servers = coproc_test::live_children();
          if (servers.size() != 1 || servers[0] == test_server) return 2;
          coproc::forkserver_preload(); // once
          if (coproc_test::live_children() != servers) return 3;
          coproc::process p({.method = coproc::start_method::forkserver},
                            [] { return static_cast<int>(::getppid()); });
          p.start();
          if (coproc::block_on(p.join()) != (servers[0] & 0xff)) return 4;
          return 0;
        }) == 0);
}

TEST_CASE("forkserver: a server that dies is a system_error naming the process and its pid, the "
          "next start "
          "starts another") {
  CHECK(in_forked_requester([] {
          coproc::forkserver_preload();
          auto servers = coproc_test::live_children();
          if (servers.size() != 1) return 1;
          int server = servers[0];
          ::kill(server, SIGKILL);
          auto deadline = std::chrono::steady_clock::now() + 20s;
          while (parent_and_state(server).second != 'Z')
            if (std::chrono::steady_clock::now() > deadline) return 2;
            else std::this_thread::sleep_for(2ms);
          coproc::process p({.name = "orphaned", .method = coproc::start_method::forkserver},
                            [] {});
          try {
            p.start();
            return 3;
          } catch (const std::system_error& e) {
            std::string what = e.what();
            if (what.find("process 'orphaned'") == std::string::npos) return 4;
            if (what.find("fork server (pid " + std::to_string(server) + ")") == std::string::npos)
              return 5;
          }
          coproc::process q({.method = coproc::start_method::forkserver}, exit_with, 6);
          q.start();
          if (coproc::block_on(q.join()) != 6) return 6;
          // The dead server was reaped: no zombie.
          deadline = std::chrono::steady_clock::now() + 20s;
          while (!coproc_test::zombie_children().empty())
            if (std::chrono::steady_clock::now() > deadline) return 7;
            else std::this_thread::sleep_for(2ms);
          return 0;
        }) == 0);
}

TEST_CASE("forkserver: 200 concurrent children") {
  std::vector<coproc::process> children;
  for (int i = 0; i < 200; ++i)
    children.emplace_back(coproc::process_options{.method = served}, exit_with, i % 100);
  for (auto& p : children) p.start();
  std::set<int> pids;
  for (auto& p : children) pids.insert(p.pid());
  CHECK(pids.size() == 200);
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < 200; ++i) CHECK(co_await children[i].join() == i % 100);
  }());
}

TEST_CASE("forkserver: several threads start and join processes at once") {
  constexpr int threads = 4, each = 25;
  std::atomic<int> right{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      std::vector<coproc::process> mine;
      for (int i = 0; i < each; ++i) {
        mine.emplace_back(coproc::process_options{.method = served}, exit_with, t * each + i);
        mine.back().start();
      }
      for (int i = 0; i < each; ++i)
        if (run(mine[i].join()) == t * each + i) ++right;
    });
  for (auto& w : workers) w.join();
  CHECK(right.load() == threads * each);
}

TEST_CASE("forkserver: a pool's workers are forked by the server, a killed worker is replaced") {
  std::vector<int> worker_pids;
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, {.processes = 2, .method = served});
    std::vector<int> items;
    for (int i = 0; i < 1000; ++i) items.push_back(i);
    auto squares = co_await pool.map(square, items, 7);
    bool all = squares.size() == 1000;
    for (int i = 0; all && i < 1000; ++i) all = squares[i] == i * i;
    CHECK(all);
    auto name = co_await pool.apply(worker_name);
    CHECK(name.rfind("ForkServerPoolWorker-", 0) == 0);
    worker_pids.push_back(co_await pool.apply(worker_pid));
    auto e = co_await failure_of<coproc::worker_lost>(pool.apply(die_by_signal, SIGKILL));
    CHECK(e.exitcode() == -SIGKILL);
    CHECK(co_await pool.apply(square, 3) == 9); // a replacement took over
    for (int i = 0; i < 4; ++i) worker_pids.push_back(co_await pool.apply(worker_pid));
    pool.terminate();
    co_await pool.join();
  }());
  for (int pid : worker_pids) CHECK(gone_within(pid, 20s));
}
