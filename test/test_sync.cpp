#include <coproc/errors.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>
#include <coproc/sync.hpp>
#include <coproc/wire.hpp>

#include <doctest/doctest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "support/checks.hpp"
#include "support/ipc.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::clock_type;
using coproc_test::run;
using coproc_test::shared_array;

static_assert(!coproc::wire::serializable<coproc::lock>, "sync objects are not pool task arguments");
static_assert(!coproc::wire::serializable<coproc::rlock>);
static_assert(!coproc::wire::serializable<coproc::semaphore>);
static_assert(!coproc::wire::serializable<coproc::event>);
static_assert(!coproc::wire::serializable<coproc::condition>);
static_assert(!coproc::wire::serializable<coproc::barrier>);
static_assert(!coproc::wire::serializable<coproc::value<int>>);
static_assert(!coproc::wire::serializable<coproc::array<int>>);

namespace {

template <class E, class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception of the expected type");
  return {};
}

long cpu_ms() {
  rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

// The state letter of a process in /proc ('S': asleep in the kernel).
char process_state(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto comm_end = line.rfind(')');
  return comm_end == std::string::npos || comm_end + 2 >= line.size() ? '?' : line[comm_end + 2];
}

// Waits until *flag reaches at least `value`, then until process pid is asleep: a process
// that announces a wait and makes no other blocking call on its way is then in that wait.
coproc::awaitable<bool> until_waiting(int pid, const std::atomic<int>* flag, int value = 1) {
  auto give_up = clock_type::now() + 20s;
  while (!(flag->load() >= value && process_state(pid) == 'S')) {
    if (clock_type::now() > give_up) co_return false;
    co_await coproc::sleep(1ms);
  }
  co_return true;
}

// Waits (polling, on the loop) until pred() or 20 s.
template <class P> coproc::awaitable<bool> until(P pred) {
  auto give_up = clock_type::now() + 20s;
  while (!pred()) {
    if (clock_type::now() > give_up) co_return false;
    co_await coproc::sleep(1ms);
  }
  co_return true;
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

// Counts the ticks of a 1 ms timer until *stop: the loop's responsiveness while another
// coroutine waits.
coproc::awaitable<int> ticker(const bool* stop) {
  int ticks = 0;
  while (!*stop) {
    co_await coproc::sleep(1ms);
    ++ticks;
  }
  co_return ticks;
}

} // namespace

// ---- lock and rlock

TEST_CASE("a lock is held by one owner at a time and try_acquire tells") {
  coproc::lock l;
  CHECK(l.try_acquire());
  CHECK_FALSE(l.try_acquire()); // not re-entrant
  CHECK_FALSE(l.abandoned());
  l.release();
  run([&]() -> coproc::awaitable<void> {
    co_await l.acquire();
    CHECK_FALSE(co_await l.acquire(20ms));
    l.release();
    CHECK(co_await l.acquire(20ms));
    l.release();
  }());
  auto copy = l; // a copy shares the lock
  CHECK(copy.try_acquire());
  CHECK_FALSE(l.try_acquire());
  l.release();
}

TEST_CASE("releasing an unheld lock or rlock is a logic_error") {
  coproc::lock l;
  auto what = error_of<std::logic_error>([&] { l.release(); });
  CHECK(what.find("coproc::lock") != std::string::npos);
  CHECK(what.find("not held") != std::string::npos);
  coproc::rlock r;
  CHECK(error_of<std::logic_error>([&] { r.release(); }).find("coproc::rlock") != std::string::npos);
  CHECK(r.try_acquire());
  r.release();
  CHECK_THROWS_AS(r.release(), std::logic_error);
}

TEST_CASE("a lock released by a process that does not hold it is a logic_error naming both") {
  coproc::lock l;
  REQUIRE(l.try_acquire());
  coproc::process other(
      [](coproc::lock l, int holder) {
        try {
          l.release();
        } catch (const std::logic_error& e) {
          std::string what = e.what();
          return what.find(std::to_string(holder)) != std::string::npos &&
                         what.find(std::to_string(coproc::getpid())) != std::string::npos
                     ? 0
                     : 2;
        }
        return 1;
      },
      l, coproc::getpid());
  other.start();
  CHECK(run(other.join()) == 0);
  l.release(); // still ours
}

TEST_CASE("an rlock is re-entrant per process and any of its coroutines may release it") {
  coproc::rlock r;
  shared_array<std::atomic<int>> flags(2); // [0] the child waits, [1] it got the lock
  run([&]() -> coproc::awaitable<void> {
    co_await r.acquire();
    co_await r.acquire();
    CHECK(r.try_acquire());
    coproc::process child(
        [](coproc::rlock r, std::atomic<int>* flags) -> coproc::awaitable<int> {
          flags[0].store(1);
          if (!co_await r.acquire(20s)) co_return 1;
          flags[1].store(1);
          r.release();
          co_return 0;
        },
        r, flags.data);
    child.start();
    REQUIRE(co_await until_waiting(child.pid(), flags.data));
    r.release();
    // Released by another coroutine of this process.
    auto other = [](coproc::rlock r) -> coproc::awaitable<void> {
      r.release();
      co_return;
    };
    co_await other(r);
    CHECK(flags.data[1].load() == 0); // one level is still held
    r.release();
    CHECK(co_await child.join() == 0);
    CHECK(flags.data[1].load() == 1);
  }());
}

TEST_CASE("a waiter in another process gets the lock when it is released") {
  coproc::lock l;
  shared_array<std::atomic<int>> flags(1);
  REQUIRE(l.try_acquire());
  coproc::process child(
      [](coproc::lock l, std::atomic<int>* flags) -> coproc::awaitable<int> {
        flags[0].store(1);
        co_await l.acquire();
        bool abandoned = l.abandoned();
        l.release();
        co_return abandoned ? 2 : 0;
      },
      l, flags.data);
  child.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(child.pid(), flags.data));
    l.release();
    CHECK(co_await child.join() == 0);
  }());
  CHECK(l.try_acquire()); // free again
  l.release();
}

TEST_CASE("a timed acquire expires on time, sleeps without CPU and leaves the loop responsive") {
  coproc::lock l;
  coproc::event done;
  shared_array<std::atomic<int>> held(1);
  coproc::process holder(
      [](coproc::lock l, coproc::event done, std::atomic<int>* held) -> coproc::awaitable<void> {
        co_await l.acquire();
        held->store(1);
        co_await done.wait();
        l.release();
      },
      l, done, held.data);
  holder.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until([&] { return held.data->load() == 1; }));
    for (auto timeout : {50ms, 200ms}) {
      auto start = clock_type::now();
      CHECK_FALSE(co_await l.acquire(timeout));
      auto waited = clock_type::now() - start;
      CHECK(waited >= timeout);
      CHECK(waited < timeout + 500ms);
    }
    long before = cpu_ms();
    auto start = clock_type::now();
    CHECK_FALSE(co_await l.acquire(1s));
    auto waited = clock_type::now() - start;
    long cpu = cpu_ms() - before;
    MESSAGE("a 1 s timed acquire cost " << cpu << " ms CPU");
    CHECK(waited >= 1s);
    CHECK(waited < 2s);
    CHECK(cpu < 50);
    // Meanwhile a 1 ms timer of the same loop keeps ticking.
    bool stop = false;
    auto waiter = [&]() -> coproc::awaitable<int> {
      CHECK_FALSE(co_await l.acquire(500ms));
      stop = true;
      co_return 0;
    };
    std::vector<coproc::awaitable<int>> both;
    both.push_back(waiter());
    both.push_back(ticker(&stop));
    auto results = co_await coproc::gather(std::move(both));
    MESSAGE("a 1 ms timer ticked " << results[1] << " times during a 500 ms acquire");
    CHECK(results[1] > 100); // about 500 on an idle machine
    done.set();
    CHECK(co_await holder.join() == 0);
  }());
}

TEST_CASE("an acquire cancelled by a timer takes nothing") {
  using namespace boost::asio::experimental::awaitable_operators;
  coproc::lock l;
  REQUIRE(l.try_acquire());
  run([&]() -> coproc::awaitable<void> {
    // The lock is ours: a second acquire of this process waits, and the timer cancels it.
    auto r = co_await (l.acquire() || coproc::sleep(30ms));
    CHECK(r.index() == 1);
    l.release();
    // Nobody holds it now: the cancelled acquire did not take it later either.
    coproc::process probe(
        [](coproc::lock l) {
          if (!l.try_acquire()) return 1;
          l.release();
          return 0;
        },
        l);
    probe.start();
    CHECK(co_await probe.join() == 0);
  }());
}

TEST_CASE("four processes taking a lock 1000 times each exclude each other and share it fairly") {
  constexpr int rounds = 1000;
  coproc::lock l;
  struct tally {
    std::atomic<int> inside, overlaps, first_done;
    std::atomic<int> counts[4];
    int snapshot[4];
    long total; // changed only under the lock, non-atomically
  };
  shared_array<tally> t(1);
  shared_array<std::atomic<int>> ready(1);
  coproc::event go; // all four start together
  auto worker = [](coproc::lock l, tally* t, int me, coproc::event go,
                   std::atomic<int>* ready) -> coproc::awaitable<void> {
    ready->fetch_add(1);
    co_await go.wait();
    for (int i = 0; i < rounds; ++i) {
      co_await l.acquire();
      if (t->inside.fetch_add(1) != 0) t->overlaps.fetch_add(1);
      t->total = t->total + 1;
      t->counts[me].fetch_add(1);
      t->inside.fetch_sub(1);
      l.release();
    }
    int expected = 0;
    if (t->first_done.compare_exchange_strong(expected, 1))
      for (int p = 0; p < 4; ++p) t->snapshot[p] = t->counts[p].load();
  };
  std::vector<coproc::process> procs;
  for (int p = 0; p < 4; ++p) procs.emplace_back(worker, l, t.data, p, go, ready.data);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (int p = 0; p < 4; ++p) REQUIRE(co_await until_waiting(procs[p].pid(), ready.data, 4));
    go.set();
    for (auto& p : procs) CHECK(co_await p.join() == 0);
  }());
  CHECK(t.data->overlaps.load() == 0);
  CHECK(t.data->total == 4 * rounds);
  MESSAGE("when the first finished its " << rounds << ": " << t.data->snapshot[0] << " " << t.data->snapshot[1]
                                         << " " << t.data->snapshot[2] << " " << t.data->snapshot[3]);
  for (int p = 0; p < 4; ++p) CHECK(t.data->snapshot[p] >= rounds / 2);
}

TEST_CASE("a waiter gets the lock within milliseconds when its holder is SIGKILLed, abandoned") {
  coproc::lock l;
  shared_array<std::atomic<std::int64_t>> times(2); // [0] killed at, [1] acquired at (ns)
  shared_array<std::atomic<int>> flags(2);          // [0] the holder holds, [1] the waiter waits
  coproc::process holder(
      [](coproc::lock l, std::atomic<int>* flags) -> coproc::awaitable<void> {
        co_await l.acquire();
        flags[0].store(1);
        co_await coproc::sleep(1h);
      },
      l, flags.data);
  holder.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until([&] { return flags.data[0].load() == 1; }));
    coproc::process waiter(
        [](coproc::lock l, std::atomic<int>* flags, std::atomic<std::int64_t>* times) -> coproc::awaitable<int> {
          flags[1].store(1);
          if (!co_await l.acquire(20s)) co_return 1;
          times[1].store(now_ns());
          bool abandoned = l.abandoned();
          l.release();
          co_return abandoned && !l.abandoned() ? 0 : 2;
        },
        l, flags.data, times.data);
    waiter.start();
    REQUIRE(co_await until_waiting(waiter.pid(), flags.data + 1));
    times.data[0].store(now_ns());
    holder.kill(); // not reaped until the waiter is done: a zombie holder is dead too
    CHECK(co_await waiter.join() == 0);
    CHECK(co_await holder.join() == -9);
  }());
  auto latency_ms = (times.data[1].load() - times.data[0].load()) / 1e6;
  MESSAGE("the lock changed hands " << latency_ms << " ms after the SIGKILL");
  CHECK(latency_ms < 500);
  CHECK(l.try_acquire());
  CHECK_FALSE(l.abandoned());
  l.release();
}

TEST_CASE("lock holders killed at random instants for 200 rounds never wedge the lock") {
  constexpr int rounds = 200;
  coproc::lock l;
  struct state {
    std::atomic<int> inside; // the pid of a worker between acquire and release
    std::atomic<int> killed; // the pid killed last: it may have died inside
    std::atomic<int> overlaps;
    std::atomic<long> acquisitions;
  };
  shared_array<state> s(1);
  auto worker = [](coproc::lock l, state* s) -> coproc::awaitable<void> {
    for (std::uint32_t i = 0;; ++i) {
      co_await l.acquire();
      auto before = s->inside.exchange(coproc::getpid());
      if (before != 0 && before != s->killed.load()) s->overlaps.fetch_add(1);
      if (i % 16 == 0) co_await coproc::sleep(100us); // sometimes held across a wait
      s->inside.store(0);
      s->acquisitions.fetch_add(1);
      l.release();
    }
  };
  std::mt19937 rng(20261202);
  int abandoned_rounds = 0;
  double worst_ms = 0;
  for (int r = 0; r < rounds; ++r) {
    coproc::process a(worker, l, s.data), b(worker, l, s.data);
    a.start();
    b.start();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000)); // a random instant
    s.data->killed.store(a.pid());
    a.kill();
    run([&]() -> coproc::awaitable<void> {
      CHECK(co_await a.join() == -9);
      // b goes on: it takes the lock over if a died holding it.
      auto seen = s.data->acquisitions.load();
      bool progressed = co_await until([&] { return s.data->acquisitions.load() > seen + 5; });
      CHECK(progressed);
    }());
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 1000));
    s.data->killed.store(b.pid());
    b.kill();
    run([&]() -> coproc::awaitable<void> {
      CHECK(co_await b.join() == -9);
      const bool was_inside = s.data->inside.exchange(0) != 0;
      auto start = clock_type::now();
      REQUIRE(co_await l.acquire(10s));
      double ms = std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
      worst_ms = std::max(worst_ms, ms);
      if (was_inside) CHECK(l.abandoned());
      abandoned_rounds += l.abandoned();
      l.release();
    }());
  }
  MESSAGE(rounds << " rounds: " << s.data->acquisitions.load() << " acquisitions, " << abandoned_rounds
                 << " taken over from a dead holder, the slowest take-over " << worst_ms << " ms");
  CHECK(s.data->overlaps.load() == 0);
  CHECK(abandoned_rounds > 0);
  CHECK(worst_ms < 1000);
}
