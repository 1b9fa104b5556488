// What a process started as a fresh image does, case for case the same with
// start_method::spawn (the child is a fresh image) and start_method::forkserver (the fork
// server, a fresh image, forks it): exit codes, pids and waits, names, stdio, what cannot
// travel, daemons. What only one of them does is in test_main_guard.cpp (spawn, and
// main_guard itself) and test_forkserver.cpp (the server).
//
// The fork server is this test program's child for the whole run, so it starts before the
// first case (support/fresh_image.hpp's listener): the runner's leak check counts the
// children each case leaves behind.
#include <coproc/process.hpp>
#include <coproc/start_method.hpp>
#include <coproc/this_process.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/daemon.hpp"
#include "support/fresh_image.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;
using namespace coproc_test::fresh_image;

namespace {

struct spawned {
  static constexpr auto method = coproc::start_method::spawn;
  static constexpr const char* name = "spawn";
};
struct served {
  static constexpr auto method = coproc::start_method::forkserver;
  static constexpr const char* name = "forkserver";
};

int exit_with(int code) { return code; }
int die_by_signal(int sig) {
  ::raise(sig);
  return 0;
}

struct not_serializable {
  int* where = nullptr;
};

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);
TYPE_TO_STRING(spawned);
TYPE_TO_STRING(served);

TEST_CASE_TEMPLATE("fresh image: exit codes 0, 7, 1, -2, -9 and -15, by exit, by signal, by "
                   "terminate/kill/interrupt",
                   M, spawned, served) {
  coproc::process zero({.method = M::method}, [] {});
  coproc::process seven({.method = M::method}, exit_with, 7);
  coproc::process thrown({.method = M::method}, []() -> int { throw std::runtime_error("boom"); });
  coproc::process interrupted({.method = M::method}, forever);
  coproc::process termed({.method = M::method}, forever);
  coproc::process killed({.method = M::method}, forever);
  coproc::process by_signal({.method = M::method}, die_by_signal, SIGTERM);
  for (auto* p : {&zero, &seven, &interrupted, &termed, &killed, &by_signal}) p->start();
  auto err = capture(2, [&] {
    thrown.start();
    CHECK(join(thrown) == 1);
  });
  CHECK(err.find("Process " + thrown.name() + ":\nstd::runtime_error: boom\n") !=
        std::string::npos);
  CHECK(join(zero) == 0);
  CHECK(join(seven) == 7);
  CHECK(join(by_signal) == -SIGTERM);
  interrupted.interrupt();
  termed.terminate();
  killed.kill();
  CHECK(join(interrupted) == -SIGINT);
  CHECK(join(termed) == -SIGTERM);
  CHECK(join(killed) == -SIGKILL);
  CHECK(termed.exitcode() == -SIGTERM);
  CHECK(join(termed) == -SIGTERM); // again, once reaped
}

TEST_CASE_TEMPLATE("fresh image: pid, the parent, is_alive, exitcode and join with a timeout "
                   "both ways",
                   M, spawned, served) {
  temp_dir dir;
  coproc::process p({.method = M::method}, report_then_wait, dir.file("pid"));
  coproc::process q({.method = M::method}, report_then_wait, dir.file("pid2"));
  CHECK(p.pid() == 0);
  CHECK_FALSE(p.is_alive());
  p.start();
  q.start();
  auto report = wait_for_report(dir.file("pid"));
  auto other = wait_for_report(dir.file("pid2"));
  REQUIRE(report.size() == 2);
  REQUIRE(other.size() == 2);
  CHECK(report[0] == p.pid());
  CHECK(other[0] == q.pid());
  if (M::method == coproc::start_method::spawn) {
    CHECK(report[1] == ::getpid());
    CHECK(other[1] == ::getpid());
  } else {
    // Both children of one server, which is this process's only live child.
    int server = static_cast<int>(report[1]);
    CHECK(server != ::getpid());
    CHECK(other[1] == server);
    CHECK(coproc_test::live_children() == std::vector<int>{server});
  }
  CHECK(p.is_alive());
  CHECK_FALSE(p.exitcode());
  auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(run(p.join(50ms)));
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  CHECK(p.is_alive()); // left alone
  p.terminate();
  q.kill();
  CHECK(run(p.join(20s)) == -SIGTERM);
  CHECK(run(q.join(20s)) == -SIGKILL);
  CHECK_FALSE(p.is_alive());
  CHECK(p.exitcode() == -SIGTERM);
  p.kill(); // no-ops once exited
  p.interrupt();
  p.terminate();

  coproc::process quick({.method = M::method}, exit_with, 3);
  quick.start();
  CHECK(run(quick.join(20s)) == 3);
  auto deadline = std::chrono::steady_clock::now() + 20s;
  coproc::process polled({.method = M::method}, exit_with, 4);
  polled.start();
  while (polled.is_alive() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CHECK(polled.exitcode() == 4);
  CHECK(join(polled) == 4);
  CHECK(coproc_test::zombie_children().empty());
}

TEST_CASE_TEMPLATE("fresh image: names, and the child knows its own", M, spawned, served) {
  coproc::process unnamed({.method = M::method}, has_name, std::string());
  unnamed.start();
  CHECK(join(unnamed) == 1);
  coproc::process own({.method = M::method}, [] {
    auto name = coproc::this_process::name();
    return name.rfind("Process-", 0) == 0 ? 0 : 1;
  });
  own.start();
  CHECK(join(own) == 0);
  coproc::process named({.name = "worker", .method = M::method}, has_name, std::string("worker"));
  named.start();
  CHECK(join(named) == 0);
  coproc::process renamed({.method = M::method}, has_name, std::string("renamed"));
  renamed.name("renamed");
  renamed.start();
  CHECK(join(renamed) == 0);
  // A fresh image may start one the same way (with forkserver, through a server of its
  // own); its child is named after it, as in Python.
  coproc::process outer({.method = M::method}, [] {
    coproc::process inner({.method = M::method}, has_name, coproc::this_process::name() + ":1");
    inner.start();
    return coproc::block_on(inner.join());
  });
  outer.start();
  CHECK(join(outer) == 0);
}

TEST_CASE_TEMPLATE("fresh image: the child's stdio is the parent's 0-2 at start()", M, spawned,
                   served) {
  auto out = capture(1, [] {
    coproc::process p({.method = M::method}, [] {
      std::cout << "to stdout" << std::endl;
      std::printf("buffered\n"); // flushed at exit
    });
    p.start();
    CHECK(join(p) == 0);
  });
  CHECK(out == "to stdout\nbuffered\n");
  // Started while 1 was a file: whenever it writes, the output goes to that file.
  temp_dir dir;
  int file = ::open(dir.file("out").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(file >= 0);
  coproc::process later({.method = M::method}, [] { std::printf("to the file\n"); });
  std::cout.flush();
  int saved = ::dup(1);
  ::dup2(file, 1);
  later.start();
  ::dup2(saved, 1);
  ::close(saved);
  ::close(file);
  CHECK(join(later) == 0);
  std::ifstream in(dir.file("out"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text == "to the file\n");
}

TEST_CASE_TEMPLATE("fresh image: what cannot travel is refused, naming the process and the "
                   "method, and fork still takes it",
                   M, spawned, served) {
  int local = 1;
  std::string method = std::string("start_method::") + M::name;
  auto refused = [&](coproc::process& p, const char* why) {
    std::string who = "process '" + p.name() + "'";
    CHECK_THROWS_WITH_AS(p.start(), doctest::Contains(who.c_str()), std::invalid_argument);
    CHECK_THROWS_WITH_AS(p.start(), doctest::Contains(why), std::invalid_argument);
    CHECK_THROWS_WITH_AS(p.start(), doctest::Contains(method.c_str()), std::invalid_argument);
    CHECK(p.pid() == 0);
  };
  coproc::process capturing({.name = "capturing", .method = M::method}, [local] { return local; });
  refused(capturing, "lambda with captures");
  coproc::process by_ref(
      {.name = "by_ref", .method = M::method}, [](int& v) { return v; }, std::ref(local));
  refused(by_ref, "std::reference_wrapper");
  coproc::process opaque(
      {.name = "opaque", .method = M::method}, [](not_serializable) {}, not_serializable{});
  refused(opaque, "wire-serializable");
  coproc::process forked(
      {.method = coproc::start_method::fork}, [local](not_serializable) { return local; },
      not_serializable{});
  forked.start();
  CHECK(join(forked) == 1);
}

TEST_CASE_TEMPLATE("fresh image: a daemon started from a thread that ends lives on with its "
                   "parent",
                   M, spawned, served) {
  CHECK(coproc_test::daemon_outlives_starting_thread([](coproc::connection<std::string> c) {
    auto d = std::make_unique<coproc::process>(
        coproc::process_options{.daemon = true, .method = M::method}, coproc_test::echo_once, c);
    d->start();
    return d;
  }));
}

TEST_CASE_TEMPLATE("fresh image: a daemon child dies with its parent even by SIGKILL", M, spawned,
                   served) {
  temp_dir dir;
  CHECK(coproc_test::daemon_dies_with_killed_parent(
      [&] {
        // Never destroyed: the handle's destructor would SIGTERM the daemon first.
        auto* d = new coproc::process({.daemon = true, .method = M::method}, report_then_wait,
                                      dir.file("pid"));
        d->start();
        auto ids = wait_for_report(dir.file("pid")); // its PDEATHSIG is set by now
        return ids.empty() ? 0 : static_cast<int>(ids[0]);
      },
      std::chrono::seconds(20)));
}
