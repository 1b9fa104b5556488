// Shared by the tests of what becomes of children whose parent is killed by SIGKILL: a
// daemon dies with it, a plain child outlives it (for fork, spawn and forkserver).
#pragma once

#include <coproc/process.hpp>
#include <coproc/queue.hpp>

#include "checks.hpp"

#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

namespace coproc_test {

// Forks a subreaper, which forks a parent that runs start (the pids it wants watched, 0
// for none or on failure) and then dies by SIGKILL. The subreaper adopts the orphans and
// runs watch(pids) once the parent is reaped; watch's result (0 or 1) is returned, or -1
// if the harness itself failed.
template <class Start, class Watch> int after_parent_killed(Start start, Watch watch) {
  int report[2];
  if (::pipe(report) != 0) return -1;
  int helper = ::fork();
  if (helper == 0) {
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    int ids[2];
    if (::pipe(ids) != 0) ::_exit(2);
    int parent = ::fork();
    if (parent == 0) {
      std::array<int, 2> pids = start();
      (void)!::write(ids[1], pids.data(), sizeof pids);
      ::raise(SIGKILL);
    }
    std::array<int, 2> pids{};
    if (::read(ids[0], pids.data(), sizeof pids) != sizeof pids || pids[0] <= 0) ::_exit(3);
    ::waitpid(parent, nullptr, 0);
    int result = watch(pids);
    (void)!::write(report[1], &result, sizeof result);
    ::_exit(0);
  }
  ::close(report[1]);
  int result = -1;
  bool read_it = ::read(report[0], &result, sizeof result) == sizeof result;
  ::close(report[0]);
  int status = 0;
  ::waitpid(helper, &status, 0);
  return read_it && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? result : -1;
}

// In the subreaper: waits up to limit for its adopted child pid to end; its wait status,
// or -1 (then the child is killed and reaped).
inline int reap_adopted(int pid, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

// The daemon whose pid start_daemon returns (once its death signal is armed; 0 on
// failure) ends by SIGKILL within limit of its parent's SIGKILL.
template <class Start>
bool daemon_dies_with_killed_parent(Start start_daemon, std::chrono::milliseconds limit) {
  return after_parent_killed(
             [&] {
               return std::array<int, 2>{start_daemon(), 0};
             },
             [&](std::array<int, 2> pids) {
               int status = reap_adopted(pids[0], limit);
               return status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL ? 1 : 0;
             }) == 1;
}

// start returns {the plain child's pid, its fork server's pid}: after the parent's SIGKILL
// the server exits within limit, and the child still runs after that (then it is killed).
template <class Start>
bool plain_child_outlives_killed_parent(Start start, std::chrono::milliseconds limit) {
  return after_parent_killed(start, [&](std::array<int, 2> pids) {
           if (pids[1] <= 0) return 0;
           int server = reap_adopted(pids[1], limit);
           int status = 0;
           // Adopted when the server exited: still running, so not reapable.
           bool alive = server != -1 && ::waitpid(pids[0], &status, WNOHANG) == 0;
           ::kill(pids[0], SIGKILL);
           ::waitpid(pids[0], nullptr, 0);
           return alive ? 1 : 0;
         }) == 1;
}

// Runs test (which returns true if it passed) in a forked child and returns its result.
// For a test that leaves coproc's starter thread behind (a start off the main thread makes
// it, and it lasts as long as the process): a later case in the same test process would
// fork from a threaded process, and its child could not start a thread under TSan.
template <class Test> bool in_forked_child(Test test) {
  int pid = ::fork();
  if (pid == 0) ::_exit(test() ? 0 : 1);
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A daemon's target: says it runs (its death signal is armed by then), then answers one
// message with the same.
inline coproc::awaitable<void> echo_once(coproc::connection<std::string> c) {
  co_await c.send("running");
  co_await c.send(co_await c.recv());
}

// start(connection) starts a daemon running echo_once on it, from a thread that ends once
// the daemon runs; true if the daemon still answers after the thread is gone, and then
// exits 0. The kernel sends a child's PR_SET_PDEATHSIG when the *thread* that forked or
// spawned it ends, before that thread leaves /proc/self/task: a daemon killed so cannot
// answer. Runs in a forked child (in_forked_child).
template <class Start> bool daemon_outlives_starting_thread(Start start) {
  return in_forked_child([&] {
    auto [mine, theirs] = coproc::pipe<std::string>();
    std::unique_ptr<coproc::process> daemon;
    pid_t tid = 0;
    bool running = false;
    std::thread([&, theirs = theirs] {
      tid = ::gettid();
      daemon = start(theirs);
      running = run(mine.recv()) == "running";
    }).join();
    if (!running) return false;
    std::string task = "/proc/self/task/" + std::to_string(tid);
    while (std::filesystem::exists(task)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    run(mine.send("ping"));
    // A dead daemon never answers; the time bound only ends the test.
    bool answered = run(mine.poll(std::chrono::seconds(30))) && run(mine.recv()) == "ping";
    return answered && run(daemon->join()) == 0;
  });
}

} // namespace coproc_test
