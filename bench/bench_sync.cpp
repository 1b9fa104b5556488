// Synchronization objects: an uncontended lock acquire + release; a lock contended by two
// processes that both loop on it; event ping-pong between two processes (set -> the
// other's wait returns -> it sets the answer) beside a raw eventfd ping-pong (blocking
// read and write); value<int> increments from two processes (fetch_add, and load + store
// under get_lock as Python's `with v.get_lock(): v.value += 1`). Each beside Python's
// multiprocessing equivalent (bench/sync_peer.py). Figures are medians of their rounds.
#include <coproc/coproc.hpp>

#include "common.hpp"

#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace {

constexpr int rounds = 5;
constexpr int uncontended_n = 2'000'000;
constexpr int contended_n = 20'000; // per process
constexpr int pingpong_n = 20'000;
constexpr int increments_n = 1'000'000; // per process
constexpr int locked_increments_n = 20'000;

double uncontended_try() { // ns per try_acquire + release
  coproc::lock l;
  auto start = bench::clock::now();
  for (int i = 0; i < uncontended_n; ++i) {
    if (!l.try_acquire()) throw std::runtime_error("uncontended lock: held");
    l.release();
  }
  return bench::seconds_since(start) / uncontended_n * 1e9;
}

double uncontended_await() { // ns per co_await acquire() + release
  coproc::lock l;
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    for (int i = 0; i < uncontended_n; ++i) {
      co_await l.acquire();
      l.release();
    }
    co_return bench::seconds_since(start) / uncontended_n * 1e9;
  }());
}

double contended() { // us per acquisition, two processes looping on one lock
  coproc::lock l;
  coproc::barrier start_together(2);
  auto loop = [](coproc::lock l, coproc::barrier b) -> coproc::awaitable<void> {
    co_await b.wait();
    for (int i = 0; i < contended_n; ++i) {
      co_await l.acquire();
      l.release();
    }
  };
  coproc::process other(loop, l, start_together);
  other.start();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    co_await start_together.wait();
    auto start = bench::clock::now();
    for (int i = 0; i < contended_n; ++i) {
      co_await l.acquire();
      l.release();
    }
    co_await other.join();
    co_return bench::seconds_since(start) / (2.0 * contended_n) * 1e6;
  }());
}

double event_pingpong() { // us per round trip
  coproc::event ping, pong;
  coproc::process echo(
      [](coproc::event ping, coproc::event pong) -> coproc::awaitable<void> {
        for (int i = 0; i < pingpong_n + 100; ++i) {
          co_await ping.wait();
          ping.clear();
          pong.set();
        }
      },
      ping, pong);
  echo.start();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    auto trip = [&]() -> coproc::awaitable<void> {
      ping.set();
      co_await pong.wait();
      pong.clear();
    };
    for (int i = 0; i < 100; ++i) co_await trip();
    auto start = bench::clock::now();
    for (int i = 0; i < pingpong_n; ++i) co_await trip();
    double s = bench::seconds_since(start);
    co_await echo.join();
    co_return s / pingpong_n * 1e6;
  }());
}

double raw_eventfd_pingpong() { // us per round trip, blocking reads
  int ping = ::eventfd(0, EFD_CLOEXEC), pong = ::eventfd(0, EFD_CLOEXEC);
  int pid = ::fork();
  std::uint64_t one = 1, got;
  if (pid == 0) {
    for (int i = 0; i < pingpong_n + 100; ++i) {
      if (::read(ping, &got, 8) != 8 || ::write(pong, &one, 8) != 8) ::_exit(1);
    }
    ::_exit(0);
  }
  auto trip = [&] {
    if (::write(ping, &one, 8) != 8 || ::read(pong, &got, 8) != 8)
      throw std::runtime_error("eventfd");
  };
  for (int i = 0; i < 100; ++i) trip();
  auto start = bench::clock::now();
  for (int i = 0; i < pingpong_n; ++i) trip();
  double s = bench::seconds_since(start);
  ::waitpid(pid, nullptr, 0);
  ::close(ping);
  ::close(pong);
  return s / pingpong_n * 1e6;
}

// M increments/s from two processes together.
double increments(bool locked) {
  coproc::value<int> v(0);
  coproc::barrier start_together(2);
  const int n = locked ? locked_increments_n : increments_n;
  auto loop = [](coproc::value<int> v, coproc::barrier b, bool locked,
                 int n) -> coproc::awaitable<void> {
    co_await b.wait();
    auto l = v.get_lock();
    for (int i = 0; i < n; ++i) {
      if (locked) {
        co_await l.acquire();
        v.store(v.load() + 1);
        l.release();
      } else {
        v.fetch_add(1);
      }
    }
  };
  coproc::process other(loop, v, start_together, locked, n);
  other.start();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    co_await loop(v, start_together, locked, n);
    co_await other.join();
    double s = bench::seconds_since(start);
    if (v.load() != 2 * n) throw std::runtime_error("value: lost increments");
    co_return 2.0 * n / s / 1e6;
  }());
}

} // namespace

int main() {
  std::printf("synchronization objects, median of %d rounds\n", rounds);
  const char* unc = "lock: uncontended acquire + release";
  double try_ns = bench::median_of(rounds, uncontended_try);
  double await_ns = bench::median_of(rounds, uncontended_await);
  double py_unc = bench::python("sync_peer.py", "uncontended 200000 3");
  bench::row(unc, "coproc try_acquire", try_ns, "ns", true);
  bench::row(unc, "coproc co_await acquire", await_ns, "ns", true);
  bench::row(unc, "python mp.Lock", py_unc, "ns", true);
  bench::ratio("try_acquire vs Python (target <= 50 ns)", try_ns, py_unc, true);

  const char* con = "lock: 2 processes looping on it, per acquisition";
  double ours = bench::median_of(rounds, contended);
  double py = bench::python("sync_peer.py", "contended " + std::to_string(contended_n) + " 3");
  bench::row(con, "coproc", ours, "us", true);
  bench::row(con, "python mp.Lock", py, "us", true);
  bench::ratio("vs Python", ours, py, true);

  const char* ev = "event: set -> wake ping-pong, round trip";
  ours = bench::median_of(rounds, event_pingpong);
  double raw = bench::median_of(rounds, raw_eventfd_pingpong);
  py = bench::python("sync_peer.py", "event " + std::to_string(pingpong_n) + " 3");
  bench::row(ev, "coproc", ours, "us", true);
  bench::row(ev, "python mp.Event", py, "us", true);
  bench::row(ev, "raw eventfd (blocking)", raw, "us", true);
  bench::ratio("vs Python", ours, py, true);
  bench::ratio("vs raw eventfd", ours, raw, true);

  const char* inc = "value<int>: increments from 2 processes";
  ours = bench::median_of(rounds, [] { return increments(false); });
  double ours_locked = bench::median_of(rounds, [] { return increments(true); });
  py = bench::python("sync_peer.py", "increments " + std::to_string(locked_increments_n) + " 3");
  bench::row(inc, "coproc fetch_add", ours, "M/s", false);
  bench::row(inc, "coproc under get_lock", ours_locked, "M/s", false);
  bench::row(inc, "python Value, with get_lock", py, "M/s", false);
  bench::ratio("fetch_add vs Python", ours, py, false);
  bench::ratio("under get_lock vs Python", ours_locked, py, false);
}
