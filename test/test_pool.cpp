#include <coproc/pool.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/pool_tasks.hpp"
#include "support/threads.hpp"
#include "support/timing.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_future.hpp>

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::elapsed_ms;
using coproc_test::failure_of;
using coproc_test::sleep_for;

using namespace coproc_test::pool_tasks;

TEST_CASE("apply runs f(args...) in a worker and returns its result") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    CHECK(pool.size() == 2);
    CHECK(co_await pool.apply(square, 7) == 49);
    CHECK(co_await pool.apply(add3, 1, 20, 300) == 321);
    CHECK(co_await pool.apply(greet, std::string("bo"), 2) == "hi bo;hi bo;");
    CHECK(co_await pool.apply(mirror, point{1, 2, "p"}) == point{2, 1, "p'"});
    CHECK(co_await pool.apply([](int x) { return x + 1; }, 41) == 42);
    CHECK(co_await pool.apply(doubler{}, 21) == 42);
    co_await pool.apply(nap, 1); // void
    int pid = co_await pool.apply(worker_pid);
    CHECK(pid != ::getpid());
    CHECK(co_await pool.apply(worker_ppid) == ::getpid());
    auto v = co_await pool.apply(range_of, 1000);
    CHECK(v.size() == 1000);
    CHECK(v[999] == 999);
  }());
}

TEST_CASE("large arguments and results cross intact") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::string big(3 << 20, 'x');
    big[12345] = 'y';
    auto echoed = co_await pool.apply(greet, big, 2);
    CHECK(echoed.size() == 2 * (big.size() + 4));
    CHECK(echoed.substr(3 + 12345, 1) == "y");
    auto v = co_await pool.apply(range_of, 2'000'000);
    CHECK(v.size() == 2'000'000);
    CHECK(v.back() == 1'999'999);
  }());
}

TEST_CASE("workers are named ForkPoolWorker-N") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::vector<coproc::async_result<std::string>> names;
    for (int i = 0; i < 20; ++i) names.push_back(pool.apply_async(worker_name));
    for (auto& n : names) {
      auto name = co_await n.get();
      CHECK(name.rfind("ForkPoolWorker-", 0) == 0);
    }
    CHECK(coproc::this_process::name() == "MainProcess");
  }());
}

TEST_CASE("apply_async results arrive for many tasks and get may be awaited again") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::vector<coproc::async_result<int>> results;
    for (int i = 0; i < 20000; ++i) results.push_back(pool.apply_async(square, i));
    for (int i = 0; i < 20000; ++i)
      REQUIRE(co_await results[static_cast<std::size_t>(i)].get() == i * i);
    CHECK(results[3].ready());
    CHECK(results[3].successful());
    CHECK(co_await results[3].get() == 9);
    CHECK(co_await results[3].get() == 9);

    // Two coroutines waiting for one result.
    auto slow = pool.apply_async(nap_then, 30);
    CHECK_FALSE(slow.ready());
    CHECK_THROWS_AS((void)slow.successful(), std::logic_error);
    std::vector<coproc::awaitable<int>> both;
    both.push_back(slow.get());
    both.push_back(slow.get());
    auto got = co_await coproc::gather(std::move(both));
    CHECK(got == std::vector<int>{30, 30});
    co_await slow.wait();
    CHECK(co_await slow.wait(1ms));
  }());
}

TEST_CASE("map and starmap keep item order for every chunksize") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 3);
    auto items = range_of(1001);
    std::vector<int> expected;
    for (int i : items) expected.push_back(i * i);
    for (std::size_t chunksize : {0u, 1u, 3u, 1000u, 5000u}) {
      CAPTURE(chunksize);
      CHECK(co_await pool.map(square, items, chunksize) == expected);
    }
    std::vector<int> none;
    CHECK((co_await pool.map(square, none)).empty());
    std::set<int> as_set{3, 1, 2};
    CHECK(co_await pool.map(square, as_set) == std::vector<int>{1, 4, 9});
    auto async = pool.map_async(doubler{}, items, 7);
    auto doubled = co_await async.get();
    CHECK(doubled[1000] == 2000);

    std::vector<std::tuple<int, int, int>> triples{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
    CHECK(co_await pool.starmap(add3, triples) == std::vector<int>{6, 15, 24});
    std::vector<std::pair<std::string, int>> pairs{{"a", 1}, {"b", 2}};
    CHECK(co_await pool.starmap(greet, pairs, 1) ==
          std::vector<std::string>{"hi a;", "hi b;hi b;"});
  }());
}

TEST_CASE("imap yields in item order and imap_unordered yields every item once") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto items = range_of(500);
    for (std::size_t chunksize : {1u, 7u}) {
      auto stream = pool.imap(square, items, chunksize);
      std::vector<int> got;
      while (auto r = co_await stream.next()) got.push_back(*r);
      CHECK(got.size() == 500);
      for (std::size_t i = 0; i < got.size(); ++i) REQUIRE(got[i] == static_cast<int>(i * i));
      CHECK_FALSE(co_await stream.next());
    }
    // A first item that finishes after the others: unordered hands out what is ready.
    shared_slots()[30].store(0);
    std::vector<int> six{0, 1, 2, 3, 4, 5};
    auto stream = pool.imap_unordered(last_of_six, six);
    std::multiset<int> got;
    std::vector<int> order;
    while (auto r = co_await stream.next()) {
      got.insert(*r);
      order.push_back(*r);
      if (*r != 0) shared_slots()[30].fetch_add(1);
    }
    CHECK(got == std::multiset<int>(six.begin(), six.end()));
    CHECK(order.front() != 0);
    CHECK(order.back() == 0);
  }());
}

TEST_CASE("a task that throws fails with remote_error naming type message and pid") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto e = co_await failure_of<coproc::remote_error>(pool.apply(fail_on_odd, 3));
    CHECK(e.type_name() == "std::invalid_argument");
    CHECK(e.message() == "odd item 3");
    CHECK(e.pid() != ::getpid());
    CHECK(e.pid() > 0);
    CHECK(std::string(e.what()).find("odd item 3") != std::string::npos);
    CHECK(std::string(e.what()).find(std::to_string(e.pid())) != std::string::npos);

    auto unknown = co_await failure_of<coproc::remote_error>(pool.apply(throw_int, 0));
    CHECK(unknown.type_name() == "unknown exception");

    auto r = pool.apply_async(fail_on_odd, 5);
    co_await r.wait();
    CHECK(r.ready());
    CHECK_FALSE(r.successful());
    CHECK(co_await pool.apply(fail_on_odd, 4) == 4); // the worker goes on
  }());
}

TEST_CASE("map rethrows the first failing item and imap goes on after a failure") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::vector<int> items{2, 4, 7, 8, 9, 10};
    for (std::size_t chunksize : {1u, 2u, 0u}) {
      auto e = co_await failure_of<coproc::remote_error>(pool.map(fail_on_odd, items, chunksize));
      CHECK(e.message() == "odd item 7");
    }
    auto stream = pool.imap(fail_on_odd, items);
    std::vector<std::string> seen;
    for (;;) {
      try {
        auto r = co_await stream.next();
        if (!r) break;
        seen.push_back(std::to_string(*r));
      } catch (const coproc::remote_error& e) {
        seen.push_back(e.message());
      }
    }
    CHECK(seen == std::vector<std::string>{"2", "4", "odd item 7", "8", "odd item 9", "10"});
  }());
}

TEST_CASE("a worker killed mid-task fails that task with worker_lost and the pool goes on") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto e = co_await failure_of<coproc::worker_lost>(pool.apply(die_by_signal, SIGKILL));
    CHECK(e.exitcode() == -SIGKILL);
    CHECK(e.pid() != ::getpid());
    CHECK(std::string(e.what()).find(std::to_string(e.pid())) != std::string::npos);
    CHECK_FALSE(coproc_test::pid_exists(e.pid()));

    auto exited = co_await failure_of<coproc::worker_lost>(pool.apply(die_by_exit, 3));
    CHECK(exited.exitcode() == 3);
    auto aborted = co_await failure_of<coproc::worker_lost>(pool.apply(die_by_abort, 0));
    CHECK(aborted.exitcode() == -SIGABRT);

    auto items = range_of(100);
    auto expected = co_await pool.map(square, items, 1);
    CHECK(expected.size() == 100);
    CHECK(co_await pool.map(square, items) == expected);
  }());
}

TEST_CASE("100 rounds of kill -9 fail only the killed task and recover within 100 ms") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .initializer = count_init});
    std::vector<long> detect_ms;
    std::set<int> victims;
    for (int round = 0; round < 100; ++round) {
      shared_slots()[0].store(0);
      auto victim = pool.apply_async(announce_and_sleep, 0);
      auto bystanders = pool.map_async(square, range_of(50), 1);
      int pid = co_await announced(0);
      REQUIRE(::kill(pid, SIGKILL) == 0);
      auto killed = std::chrono::steady_clock::now();
      auto e = co_await failure_of<coproc::worker_lost>(victim.get());
      detect_ms.push_back(elapsed_ms(killed));
      CHECK(e.pid() == pid);
      CHECK(e.exitcode() == -SIGKILL);
      victims.insert(pid);
      auto squares = co_await bystanders.get();
      REQUIRE(squares.size() == 50);
      CHECK(squares[49] == 49 * 49);
    }
    CHECK(victims.size() == 100);
    std::sort(detect_ms.begin(), detect_ms.end());
    MESSAGE("worker_lost after kill -9: median " << detect_ms[50] << " ms, max " << detect_ms.back()
                                                 << " ms");
    CHECK(detect_ms[50] < 100);
    CHECK(detect_ms.back() < 2000); // a loaded CI machine
    // Every replacement ran the initializer once.
    std::vector<int> naps(40, 2);
    for (auto r : co_await pool.map(report, naps, 1)) CHECK(r.inits == 1);
  }());
}

TEST_CASE("tasks queued behind a killed task are not lost") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    // Fast tasks first: the worker's measured speed lets the parent queue many in its socket.
    (void)co_await pool.map(square, range_of(2000), 1);
    shared_slots()[1].store(0);
    auto victim = pool.apply_async(announce_and_sleep, 1);
    std::vector<coproc::async_result<int>> behind;
    for (int i = 0; i < 100; ++i) behind.push_back(pool.apply_async(square, i));
    int pid = co_await announced(1);
    ::kill(pid, SIGKILL);
    (void)co_await failure_of<coproc::worker_lost>(victim.get());
    for (int i = 0; i < 100; ++i)
      CHECK(co_await behind[static_cast<std::size_t>(i)].get() == i * i);
    CHECK(co_await pool.apply(worker_pid) != pid);
  }());
}

TEST_CASE("the initializer runs once in every worker") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 3, .initializer = count_init});
    CHECK(g_inits == 0); // not in the parent
    std::vector<int> naps(30, 5);
    std::set<int> pids;
    for (auto r : co_await pool.map(report, naps, 1)) {
      CHECK(r.inits == 1);
      pids.insert(r.pid);
    }
    CHECK(pids.size() == 3);
  }());
}

TEST_CASE("a failing initializer does not spin and the pool can still be terminated") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 1, .initializer = failing_init});
    auto r = pool.apply_async(square, 2);
    pool.terminate();
    (void)co_await failure_of<coproc::pool_closed>(r.get());
    co_await pool.join();
  }());
}

TEST_CASE("maxtasksperchild replaces workers after that many tasks") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .initializer = count_init, .maxtasksperchild = 3});
    std::map<int, int> tasks_per_pid;
    for (int i = 0; i < 30; ++i) {
      auto r = co_await pool.apply(report, 0);
      CHECK(r.inits == 1);
      ++tasks_per_pid[r.pid];
    }
    CHECK(tasks_per_pid.size() >= 10);
    for (auto [pid, n] : tasks_per_pid) CHECK(n <= 3);
    // A map's chunks count as tasks too.
    CHECK((co_await pool.map(square, range_of(100), 5)).size() == 100);
    pool.close();
    co_await pool.join();
  }());
}

TEST_CASE("get with a timeout throws timeout_error and the task goes on") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto r = pool.apply_async(nap_then, 300);
    auto start = std::chrono::steady_clock::now();
    auto e = co_await failure_of<coproc::timeout_error>(r.get(50ms));
    CHECK(elapsed_ms(start) >= 45);
    CHECK(elapsed_ms(start) < 250);
    CHECK(std::string(e.what()).find("pool task") != std::string::npos);
    CHECK_FALSE(co_await r.wait(10ms));
    CHECK(co_await r.get(5s) == 300);
    CHECK(co_await r.get(0ms) == 300); // ready: no waiting at all
  }());
}

TEST_CASE("close then join waits for every queued task and the workers exit") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::vector<coproc::async_result<worker_report>> results;
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) results.push_back(pool.apply_async(report, 20));
    pool.close();
    co_await pool.join();
    CHECK(elapsed_ms(start) >= 90); // five rounds of 20 ms on two workers
    std::set<int> pids;
    for (auto& r : results) {
      CHECK(r.ready());
      pids.insert((co_await r.get()).pid);
    }
    CHECK(pids.size() == 2);
    for (int pid : pids) CHECK_FALSE(coproc_test::pid_exists(pid));
    co_await pool.join(); // again: still fine
  }());
}

TEST_CASE("terminate fails unfinished tasks with pool_closed at once") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    auto done = pool.apply_async(square, 5);
    CHECK(co_await done.get() == 25);
    std::vector<coproc::async_result<int>> running;
    for (int slot : {2, 3}) {
      shared_slots()[slot].store(0);
      running.push_back(pool.apply_async(announce_and_sleep, slot));
    }
    (void)co_await announced(2); // both workers are busy: what follows queues behind them
    (void)co_await announced(3);
    for (int i = 0; i < 4; ++i) running.push_back(pool.apply_async(nap_then, 10000));
    auto stream = pool.imap(nap_then, std::vector<int>{10000, 10000});
    auto mapped = pool.map_async(nap_then, std::vector<int>{10000, 1});
    auto queued = pool.apply_async(worker_pid); // fails too
    auto start = std::chrono::steady_clock::now();
    pool.terminate();
    for (auto& r : running) (void)co_await failure_of<coproc::pool_closed>(r.get());
    (void)co_await failure_of<coproc::pool_closed>(stream.next());
    (void)co_await failure_of<coproc::pool_closed>(stream.next());
    CHECK_FALSE(co_await stream.next());
    (void)co_await failure_of<coproc::pool_closed>(mapped.get());
    (void)co_await failure_of<coproc::pool_closed>(queued.get());
    CHECK(co_await done.get() == 25); // finished results stay
    co_await pool.join();
    CHECK(elapsed_ms(start) < 1000);
    CHECK(coproc_test::live_children().empty());
  }());
}

TEST_CASE("misuse is a logic_error") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 1);
    auto join_early = co_await failure_of<std::logic_error>(pool.join());
    CHECK(std::string(join_early.what()).find("close()") != std::string::npos);
    pool.close();
    CHECK_THROWS_WITH_AS(pool.apply_async(square, 1), doctest::Contains("closed pool"),
                         std::logic_error);
    CHECK_THROWS_AS((void)pool.map(square, range_of(3)), std::logic_error);
    CHECK_THROWS_AS(pool.imap(square, range_of(3)), std::logic_error);
    co_await pool.join();

    coproc::pool other(ex, 1);
    other.terminate();
    CHECK_THROWS_WITH_AS(other.apply_async(square, 1), doctest::Contains("terminated pool"),
                         std::logic_error);
    other.terminate(); // twice is fine
    co_await other.join();

    coproc::pool_options forkserver{.processes = 1,
                                    .initializer = [&] { ++forkserver.processes; },
                                    .method = coproc::start_method::forkserver};
    CHECK_THROWS_WITH_AS(coproc::pool(ex, forkserver), doctest::Contains("plain function"),
                         std::invalid_argument);
    int state = 0;
    coproc::pool_options stateful{.processes = 1,
                                  .initializer = [&state] { ++state; },
                                  .method = coproc::start_method::spawn};
    CHECK_THROWS_WITH_AS(coproc::pool(ex, stateful), doctest::Contains("plain function"),
                         std::invalid_argument);
  }());
}

TEST_CASE("results and streams that outlive their pool fail with pool_closed") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    std::optional<coproc::async_result<int>> result;
    std::optional<coproc::result_stream<int>> stream;
    std::vector<int> pids;
    {
      coproc::pool pool(ex, 2);
      for (int i = 0; i < 2; ++i) pids.push_back(co_await pool.apply(worker_pid));
      result = pool.apply_async(nap_then, 10000);
      stream = pool.imap(nap_then, std::vector<int>{10000});
    } // destruction terminates
    (void)co_await failure_of<coproc::pool_closed>(result->get());
    (void)co_await failure_of<coproc::pool_closed>(stream->next());
    auto deadline = std::chrono::steady_clock::now() + 5s; // killed, then reaped by the runtime
    auto any_left = [&] { return std::any_of(pids.begin(), pids.end(), coproc_test::pid_exists); };
    while (any_left() && std::chrono::steady_clock::now() < deadline) co_await sleep_for(1ms);
    for (int pid : pids) CHECK_FALSE(coproc_test::pid_exists(pid));
  }());
}

TEST_CASE("a pool destroyed without a running io_context leaves no zombie") {
  int fds = coproc_test::count_fds();
  {
    boost::asio::io_context ctx;
    coproc::pool pool(ctx.get_executor(), 2);
    auto r = pool.apply_async(square, 3);
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!r.ready() && std::chrono::steady_clock::now() < deadline) ctx.run_for(1ms);
    CHECK(r.ready());
  }
  // The workers were killed; they may take a moment to die, then the runtime reaps them.
  auto deadline = std::chrono::steady_clock::now() + 3s;
  while (!coproc_test::live_children().empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  CHECK(coproc_test::live_children().empty());
  CHECK(coproc_test::settle(fds));
}

TEST_CASE("the io_context stays responsive while the pool is saturated") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 2);
    auto items = range_of(300000);
    auto mapped = pool.map_async(plus_one, items, 1);
    std::vector<std::chrono::microseconds> lags;
    while (!mapped.ready()) {
      auto due = std::chrono::steady_clock::now() + 1ms;
      boost::asio::steady_timer t(ex, due);
      co_await t.async_wait(boost::asio::use_awaitable);
      lags.push_back(std::chrono::duration_cast<std::chrono::microseconds>(
          std::chrono::steady_clock::now() - due));
    }
    std::sort(lags.begin(), lags.end());
    REQUIRE(!lags.empty());
    auto median = lags[lags.size() / 2], worst = lags.back();
    MESSAGE("timer ticks during the map: " << lags.size() << ", median lag " << median.count()
                                           << " us, worst " << worst.count() << " us");
    // A loop that decodes the whole map's results in one go lags by the map's duration; a
    // loaded 2-core machine under TSan deschedules a healthy one for 100 ms now and then.
    CHECK(median < 50ms);
    CHECK(worst < 1s);
    CHECK((co_await mapped.get())[299999] == 300000);
  }());
}

TEST_CASE("tasks travel as image offsets and stateful callables are refused") {
  using coproc::detail::pool_callable;
  using coproc::detail::pool_target;
  auto offset = pool_target(&square);
  CHECK(offset != reinterpret_cast<std::intptr_t>(&square));
  std::string_view no_state;
  CHECK(static_cast<bool>(pool_callable<int (*)(int)>(offset, no_state) == &square));
  CHECK(pool_target(doubler{}) == 0);
  int captured = 1;
  auto capturing = [captured](int x) { return x + captured; };
  static_assert(!coproc::detail::pool_stateless_object<decltype(capturing)>);
  static_assert(!coproc::detail::pool_travels<decltype(capturing)>());
  static_assert(!coproc::detail::pool_function_pointer<std::function<int(int)>>);
  static_assert(coproc::detail::pool_stateless_object<decltype([](int x) { return x; })>);
  CHECK(capturing(1) == 2);
}

TEST_CASE("start_method spawn runs tasks in fresh images of the executable") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    g_parent_state = 7;
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool forked(ex, 1);
    CHECK(co_await forked.apply(parent_state) == 7);
    coproc::pool pool(
        ex, {.processes = 2, .initializer = count_init, .method = coproc::start_method::spawn});
    CHECK(co_await pool.apply(parent_state) == 0); // a fresh image: the program's initial globals
    CHECK(co_await pool.apply(square, 9) == 81);
    CHECK(co_await pool.apply([](std::string s) { return s + "!"; }, std::string("lambda")) ==
          "lambda!");
    CHECK(co_await pool.apply(worker_ppid) == ::getpid());
    auto name = co_await pool.apply(worker_name);
    CHECK(name.rfind("SpawnPoolWorker-", 0) == 0);
    auto items = range_of(5000);
    auto squares = co_await pool.map(square, items, 1);
    CHECK(squares[4999] == 4999 * 4999);
    std::vector<int> naps(10, 2);
    for (auto r : co_await pool.map(report, naps, 1)) CHECK(r.inits == 1);
    auto e = co_await failure_of<coproc::worker_lost>(pool.apply(die_by_signal, SIGKILL));
    CHECK(e.exitcode() == -SIGKILL);
    auto thrown = co_await failure_of<coproc::remote_error>(pool.apply(fail_on_odd, 1));
    CHECK(thrown.message() == "odd item 1");
    CHECK(co_await pool.apply(square, 3) == 9); // a replacement image took over
    pool.close();
    co_await pool.join();
    g_parent_state = 0;
  }());
}

namespace {
// VmRSS of a process, in KiB.
long resident_kib(int pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}
} // namespace

TEST_CASE("a spawned pool starts as fast from a big parent as from a small one") {
  // What makes it so: a spawned worker is a fresh image, so nothing of the parent's
  // memory (page tables to copy) comes with it. The times are reported; the bound on
  // them is loose, since a loaded machine stretches any start-up.
  auto start = [] {
    boost::asio::io_context ctx;
    auto began = std::chrono::steady_clock::now();
    long worker_kib = 0;
    {
      coproc::pool pool(ctx.get_executor(),
                        {.processes = 2, .method = coproc::start_method::spawn});
      auto r = pool.apply_async(worker_pid); // started and answering
      ctx.run_one();
      while (!r.ready()) ctx.run_one();
      worker_kib = resident_kib(coproc_test::run(r.get()));
    }
    auto ms = elapsed_ms(began);
    ctx.run();
    return std::pair(ms, worker_kib);
  };
  auto [small, small_kib] = start();
  std::vector<char> ballast(256u << 20);
  std::memset(ballast.data(), 1, ballast.size());
  auto [big, big_kib] = start();
  MESSAGE("spawned pool(2) up and answering: " << small << " ms, with 256 MiB more resident: "
                                               << big << " ms; a worker's RSS " << small_kib
                                               << " / " << big_kib << " KiB");
  CHECK(small_kib > 0);
  CHECK(big_kib < small_kib + 32 * 1024);
  CHECK(big < 5 * small + 1000);
}

// ---- one pool, every thread of an io_context ----------------------------------------

// (spawn: TSan does not support fork in a threaded program.)
TEST_CASE("a pool is used from every thread of an io_context at once") {
  using namespace boost::asio::experimental::awaitable_operators;
  coproc_test::run_threaded([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, {.processes = 2, .method = coproc::start_method::spawn});
    // Submissions and awaits from coroutines that resume on any of the threads.
    std::vector<coproc::awaitable<int>> applies;
    for (int i = 0; i < 400; ++i)
      applies.push_back([](coproc::pool& pool, int i) -> coproc::awaitable<int> {
        if (i % 2 == 0) co_return co_await pool.apply(square, i);
        auto later = pool.apply_async(square, i);
        int first = co_await later.get();
        CHECK(co_await later.get() == first); // awaited again, maybe on another thread
        co_return first;
      }(pool, i));
    auto squares = co_await coproc::gather(std::move(applies));
    for (int i = 0; i < 400; ++i) CHECK(squares[i] == i * i);

    // Several readers of one stream: each item goes to exactly one of them.
    auto stream = pool.imap_unordered(square, range_of(300));
    std::vector<coproc::awaitable<std::vector<int>>> readers;
    for (int r = 0; r < 6; ++r)
      readers.push_back(
          [](coproc::result_stream<int>& stream) -> coproc::awaitable<std::vector<int>> {
            std::vector<int> got;
            while (auto y = co_await stream.next()) got.push_back(*y);
            co_return got;
          }(stream));
    std::multiset<int> seen;
    for (auto& got : co_await coproc::gather(std::move(readers)))
      seen.insert(got.begin(), got.end());
    std::multiset<int> expected;
    for (int i = 0; i < 300; ++i) expected.insert(i * i);
    CHECK(seen == expected);

    // Cancellations racing completions (each coroutine on a strand, as Asio's || needs):
    // a cancelled get leaves the result for a later one.
    std::vector<coproc::awaitable<int>> races;
    for (int i = 0; i < 300; ++i)
      races.push_back(
          coproc_test::on_strand([](coproc::pool& pool, int i) -> coproc::awaitable<int> {
            auto later = pool.apply_async(square, i);
            auto first = co_await (later.get() ||
                                   coproc_test::sleep_for(std::chrono::microseconds(i % 7 * 150)));
            if (first.index() == 0) CHECK(std::get<0>(first) == i * i);
            auto second = co_await (later.wait(10s) ||
                                    coproc_test::sleep_for(std::chrono::microseconds(i % 5 * 100)));
            (void)second;
            co_return co_await later.get();
          }(pool, i)));
    auto raced = co_await coproc::gather(std::move(races));
    for (int i = 0; i < 300; ++i) CHECK(raced[i] == i * i);
    pool.close();
    co_await pool.join();
  }());
}

// The last case: coproc's starter thread, made here, outlives it, and a forked child of a
// threaded process cannot start threads under TSan.
TEST_CASE("workers started from a thread that ends live on with their pool") {
  // A worker's death signal would follow the thread that forked or spawned it.
  for (auto method : {coproc::start_method::fork, coproc::start_method::spawn}) {
    CAPTURE(method);
    boost::asio::io_context io;
    auto work = boost::asio::make_work_guard(io);
    std::thread loop([&] { io.run(); });
    // SIGCHLD (COPROC_CHILD_WATCH=sigchld) only for the loop: TSan runs a handler when its
    // thread next enters an intercepted call, and std::future waits in a raw futex.
    sigset_t sigchld, old_mask;
    sigemptyset(&sigchld);
    sigaddset(&sigchld, SIGCHLD);
    ::pthread_sigmask(SIG_BLOCK, &sigchld, &old_mask);
    auto on_loop = [&](auto op) {
      return boost::asio::co_spawn(io, std::move(op), boost::asio::use_future).get();
    };
    std::optional<coproc::pool> pool;
    pid_t tid = 0;
    int first = 0;
    std::thread([&] {
      tid = ::gettid();
      pool.emplace(io.get_executor(), coproc::pool_options{.processes = 1, .method = method});
      first = on_loop(pool->apply(worker_pid)); // the worker runs: its death signal is armed
    }).join();
    std::string task = "/proc/self/task/" + std::to_string(tid);
    while (std::filesystem::exists(task)) std::this_thread::sleep_for(1ms);
    CHECK(on_loop(pool->apply(worker_pid)) == first); // the same worker, not a replacement
    on_loop([&]() -> coproc::awaitable<void> {
      pool->close();
      co_await pool->join();
    }());
    pool.reset();
    work.reset();
    loop.join();
    ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  }
}
