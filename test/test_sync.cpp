#include <coproc/errors.hpp>
#include <coproc/process.hpp>
#include <coproc/run.hpp>
#include <coproc/sync.hpp>
#include <coproc/wire.hpp>

#include <doctest/doctest.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>

#include "support/checks.hpp"
#include "support/ipc.hpp"
#include "support/timing.hpp"

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

static_assert(!coproc::wire::serializable<coproc::lock>,
              "sync objects are not pool task arguments");
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
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
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
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
      .count();
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
  CHECK(error_of<std::logic_error>([&] { r.release(); }).find("coproc::rlock") !=
        std::string::npos);
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
    std::atomic<int> inside, overlaps, first_done, entered;
    std::atomic<int> counts[4]; // acquisitions once all four had the lock once
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
      if (i % 4 == 0) co_await coproc::sleep(20us); // held a while: the others queue up
      if (i == 0) t->entered.fetch_add(1);
      // Counted once every worker is contending (a slow start is not unfairness).
      if (t->entered.load() == 4) t->counts[me].fetch_add(1);
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
  auto* snap = t.data->snapshot;
  MESSAGE("acquisitions once all four contended, when the first finished its "
          << rounds << ": " << snap[0] << " " << snap[1] << " " << snap[2] << " " << snap[3]);
  const int most = *std::max_element(snap, snap + 4);
  CHECK(most > 0);
  for (int p = 0; p < 4; ++p) CHECK(snap[p] * 2 >= most);
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
        [](coproc::lock l, std::atomic<int>* flags,
           std::atomic<std::int64_t>* times) -> coproc::awaitable<int> {
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

TEST_CASE("an rlock taken over from a dead holder is held once, whatever the dead one's count") {
  coproc::rlock r;
  shared_array<std::atomic<int>> held(1);
  coproc::process holder(
      [](coproc::rlock r, std::atomic<int>* held) -> coproc::awaitable<void> {
        co_await r.acquire();
        co_await r.acquire();
        co_await r.acquire();
        held->store(1);
        co_await coproc::sleep(1h);
      },
      r, held.data);
  holder.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until([&] { return held.data->load() == 1; }));
    CHECK_FALSE(r.try_acquire());
    holder.kill();
    CHECK(co_await holder.join() == -9);
    CHECK(co_await r.acquire(5s));
    CHECK(r.abandoned());
    r.release(); // once: free
    CHECK_FALSE(r.abandoned());
    CHECK_THROWS_AS(r.release(), std::logic_error);
    coproc::process probe(
        [](coproc::rlock r) {
          if (!r.try_acquire()) return 1;
          r.release();
          return 0;
        },
        r);
    probe.start();
    CHECK(co_await probe.join() == 0);
  }());
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
  MESSAGE(rounds << " rounds: " << s.data->acquisitions.load() << " acquisitions, "
                 << abandoned_rounds << " taken over from a dead holder, the slowest take-over "
                 << worst_ms << " ms");
  CHECK(s.data->overlaps.load() == 0);
  CHECK(abandoned_rounds > 0);
  CHECK(worst_ms < 1000);
}

// ---- semaphore, bounded_semaphore, event

TEST_CASE("a semaphore counts its units across processes") {
  coproc::semaphore sem(2);
  CHECK(sem.value() == 2);
  CHECK(sem.try_acquire());
  CHECK(sem.try_acquire());
  CHECK_FALSE(sem.try_acquire());
  CHECK(sem.value() == 0);
  shared_array<std::atomic<int>> flags(2);
  coproc::process child(
      [](coproc::semaphore sem, std::atomic<int>* flags) -> coproc::awaitable<int> {
        flags[0].store(1);
        if (!co_await sem.acquire(20s)) co_return 1;
        flags[1].store(1);
        co_return 0;
      },
      sem, flags.data);
  child.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(child.pid(), flags.data));
    auto start = clock_type::now();
    CHECK_FALSE(co_await sem.acquire(50ms));
    CHECK(clock_type::now() - start >= 50ms);
    sem.release();
    CHECK(co_await child.join() == 0);
    CHECK(sem.value() == 0);
    sem.release();
    sem.release();
    sem.release(); // an unbounded semaphore may go above its start
    CHECK(sem.value() == 3);
    co_await sem.acquire();
    CHECK(sem.value() == 2);
  }());
}

TEST_CASE("a bounded semaphore refuses a release above its initial value") {
  coproc::bounded_semaphore sem(1);
  auto what = error_of<std::logic_error>([&] { sem.release(); });
  CHECK(what.find("coproc::bounded_semaphore") != std::string::npos);
  CHECK(sem.try_acquire());
  sem.release();
  CHECK(sem.value() == 1);
  CHECK_THROWS_AS(sem.release(), std::logic_error);
}

TEST_CASE("a bounded semaphore of 0 refuses every release and a semaphore of 0 takes them") {
  coproc::bounded_semaphore bounded(0);
  auto what = error_of<std::logic_error>([&] { bounded.release(); });
  CHECK(what.find("above the initial value 0") != std::string::npos);
  CHECK(bounded.value() == 0);
  coproc::semaphore plain(0);
  plain.release();
  CHECK(plain.value() == 1);
}

TEST_CASE("a semaphore of 1 guards a critical section of four processes") {
  coproc::semaphore sem(1);
  struct tally {
    std::atomic<int> inside, overlaps;
    long total;
  };
  shared_array<tally> t(1);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 4; ++p)
    procs.emplace_back(
        [](coproc::semaphore sem, tally* t) -> coproc::awaitable<void> {
          for (int i = 0; i < 2000; ++i) {
            co_await sem.acquire();
            if (t->inside.fetch_add(1) != 0) t->overlaps.fetch_add(1);
            t->total = t->total + 1;
            t->inside.fetch_sub(1);
            sem.release();
          }
        },
        sem, t.data);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (auto& p : procs) CHECK(co_await p.join() == 0);
  }());
  CHECK(t.data->overlaps.load() == 0);
  CHECK(t.data->total == 8000);
  CHECK(sem.value() == 1);
}

TEST_CASE("an event wakes every waiter of every process and stays set until cleared") {
  coproc::event ev;
  CHECK_FALSE(ev.is_set());
  shared_array<std::atomic<int>> waiting(1);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 3; ++p)
    procs.emplace_back(
        [](coproc::event ev, std::atomic<int>* waiting) -> coproc::awaitable<int> {
          waiting->fetch_add(1);
          co_return co_await ev.wait(20s) ? 0 : 1;
        },
        ev, waiting.data);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (auto& p : procs) REQUIRE(co_await until_waiting(p.pid(), waiting.data, 3));
    auto start = clock_type::now();
    CHECK_FALSE(co_await ev.wait(50ms));
    CHECK(clock_type::now() - start >= 50ms);
    ev.set();
    CHECK(ev.is_set());
    for (auto& p : procs) CHECK(co_await p.join() == 0);
    CHECK(co_await ev.wait(0ms)); // set: at once
    co_await ev.wait();
    ev.clear();
    CHECK_FALSE(ev.is_set());
    CHECK_FALSE(co_await ev.wait(10ms));
  }());
}

TEST_CASE("an event wait costs no CPU while it sleeps") {
  coproc::event ev;
  run([&]() -> coproc::awaitable<void> {
    long before = cpu_ms();
    auto start = clock_type::now();
    CHECK_FALSE(co_await ev.wait(1s));
    auto waited = clock_type::now() - start;
    long cpu = cpu_ms() - before;
    MESSAGE("a 1 s event wait cost " << cpu << " ms CPU");
    CHECK(waited >= 1s);
    CHECK(waited < 2s);
    CHECK(cpu < 50);
  }());
}

// ---- value and array

TEST_CASE("value loads, stores, fetch_add, fetch_sub and compare_exchange") {
  coproc::value<int> v(5);
  CHECK(v.load() == 5);
  v.store(7);
  CHECK(v.fetch_add(3) == 7);
  CHECK(v.fetch_sub(1) == 10);
  CHECK(v.load() == 9);
  int expected = 1;
  CHECK_FALSE(v.compare_exchange(expected, 2));
  CHECK(expected == 9); // updated on failure
  CHECK(v.compare_exchange(expected, 2));
  CHECK(v.load() == 2);
  coproc::value<double> d(1.5);
  d.store(d.load() * 2);
  CHECK(d.load() == 3.0);
  struct big {
    char bytes[100];
    long n;
  };
  coproc::value<big> b;
  CHECK(b.load().n == 0);
  big x{};
  x.n = 42;
  b.store(x);
  CHECK(b.load().n == 42);
}

TEST_CASE("four processes adding 10000 times each to a value give the exact sum") {
  coproc::value<long> counter(0);
  coproc::value<long> guarded(0); // load and store apart, under the value's lock
  std::vector<coproc::process> procs;
  for (int p = 0; p < 4; ++p)
    procs.emplace_back(
        [](coproc::value<long> counter, coproc::value<long> guarded) -> coproc::awaitable<void> {
          auto l = guarded.get_lock();
          for (int i = 0; i < 10000; ++i) {
            counter.fetch_add(1);
            if (i % 10 == 0) {
              co_await l.acquire();
              guarded.store(guarded.load() + 1);
              l.release();
            }
          }
        },
        counter, guarded);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (auto& p : procs) CHECK(co_await p.join() == 0);
  }());
  CHECK(counter.load() == 40000);
  CHECK(guarded.load() == 4000);
}

TEST_CASE("an array is shared memory with a lock") {
  coproc::array<int> a(100, 3);
  CHECK(a.size() == 100);
  CHECK(std::all_of(a.view().begin(), a.view().end(), [](int x) { return x == 3; }));
  coproc::process child(
      [](coproc::array<int> a) {
        auto l = a.get_lock();
        if (!l.try_acquire()) return 1;
        for (std::size_t i = 0; i < a.size(); ++i) a.view()[i] = static_cast<int>(i);
        l.release();
        return 0;
      },
      a);
  child.start();
  CHECK(run(child.join()) == 0);
  for (std::size_t i = 0; i < a.size(); ++i) CHECK(a.view()[i] == static_cast<int>(i));
  auto copy = a;
  CHECK(copy.view().data() == a.view().data());
  auto l = copy.get_lock();
  CHECK(l.try_acquire());
  CHECK_FALSE(a.get_lock().try_acquire()); // one lock for every copy
  l.release();
}

// ---- condition

TEST_CASE("wait and notify without the condition's lock are logic_errors") {
  coproc::condition c;
  CHECK(error_of<std::logic_error>([&] { c.notify(); }).find("coproc::condition") !=
        std::string::npos);
  CHECK_THROWS_AS(c.notify_all(), std::logic_error);
  run([&]() -> coproc::awaitable<void> {
    bool threw = false;
    try {
      co_await c.wait();
    } catch (const std::logic_error& e) {
      threw = std::string(e.what()).find("wait") != std::string::npos;
    }
    CHECK(threw);
  }());
}

TEST_CASE("a condition wait releases the lock, a notify from another process wakes it") {
  coproc::lock l;
  coproc::condition c(l);
  coproc::value<int> ready(0);
  shared_array<std::atomic<int>> flags(1);
  coproc::process waiter(
      [](coproc::condition c, coproc::value<int> ready,
         std::atomic<int>* flags) -> coproc::awaitable<int> {
        co_await c.acquire();
        flags->store(1);
        bool ok = co_await c.wait_for([&] { return ready.load() == 1; }, 20s);
        c.release();
        co_return ok ? 0 : 1;
      },
      c, ready, flags.data);
  waiter.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(waiter.pid(), flags.data));
    co_await l.acquire(); // free: the waiter released it
    ready.store(1);
    c.notify();
    l.release();
    CHECK(co_await waiter.join() == 0);
    co_await c.acquire();
    auto start = clock_type::now();
    CHECK_FALSE(co_await c.wait(50ms));
    CHECK(clock_type::now() - start >= 50ms);
    CHECK_FALSE(l.try_acquire()); // re-acquired after the timeout
    CHECK_FALSE(co_await c.wait_for([] { return false; }, 30ms));
    c.release();
  }());
}

TEST_CASE(
    "notify wakes waiters in order, notify_all wakes the rest, an rlock's count is restored") {
  coproc::condition c; // its own rlock
  coproc::value<int> order(0);
  shared_array<std::atomic<int>> flags(
      8); // [0] waiting count, [1 + i] when waiter i woke (1-based order)
  std::vector<coproc::process> procs;
  for (int i = 0; i < 3; ++i) {
    procs.emplace_back(
        [](coproc::condition c, coproc::value<int> order, std::atomic<int>* flags,
           int i) -> coproc::awaitable<int> {
          co_await c.acquire();
          co_await c.acquire(); // twice: wait releases both levels
          flags[0].fetch_add(1);
          co_await c.wait();
          flags[1 + i].store(order.fetch_add(1) + 1);
          c.release();
          bool still = c.try_acquire(); // the second level was restored: held, re-entrant
          c.release();
          c.release();
          co_return still ? 0 : 1;
        },
        c, order, flags.data, i);
    procs.back().start();
    // In order: each waits before the next starts.
    REQUIRE(run(until_waiting(procs.back().pid(), flags.data, i + 1)));
  }
  run([&]() -> coproc::awaitable<void> {
    co_await c.acquire();
    c.notify();
    c.release();
    CHECK(co_await procs[0].join() == 0);
    CHECK(flags.data[1].load() == 1);
    CHECK(flags.data[2].load() == 0);
    co_await c.acquire();
    c.notify_all();
    c.release();
    CHECK(co_await procs[1].join() == 0);
    CHECK(co_await procs[2].join() == 0);
  }());
}

namespace {
// Runs op on this coroutine's executor, cancellable through `signal`; counts it done.
void spawn_cancellable(const boost::asio::any_io_executor& ex, coproc::awaitable<void> op,
                       boost::asio::cancellation_signal& signal, int& done,
                       std::exception_ptr& error) {
  boost::asio::co_spawn(
      ex, std::move(op),
      boost::asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) {
        error = e;
        ++done;
      }));
}
} // namespace

TEST_CASE("a cancelled condition wait passes a notification it had on to the next waiter") {
  namespace asio = boost::asio;
  coproc::lock l;
  coproc::condition c(l);
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    int waiting = 0, done = 0;
    bool a_aborted = false, b_notified = false;
    std::exception_ptr a_error, b_error;
    asio::cancellation_signal cancel_a, cancel_b;
    auto a = [&]() -> coproc::awaitable<void> {
      co_await c.acquire();
      ++waiting;
      try {
        co_await c.wait();
      } catch (const boost::system::system_error& e) {
        a_aborted = e.code() == asio::error::operation_aborted;
      }
      c.release(); // logic_error unless the cancelled wait re-acquired it
    };
    auto b = [&]() -> coproc::awaitable<void> {
      co_await c.acquire();
      ++waiting;
      b_notified = co_await c.wait(5s);
      c.release();
    };
    spawn_cancellable(ex, a(), cancel_a, done, a_error);
    CHECK(co_await until([&] { return waiting == 1; })); // a waits first: notify picks it
    spawn_cancellable(ex, b(), cancel_b, done, b_error);
    CHECK(co_await until([&] { return waiting == 2; }));
    co_await c.acquire();
    c.notify(1);
    cancel_a.emit(asio::cancellation_type::terminal); // a had the notification
    c.release();
    CHECK(co_await until([&] { return done == 2; }));
    CHECK(!a_error);
    CHECK(!b_error);
    CHECK(a_aborted);
    CHECK(b_notified);
    CHECK(l.try_acquire()); // free again
    l.release();
  }());
}

TEST_CASE("a cancelled condition wait throws only once it holds the lock again") {
  namespace asio = boost::asio;
  coproc::lock l;
  coproc::condition c(l);
  run([&]() -> coproc::awaitable<void> {
    auto ex = co_await asio::this_coro::executor;
    int waiting = 0, done = 0;
    bool held_elsewhere = false, aborted_after_release = false;
    std::exception_ptr error;
    asio::cancellation_signal cancel;
    auto a = [&]() -> coproc::awaitable<void> {
      co_await c.acquire();
      ++waiting;
      try {
        co_await c.wait();
      } catch (const boost::system::system_error& e) {
        aborted_after_release = !held_elsewhere && e.code() == asio::error::operation_aborted;
      }
      c.release();
    };
    spawn_cancellable(ex, a(), cancel, done, error);
    CHECK(co_await until([&] { return waiting == 1; }));
    co_await c.acquire();
    held_elsewhere = true;
    cancel.emit(asio::cancellation_type::terminal);
    // The cancelled waiter would run now if it did not wait for the lock.
    co_await coproc::sleep(30ms);
    CHECK(done == 0);
    held_elsewhere = false;
    c.release();
    CHECK(co_await until([&] { return done == 1; }));
    CHECK(!error);
    CHECK(aborted_after_release);
  }());
}

// ---- barrier

TEST_CASE("a barrier of three processes gives each a unique index, round after round") {
  coproc::barrier b(3);
  CHECK(b.parties() == 3);
  CHECK(b.n_waiting() == 0);
  shared_array<std::atomic<int>> seen(3 * 10);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 2; ++p)
    procs.emplace_back(
        [](coproc::barrier b, std::atomic<int>* seen) -> coproc::awaitable<void> {
          for (int round = 0; round < 10; ++round)
            seen[round * 3 + co_await b.wait(20s)].fetch_add(1);
        },
        b, seen.data);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (int round = 0; round < 10; ++round) {
      auto index = co_await b.wait(20s);
      CHECK(index < 3);
      seen.data[round * 3 + index].fetch_add(1);
    }
    for (auto& p : procs) CHECK(co_await p.join() == 0);
  }());
  for (int i = 0; i < 30; ++i) CHECK(seen.data[i].load() == 1);
  CHECK_FALSE(b.broken());
}

TEST_CASE("a barrier wait's timeout breaks it for every waiter, reset repairs it") {
  coproc::barrier b(3);
  shared_array<std::atomic<int>> flags(1);
  coproc::process other(
      [](coproc::barrier b, std::atomic<int>* flags) -> coproc::awaitable<int> {
        flags->store(1);
        try {
          co_await b.wait(); // no timeout of its own: broken by the parent's
        } catch (const coproc::broken_barrier&) {
          co_return 0;
        }
        co_return 1;
      },
      b, flags.data);
  other.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(other.pid(), flags.data));
    CHECK(b.n_waiting() == 1);
    auto start = clock_type::now();
    auto e = co_await coproc_test::failure_of<coproc::broken_barrier>(b.wait(100ms));
    auto waited = clock_type::now() - start;
    CHECK(waited >= 100ms);
    CHECK(waited < 1s);
    CHECK(std::string(e.what()).find("timeout") != std::string::npos);
    CHECK(co_await other.join() == 0);
    CHECK(b.broken());
    (void)co_await coproc_test::failure_of<coproc::broken_barrier>(b.wait(1s)); // stays broken
    b.reset();
    CHECK_FALSE(b.broken());
    CHECK(b.n_waiting() == 0);
  }());
}

TEST_CASE("abort and reset break the current waiters") {
  coproc::barrier b(2);
  shared_array<std::atomic<int>> flags(1);
  auto waiter = [](coproc::barrier b, std::atomic<int>* flags) -> coproc::awaitable<int> {
    flags->fetch_add(1);
    try {
      co_await b.wait(20s);
    } catch (const coproc::broken_barrier&) {
      co_return 0;
    }
    co_return 1;
  };
  coproc::process first(waiter, b, flags.data);
  first.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(first.pid(), flags.data, 1));
    b.abort();
    CHECK(co_await first.join() == 0);
    CHECK(b.broken());
    b.reset();
    coproc::process second(waiter, b, flags.data);
    second.start();
    REQUIRE(co_await until_waiting(second.pid(), flags.data, 2));
    b.reset(); // a reset with a waiter breaks that waiter, the barrier stays usable
    CHECK(co_await second.join() == 0);
    CHECK_FALSE(b.broken());
  }());
}

TEST_CASE("a party that dies while others wait breaks the barrier") {
  coproc::barrier b(3);
  shared_array<std::atomic<int>> flags(1);
  coproc::process doomed(
      [](coproc::barrier b, std::atomic<int>* flags) -> coproc::awaitable<void> {
        flags->fetch_add(1);
        co_await b.wait();
      },
      b, flags.data);
  doomed.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(doomed.pid(), flags.data, 1));
    auto waiter = [&]() -> coproc::awaitable<int> {
      try {
        co_await b.wait(20s);
      } catch (const coproc::broken_barrier& e) {
        co_return std::string(e.what()).find("died") != std::string::npos ? 0 : 2;
      }
      co_return 1;
    };
    auto killer = [&]() -> coproc::awaitable<int> {
      while (b.n_waiting() < 2) co_await coproc::sleep(1ms); // this process waits too
      doomed.kill();
      co_return co_await doomed.join();
    };
    auto start = clock_type::now();
    std::vector<coproc::awaitable<int>> both;
    both.push_back(waiter());
    both.push_back(killer());
    auto results = co_await coproc::gather(std::move(both));
    MESSAGE("a dead party broke the barrier after " << coproc_test::elapsed_ms(start) << " ms");
    CHECK(results[0] == 0);
    CHECK(results[1] == -9);
    CHECK(clock_type::now() - start < 5s);
    CHECK(b.broken());
  }());
}
