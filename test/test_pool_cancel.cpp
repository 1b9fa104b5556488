// Cancelling a coroutine that awaits the pool: every pool await ends at once with
// operation_aborted, abandons only that wait, and races with the task's end safely.
#include <coproc/pool.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/timing.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::elapsed_ms;
using namespace boost::asio::experimental::awaitable_operators;

namespace {

// ---- tasks (they run in the workers) ----
int square(int x) { return x * x; }
int nap_then(int ms) {
  ::usleep(static_cast<useconds_t>(ms) * 1000);
  return ms;
}
void nap(int ms) { ::usleep(static_cast<useconds_t>(ms) * 1000); }

constexpr int long_task_ms = 10'000;
// Far below the long task's time, far above a loaded machine's wake-up latency.
constexpr long prompt_ms = 2'000;

// Awaits `op || sleep(after)`: true if the sleep won (op was cancelled), and how long it took.
template <class A>
coproc::awaitable<std::pair<bool, long>> cancelled_after(A op, std::chrono::milliseconds after) {
  auto start = std::chrono::steady_clock::now();
  auto outcome = co_await (std::move(op) || coproc::sleep(after));
  co_return std::pair<bool, long>{outcome.index() == 1, elapsed_ms(start)};
}

// Polls until `done()` or the bound passes; true if done.
template <class Done>
coproc::awaitable<bool> eventually(Done done, std::chrono::milliseconds bound = 30s) {
  auto start = std::chrono::steady_clock::now();
  while (!done()) {
    if (std::chrono::steady_clock::now() - start > bound) co_return false;
    co_await coproc::sleep(1ms);
  }
  co_return true;
}

} // namespace

TEST_CASE("apply in a race with a timer returns as soon as the timer fires") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto [cancelled, ms] = co_await cancelled_after(pool.apply(nap, long_task_ms), 50ms);
    CHECK(cancelled);
    CHECK(ms < prompt_ms);
    auto [cancelled_value, ms_value] =
        co_await cancelled_after(pool.apply(nap_then, long_task_ms), 50ms);
    CHECK(cancelled_value);
    CHECK(ms_value < prompt_ms);
    pool.terminate();
  }());
}

TEST_CASE("async_result get get(timeout) and wait can be cancelled") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto slow = pool.apply_async(nap_then, long_task_ms);
    {
      auto [cancelled, ms] = co_await cancelled_after(slow.get(), 50ms);
      CHECK(cancelled);
      CHECK(ms < prompt_ms);
    }
    {
      auto [cancelled, ms] = co_await cancelled_after(slow.get(std::chrono::hours(1)), 50ms);
      CHECK(cancelled);
      CHECK(ms < prompt_ms);
    }
    {
      auto [cancelled, ms] = co_await cancelled_after(slow.wait(), 50ms);
      CHECK(cancelled);
      CHECK(ms < prompt_ms);
    }
    {
      auto [cancelled, ms] = co_await cancelled_after(slow.wait(std::chrono::hours(1)), 50ms);
      CHECK(cancelled);
      CHECK(ms < prompt_ms);
    }
    CHECK_FALSE(slow.ready());
    pool.terminate();
  }());
}

TEST_CASE("a cancelled await throws system_error with operation_aborted") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 1);
    auto slow = pool.apply_async(nap_then, long_task_ms);
    std::vector<coproc::awaitable<int>> waits;
    waits.push_back(slow.get());
    waits.push_back(slow.get(std::chrono::hours(1)));
    for (auto& wait : waits) {
      boost::asio::cancellation_signal signal;
      std::optional<std::exception_ptr> outcome;
      boost::asio::co_spawn(ex, std::move(wait),
                            boost::asio::bind_cancellation_slot(
                                signal.slot(), [&](std::exception_ptr e, int) { outcome = e; }));
      co_await coproc::sleep(20ms); // parked by now, or it aborts at its first co_await: both count
      auto start = std::chrono::steady_clock::now();
      signal.emit(boost::asio::cancellation_type::terminal);
      REQUIRE(co_await eventually([&] { return outcome.has_value(); }));
      CHECK(elapsed_ms(start) < prompt_ms);
      REQUIRE(*outcome);
      try {
        std::rethrow_exception(*outcome);
      } catch (const boost::system::system_error& e) {
        CHECK(e.code() == boost::asio::error::operation_aborted);
      } catch (...) {
        FAIL("not a system_error");
      }
    }
    pool.terminate();
  }());
}

TEST_CASE("a cancelled get does not spoil a later get of the same result") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto r = pool.apply_async(nap_then, 2000);
    auto other = r.get(); // another coroutine's wait on the same result goes on
    auto other_done = std::make_shared<std::optional<int>>();
    boost::asio::co_spawn(co_await boost::asio::this_coro::executor, std::move(other),
                          [other_done](std::exception_ptr e, int v) {
                            if (!e) *other_done = v;
                          });
    for (int i = 0; i < 3; ++i) {
      auto [cancelled, ms] = co_await cancelled_after(r.get(), 10ms);
      CHECK(cancelled);
      CHECK(ms < 1500);
      auto [timed_cancelled, timed_ms] =
          co_await cancelled_after(r.get(std::chrono::hours(1)), 10ms);
      CHECK(timed_cancelled);
      CHECK(timed_ms < 1500);
    }
    CHECK(co_await r.get() == 2000);
    CHECK(co_await r.get(1ms) == 2000);
    CHECK(co_await eventually([&] { return other_done->has_value(); }));
    CHECK(**other_done == 2000);
  }());
}

TEST_CASE("result_stream next can be cancelled and the item comes with the next call") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto stream = pool.imap(nap_then, std::vector<int>{1500, long_task_ms});
    auto [cancelled, ms] = co_await cancelled_after(stream.next(), 10ms);
    CHECK(cancelled);
    CHECK(ms < 1000);
    CHECK(co_await stream.next() == 1500); // the abandoned next lost no item
    auto [cancelled_long, ms_long] = co_await cancelled_after(stream.next(), 50ms);
    CHECK(cancelled_long);
    CHECK(ms_long < prompt_ms);
    pool.terminate();
  }());
}

TEST_CASE("join after close can be cancelled") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto slow = pool.apply_async(nap, long_task_ms);
    pool.close();
    auto [cancelled, ms] = co_await cancelled_after(pool.join(), 50ms);
    CHECK(cancelled);
    CHECK(ms < prompt_ms);
    pool.terminate();
    co_await pool.join();
    CHECK_FALSE(slow.successful());
  }());
}

TEST_CASE("a gather of pool awaits is cancelled as a whole") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto a = pool.apply_async(nap_then, long_task_ms);
    auto b = pool.apply_async(nap_then, long_task_ms);
    auto stream = pool.imap(nap_then, std::vector<int>{long_task_ms});
    std::vector<coproc::awaitable<int>> gets;
    gets.push_back(a.get());
    gets.push_back(b.get(std::chrono::hours(1)));
    gets.push_back(pool.apply(nap_then, long_task_ms));
    auto [cancelled, ms] = co_await cancelled_after(coproc::gather(std::move(gets)), 50ms);
    CHECK(cancelled);
    CHECK(ms < prompt_ms);

    std::vector<coproc::awaitable<void>> waits;
    waits.push_back(a.wait());
    waits.push_back([](coproc::result_stream<int>& s) -> coproc::awaitable<void> {
      co_await s.next();
    }(stream));
    auto [cancelled_void, ms_void] =
        co_await cancelled_after(coproc::gather(std::move(waits)), 50ms);
    CHECK(cancelled_void);
    CHECK(ms_void < prompt_ms);
    pool.terminate();
  }());
}

TEST_CASE("cancellation racing completion gives the value or operation_aborted") {
  // The waiters run on a second io_context in its own thread, so the pool's wake-ups
  // (from the pool's thread) race with the cancellations (from the waiter's thread).
  constexpr int rounds = 400;
  std::atomic<int> values{0}, aborted{0}, wrong{0};
  boost::asio::io_context waiters;
  auto guard = boost::asio::make_work_guard(waiters);
  std::thread waiter_thread([&] { waiters.run(); });
  struct joiner {
    decltype(guard)& guard;
    std::thread& thread;
    ~joiner() {
      guard.reset();
      thread.join();
    }
  } join_at_exit{guard, waiter_thread};
  coproc_test::run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::mt19937 rng(12345);
    for (int i = 0; i < rounds; ++i) {
      auto r = pool.apply_async(square, i);
      bool timed = i % 2 == 1;
      auto delay = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 400)(rng));
      boost::asio::post(waiters, [&, r, i, timed, delay]() mutable {
        auto signal = std::make_shared<boost::asio::cancellation_signal>();
        auto get = timed ? r.get(std::chrono::hours(1)) : r.get();
        boost::asio::co_spawn(
            waiters, std::move(get),
            boost::asio::bind_cancellation_slot(
                signal->slot(), [&, i, signal](std::exception_ptr e, int v) {
                  if (!e) {
                    (v == i * i ? values : wrong)++;
                    return;
                  }
                  try {
                    std::rethrow_exception(e);
                  } catch (const boost::system::system_error& se) {
                    (se.code() == boost::asio::error::operation_aborted ? aborted : wrong)++;
                  } catch (...) {
                    wrong++;
                  }
                }));
        auto timer = std::make_shared<boost::asio::steady_timer>(waiters, delay);
        timer->async_wait([timer, signal](boost::system::error_code) {
          signal->emit(boost::asio::cancellation_type::terminal);
        });
      });
      if (i % 16 == 0) co_await coproc::sleep(1ms);
    }
    CHECK(co_await eventually([&] { return values + aborted + wrong == rounds; }));
  }());
  MESSAGE("values " << values.load() << ", aborted " << aborted.load());
  CHECK(wrong == 0);
  CHECK(values + aborted == rounds);
}

TEST_CASE("cancellation racing completion on one thread gives the value or operation_aborted") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 2);
    std::mt19937 rng(54321);
    int values = 0, aborted = 0;
    for (int i = 0; i < 300; ++i) {
      auto delay = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 400)(rng));
      if (i % 3 == 0) {
        // A next() cancelled before it completes takes no item: the following next() gets it.
        auto stream = pool.imap(square, std::vector<int>{i});
        boost::asio::cancellation_signal signal;
        bool done = false, was_aborted = false;
        std::optional<int> got;
        boost::asio::co_spawn(ex, stream.next(),
                              boost::asio::bind_cancellation_slot(
                                  signal.slot(), [&](std::exception_ptr e, std::optional<int> v) {
                                    done = true;
                                    if (!e) return void(got = v);
                                    try {
                                      std::rethrow_exception(e);
                                    } catch (const boost::system::system_error& se) {
                                      was_aborted =
                                          se.code() == boost::asio::error::operation_aborted;
                                    } catch (...) {
                                    }
                                  }));
        co_await coproc::sleep(delay);
        signal.emit(boost::asio::cancellation_type::terminal);
        REQUIRE(co_await eventually([&] { return done; }));
        if (!got) {
          REQUIRE(was_aborted);
          got = co_await stream.next();
        }
        CHECK(got == i * i);
        CHECK_FALSE(co_await stream.next());
      }
      auto r = pool.apply_async(square, i);
      auto get = i % 2 ? r.get(1h) : r.get();
      auto outcome = co_await (std::move(get) || coproc::sleep(delay));
      if (outcome.index() == 0) {
        ++values;
        CHECK(std::get<0>(outcome) == i * i);
      } else {
        ++aborted;
      }
      CHECK(co_await r.get() == i * i);
    }
    MESSAGE("values " << values << ", aborted " << aborted);
  }());
}

TEST_CASE("two readers of one result_stream both end") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    for (bool ordered : {true, false}) {
      CAPTURE(ordered);
      std::vector<int> items;
      for (int i = 0; i < 40; ++i) items.push_back(i % 5);
      auto stream = ordered ? pool.imap(nap_then, items) : pool.imap_unordered(nap_then, items);
      auto reader = [](coproc::result_stream<int>& s) -> coproc::awaitable<std::vector<int>> {
        std::vector<int> got;
        while (auto r = co_await s.next()) got.push_back(*r);
        co_return got;
      };
      std::vector<coproc::awaitable<std::vector<int>>> readers;
      readers.push_back(reader(stream));
      readers.push_back(reader(stream));
      auto outcome = co_await (coproc::gather(std::move(readers)) || coproc::sleep(20s));
      REQUIRE_MESSAGE(outcome.index() == 0, "a reader never got nullopt");
      auto& got = std::get<0>(outcome);
      std::multiset<int> all(got[0].begin(), got[0].end());
      all.insert(got[1].begin(), got[1].end());
      CHECK(all == std::multiset<int>(items.begin(), items.end()));
      CHECK_FALSE(co_await stream.next());
    }
  }());
}
