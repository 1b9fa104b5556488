// The pool tests' tasks (they run in the workers), shared by test_pool.cpp and
// test_pool_protocol.cpp. Plain functions: the pool sends them as image offsets.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/this_process.hpp>

#include "timing.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace coproc_test::pool_tasks {

inline int square(int x) { return x * x; }
inline int plus_one(int x) { return x + 1; }
inline int add3(int a, int b, int c) { return a + b + c; }
inline std::string greet(std::string name, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += "hi " + name + ";";
  return out;
}
inline int worker_pid() { return ::getpid(); }
inline int worker_ppid() { return ::getppid(); }
inline std::string worker_name() { return coproc::this_process::name(); }
inline void nap(int ms) { ::usleep(static_cast<useconds_t>(ms) * 1000); }
inline int nap_then(int ms) {
  nap(ms);
  return ms;
}
inline int fail_on_odd(int x) {
  if (x % 2) throw std::invalid_argument("odd item " + std::to_string(x));
  return x;
}
inline int throw_int(int) { throw 42; }
inline int die_by_signal(int sig) {
  ::kill(::getpid(), sig);
  ::pause();
  return 0;
}
inline int die_by_exit(int code) { ::_exit(code); }
inline int die_by_abort(int) { std::abort(); }
inline std::vector<int> range_of(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

struct point {
  int x = 0, y = 0;
  std::string label;
  template <class Archive> void serialize(Archive& ar) { ar(x, y, label); }
  bool operator==(const point&) const = default;
};
inline point mirror(point p) { return {p.y, p.x, p.label + "'"}; }

struct doubler {
  int operator()(int x) const { return 2 * x; }
};

// What a worker tells the test: its pid and how often the initializer ran in it.
struct worker_report {
  int pid;
  int inits;
};
inline int g_inits = 0;
inline int g_parent_state =
    0; // set by the parent at run time: a forked worker sees it, a spawned one does not
inline int parent_state() { return g_parent_state; }
inline void count_init() { ++g_inits; }
inline void failing_init() { throw std::runtime_error("initializer refused"); }
inline worker_report report(int ms) {
  nap(ms);
  return {::getpid(), g_inits};
}

// A page shared with every worker (mapped before main, so before any fork): tasks
// announce their pid there.
inline std::atomic<int>* const g_slots = [] {
  void* mem = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::abort();
  return new (mem) std::atomic<int>[64] {};
}();
inline std::atomic<int>* shared_slots() { return g_slots; }
inline int announce_and_sleep(int slot) {
  shared_slots()[slot].store(::getpid());
  ::sleep(30);
  return -1;
}

// Item 0 waits (10 s at most) until the parent counts items 1..5 received in slot 30:
// a count kept by the workers would let 0's answer overtake 5's on its way back.
inline int last_of_six(int x) {
  if (x != 0) return x;
  for (int i = 0; i < 50000 && shared_slots()[30].load() < 5; ++i) ::usleep(200);
  return 0;
}

// The pid a task published in slot, once it runs.
inline coproc::awaitable<int> announced(int slot) {
  for (;;) {
    if (int pid = shared_slots()[slot].load()) co_return pid;
    co_await sleep_for(std::chrono::microseconds(200));
  }
}

} // namespace coproc_test::pool_tasks
