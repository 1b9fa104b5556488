// The objects of coproc/sync.hpp passed to spawn and forkserver children as process
// arguments: their memfd and eventfd travel with the child (coproc/detail/travel.hpp),
// which then works on the same shared state as a fork child's inherited copies.
#include <coproc/errors.hpp>
#include <coproc/process.hpp>
#include <coproc/start_method.hpp>
#include <coproc/sync.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/preload_fork_server.hpp"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;

namespace {

constexpr auto spawn = coproc::start_method::spawn;
constexpr auto forkserver = coproc::start_method::forkserver;

// Not wire-serializable: they travel only as a process's own arguments.
static_assert(!coproc::wire::serializable<coproc::lock>);
static_assert(!coproc::wire::serializable<coproc::event>);
static_assert(!coproc::wire::serializable<coproc::value<int>>);
static_assert(!coproc::wire::serializable<std::vector<coproc::barrier>>);

int join_all(std::vector<coproc::process>& procs) {
  return run([&]() -> coproc::awaitable<int> {
    int failed = 0;
    for (auto& p : procs) failed += co_await p.join() != 0;
    co_return failed;
  }());
}

coproc::awaitable<void> add_10000(coproc::value<long> counter, coproc::value<long> guarded) {
  auto l = guarded.get_lock();
  for (int i = 0; i < 10000; ++i) {
    counter.fetch_add(1);
    if (i % 10 == 0) {
      co_await l.acquire();
      guarded.store(guarded.load() + 1);
      l.release();
    }
  }
}

// Inside the lock: [0] how many are inside (must stay 1), [1] a counter updated by load
// and store, [2] how often [0] was not 1.
coproc::awaitable<void> locked_updates(coproc::lock l, coproc::array<int> shared, int rounds) {
  auto cells = shared.view();
  for (int i = 0; i < rounds; ++i) {
    co_await l.acquire();
    if (++cells[0] != 1) ++cells[2];
    const int seen = cells[1];
    co_await coproc::sleep(0ms); // let others run while it is held
    cells[1] = seen + 1;
    --cells[0];
    l.release();
  }
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

TEST_CASE("spawn: four children add 10000 times each to a value, the exact sum, its lock too") {
  coproc::value<long> counter(0), guarded(0);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 4; ++p)
    procs.emplace_back(coproc::process_options{.method = spawn}, add_10000, counter, guarded);
  for (auto& p : procs) p.start();
  CHECK(join_all(procs) == 0);
  CHECK(counter.load() == 40000);
  CHECK(guarded.load() == 4000);
}

TEST_CASE("forkserver: a lock excludes three children updating an array, 200 times each") {
  coproc::lock l;
  coproc::array<int> shared(3, 0);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 3; ++p)
    procs.emplace_back(coproc::process_options{.method = forkserver}, locked_updates, l, shared,
                       200);
  for (auto& p : procs) p.start();
  run(locked_updates(l, shared, 200)); // and this process too
  CHECK(join_all(procs) == 0);
  CHECK(shared.view()[1] == 800);
  CHECK(shared.view()[2] == 0);
  CHECK(l.try_acquire()); // left free
  l.release();
}

TEST_CASE("spawn: an event set by the parent stops children that announced themselves") {
  coproc::event stop;
  coproc::semaphore started(0);
  coproc::value<int> rounds(0);
  std::vector<coproc::process> procs;
  for (int p = 0; p < 3; ++p)
    procs.emplace_back(
        coproc::process_options{.method = spawn},
        [](coproc::event stop, coproc::semaphore started,
           coproc::value<int> rounds) -> coproc::awaitable<int> {
          started.release();
          while (!co_await stop.wait(5ms)) rounds.fetch_add(1);
          co_return stop.is_set() ? 0 : 1;
        },
        stop, started, rounds);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < 3; ++i) CHECK(co_await started.acquire(20s));
    CHECK(!stop.is_set());
    const auto start = std::chrono::steady_clock::now();
    stop.set();
    for (auto& p : procs) CHECK(co_await p.join(10s) == 0);
    CHECK(std::chrono::steady_clock::now() - start < 5s);
  }());
}

TEST_CASE("spawn: a barrier of four (three spawn children and the parent), two rounds") {
  coproc::barrier b(4);
  coproc::array<int> indices(6, -1); // the children's indices, round after round
  std::vector<coproc::process> procs;
  for (int p = 0; p < 3; ++p)
    procs.emplace_back(
        coproc::process_options{.method = spawn},
        [](coproc::barrier b, coproc::array<int> indices, int p) -> coproc::awaitable<void> {
          for (int round = 0; round < 2; ++round)
            indices.view()[round * 3 + p] = static_cast<int>(co_await b.wait(20s));
        },
        b, indices, p);
  for (auto& p : procs) p.start();
  std::vector<unsigned> mine = run([&]() -> coproc::awaitable<std::vector<unsigned>> {
    std::vector<unsigned> got;
    for (int round = 0; round < 2; ++round) got.push_back(co_await b.wait(20s));
    co_return got;
  }());
  CHECK(join_all(procs) == 0);
  for (int round = 0; round < 2; ++round) {
    std::set<int> seen{static_cast<int>(mine[round])};
    for (int p = 0; p < 3; ++p) seen.insert(indices.view()[round * 3 + p]);
    CHECK(seen == std::set<int>{0, 1, 2, 3});
  }
  CHECK(b.parties() == 4);
  CHECK(!b.broken());
}

TEST_CASE("spawn: a condition and its rlock, a bounded semaphore's bound, both with forkserver") {
  for (auto method : {spawn, forkserver}) {
    CAPTURE(static_cast<int>(method));
    coproc::condition c;
    coproc::value<int> flag(0);
    coproc::bounded_semaphore bounded(0); // a bound of 0 is a bound too
    coproc::semaphore waiting(0);
    coproc::process child(
        coproc::process_options{.method = method},
        [](coproc::condition c, coproc::value<int> flag, coproc::bounded_semaphore bounded,
           coproc::semaphore waiting) -> coproc::awaitable<int> {
          try {
            bounded.release(); // above its bound: it arrived bounded
            co_return 3;
          } catch (const std::logic_error&) {
          }
          co_await c.acquire();
          co_await c.acquire(); // its own rlock: re-entrant
          waiting.release();
          const bool ok = co_await c.wait_for([&] { return flag.load() == 1; }, 20s);
          c.release();
          c.release();
          co_return ok ? 0 : 1;
        },
        c, flag, bounded, waiting);
    child.start();
    run([&]() -> coproc::awaitable<void> {
      CHECK(co_await waiting.acquire(20s));
      co_await c.acquire(); // free only once the child waits
      flag.store(1);
      c.notify();
      c.release();
      CHECK(co_await child.join(20s) == 0);
    }());
  }
}

TEST_CASE("spawn: a lock passed twice and a value with its lock arrive as one object each") {
  coproc::rlock r;
  coproc::value<int> v(5);
  coproc::process child(
      coproc::process_options{.method = spawn},
      [](coproc::rlock a, coproc::rlock b, coproc::value<int> v, coproc::lock l) {
        if (!a.try_acquire()) return 1;
        if (!b.try_acquire()) return 2; // the same rlock: one more level
        b.release();
        a.release();
        if (!l.try_acquire()) return 3;
        const bool shared_lock = !v.get_lock().try_acquire(); // v's lock is l
        l.release();
        return shared_lock && v.load() == 5 ? 0 : 4;
      },
      r, r, v, v.get_lock());
  child.start();
  CHECK(run(child.join()) == 0);
}

TEST_CASE("spawn: a sync object inside another argument is invalid_argument at start") {
  std::vector<coproc::lock> locks(1);
  coproc::process p(
      coproc::process_options{.method = spawn}, [](std::vector<coproc::lock>) {}, locks);
  CHECK_THROWS_WITH_AS(p.start(), doctest::Contains("synchronization object inside another"),
                       std::invalid_argument);
}
