// The one deadline type behind every timed wait: huge timeouts saturate to "never",
// zero and negative ones mean "now", in the queue, the pipe, the pool and the child.
#include <coproc/detail/deadline.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/queue.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <unistd.h>

#include <chrono>

using namespace std::chrono_literals;
using coproc::detail::deadline;
using coproc_test::run;

namespace {
int twice(int x) { return 2 * x; }
} // namespace

TEST_CASE("a deadline saturates at never and at now") {
  CHECK(deadline().is_never());
  CHECK(deadline::after(coproc::duration::max()).is_never());
  CHECK(deadline::after(std::chrono::hours(24 * 365 * 100)).when() > deadline::clock::now());
  CHECK_FALSE(deadline::after(coproc::duration::max()).passed());
  CHECK(deadline::after(0s).passed());
  CHECK(deadline::after(-5s).passed());
  CHECK(deadline::after(coproc::duration::min()).passed());
  CHECK_FALSE(deadline::after(1h).passed());
  CHECK_FALSE(deadline::after(1h).is_never());
}

TEST_CASE("queue and pipe waits take duration max and negative timeouts") {
  coproc::queue<int> q;
  run([&]() -> coproc::awaitable<void> {
    co_await q.put(1, coproc::duration::max());
    CHECK(co_await q.get(coproc::duration::max()) == 1);
    CHECK_THROWS_AS(co_await q.get(-1s), coproc::queue_empty);
    CHECK_THROWS_AS(co_await q.get(coproc::duration::min()), coproc::queue_empty);
  }());
  auto [a, b] = coproc::pipe<int>();
  run([&]() -> coproc::awaitable<void> {
    CHECK_FALSE(co_await a.poll(-1s));
    co_await b.send(5);
    CHECK(co_await a.poll(coproc::duration::max()));
    CHECK(co_await a.recv() == 5);
  }());
}

TEST_CASE("pool and process waits take duration max and negative timeouts") {
  run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto r = pool.apply_async(twice, 21);
    CHECK(co_await r.get(coproc::duration::max()) == 42);
    CHECK(co_await r.wait(coproc::duration::min()));
    pool.close();
    co_await pool.join();
  }());
  coproc::process p([] { ::pause(); });
  p.start();
  run([&]() -> coproc::awaitable<void> {
    CHECK_FALSE((co_await p.join(-1s)).has_value());
    p.kill();
    CHECK(co_await p.join(coproc::duration::max()) == -9);
  }());
}
