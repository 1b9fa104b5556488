// Per-task timeouts that kill the task with everything it started, cancel() that stops a
// task, and as_completed (coproc/pool.hpp).
#include <coproc/pool.hpp>
#include <coproc/start_method.hpp>
#include <coproc/subprocess.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/task_traces.hpp"
#include "support/fresh_image.hpp"
#include "support/pool_tasks.hpp"
#include "support/preload_fork_server.hpp"
#include "support/timing.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using namespace boost::asio::experimental::awaitable_operators;
using coproc::task_options;
using coproc_test::elapsed_ms;
using coproc_test::failure_of;
using coproc_test::fresh_image::temp_dir;
using coproc_test::pool_tasks::nap_then;
using coproc_test::pool_tasks::square;
using coproc_test::traces::alive;
using coproc_test::traces::hang_with_grandchildren;
using coproc_test::traces::numbers_in;
using coproc_test::traces::processes_with_argv0;
using coproc_test::traces::touch_after_go;
using coproc_test::traces::touch_now;
using coproc_test::traces::wait_for_path;
using coproc_test::traces::write_file;

namespace {

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// ---- tasks (they run in the workers) ----

// Item 5 is touch_after_go(dir), the others return at once.
int tiny_or_long(std::string dir, int i) { return i == 5 ? 5 * touch_after_go(dir) : i; }

// Waits for dir/go<i>, returns i.
int when_told(std::string dir, int i) {
  wait_for_path(dir + "/go" + std::to_string(i));
  return i;
}

int fail_on_odd(int x) {
  if (x % 2) throw std::invalid_argument("odd item " + std::to_string(x));
  return x;
}

// ---- waiting in the test ----

template <class Done>
coproc::awaitable<bool> eventually(Done done, std::chrono::milliseconds bound = 30s) {
  auto start = std::chrono::steady_clock::now();
  while (!done()) {
    if (std::chrono::steady_clock::now() - start > bound) co_return false;
    co_await coproc::sleep(1ms);
  }
  co_return true;
}

coproc::awaitable<void> until_exists(std::string path) {
  co_await eventually([&] { return exists(path); });
}

// Awaits op, which must fail with operation_aborted.
template <class A> coproc::awaitable<bool> aborted(A op) {
  try {
    co_await std::move(op);
  } catch (const boost::system::system_error& e) {
    co_return e.code() == boost::asio::error::operation_aborted;
  }
  co_return false;
}

const char* method_name(coproc::start_method m) {
  return m == coproc::start_method::fork    ? "fork"
         : m == coproc::start_method::spawn ? "spawn"
                                            : "forkserver";
}

} // namespace

// The fork server is this test program's child for the whole run: it starts before the
// first case, so the runner's leak check does not count it against one.
DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

TEST_CASE("a timeout of zero or less is invalid_argument at the call and at construction") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    CHECK_THROWS_AS(coproc::pool(ex, coproc::pool_options{.processes = 1, .task_timeout = 0s}),
                    std::invalid_argument);
    CHECK_THROWS_AS(coproc::pool(ex, coproc::pool_options{.processes = 1, .task_timeout = -1ms}),
                    std::invalid_argument);
    coproc::pool pool(ex, 1);
    std::vector<int> items{1, 2, 3};
    for (auto bad : {coproc::duration::zero(), coproc::duration(-1), coproc::duration(-5s)}) {
      task_options options{bad};
      CHECK_THROWS_AS(pool.apply_async(options, square, 1), std::invalid_argument);
      CHECK_THROWS_AS((void)pool.apply(options, square, 1), std::invalid_argument);
      CHECK_THROWS_AS(pool.map_async(options, square, items), std::invalid_argument);
      CHECK_THROWS_AS((void)pool.map(options, square, items), std::invalid_argument);
      CHECK_THROWS_AS((void)pool.starmap(options, coproc_test::pool_tasks::add3,
                                         std::vector<std::tuple<int, int, int>>{{1, 2, 3}}),
                      std::invalid_argument);
      CHECK_THROWS_AS(pool.imap(options, square, items), std::invalid_argument);
      CHECK_THROWS_AS(pool.imap_unordered(options, square, items), std::invalid_argument);
    }
    CHECK(co_await pool.apply(task_options{1h}, square, 5) == 25);
  }());
}

namespace {

// ---- coroutine tasks (they run in the workers) ----

coproc::awaitable<void> nap(std::chrono::milliseconds ms) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, ms);
  co_await t.async_wait(boost::asio::use_awaitable);
}

// Its worker's pid, after `ms`.
coproc::awaitable<long> pid_after(int ms) {
  co_await nap(std::chrono::milliseconds(ms));
  co_return ::getpid();
}

// Writes its pid to dir/started, awaits a timer of `ms`, and if that fails with
// operation_aborted writes dir/aborted before it rethrows.
coproc::awaitable<int> long_wait(std::string dir, int ms) {
  write_file(dir + "/started", std::to_string(::getpid()));
  try {
    co_await nap(std::chrono::milliseconds(ms));
  } catch (const boost::system::system_error& e) {
    if (e.code() == boost::asio::error::operation_aborted) write_file(dir + "/aborted", "aborted");
    throw;
  }
  co_return ms;
}

// Blocks its worker's thread, never looking at a cancellation.
coproc::awaitable<int> block_thread(std::string started) {
  write_file(started, std::to_string(::getpid()));
  for (volatile bool forever = true; forever;) {
  }
  co_return 0;
}

coproc::awaitable<int> tenth_hangs(int i) {
  co_await nap(i % 10 == 0 ? std::chrono::milliseconds(60'000) : 20ms);
  co_return i;
}

coproc::awaitable<int> square_now(int i) { co_return i* i; }

// Awaits a child that hangs: `sleep marker`, found by its argument.
coproc::awaitable<int> run_hanging_child(std::string marker) {
  std::vector<std::string> args{"sleep", marker};
  co_await coproc::run(std::move(args));
  co_return 0;
}

std::vector<std::string> cmdline_of(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
  return args;
}

// Processes with `marker` among their arguments.
std::vector<long> processes_with_arg(const std::string& marker) {
  std::vector<long> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    auto args = cmdline_of(std::stol(name));
    if (std::find(args.begin(), args.end(), marker) != args.end()) found.push_back(std::stol(name));
  }
  return found;
}

constexpr coproc::start_method every_method[] = {
    coproc::start_method::fork, coproc::start_method::spawn, coproc::start_method::forkserver};

} // namespace

TEST_CASE("a coroutine task past its timeout is cancelled in its worker, its sibling finishes") {
  for (auto method : every_method) {
    CAPTURE(method_name(method));
    temp_dir dir;
    coproc_test::run([&]() -> coproc::awaitable<void> {
      auto ex = co_await boost::asio::this_coro::executor;
      coproc::pool pool(ex, {.processes = 1, .method = method, .concurrency = 2});
      auto start = std::chrono::steady_clock::now();
      auto timed = pool.apply_async(task_options{200ms}, long_wait, dir.file(""), 10'000);
      auto sibling = pool.apply_async(pid_after, 600); // beside it in the same worker
      auto e = co_await failure_of<coproc::task_timeout>(timed.get());
      auto took = elapsed_ms(start);
      CHECK(took >= 200);
      CHECK(took < 5000); // not the task's 10 s
      CHECK(e.timeout() == 200ms);
      CHECK(std::string(e.what()).find("0.2 s") != std::string::npos);
      CHECK(exists(dir.file("aborted"))); // it saw operation_aborted
      long worker = numbers_in(dir.file("started")).at(0);
      CHECK(e.pid() == worker);
      CHECK(co_await sibling.get() == worker); // its worker was not killed
      CHECK(co_await pool.apply(pid_after, 1) == worker);
      CHECK(co_await pool.apply(task_options{20s}, pid_after, 50) == worker);
    }());
  }
}

TEST_CASE("a coroutine task that ignores its cancellation is killed with its worker") {
  for (auto method : every_method) {
    CAPTURE(method_name(method));
    temp_dir dir;
    coproc_test::run([&]() -> coproc::awaitable<void> {
      auto ex = co_await boost::asio::this_coro::executor;
      coproc::pool pool(ex, {.processes = 1, .method = method, .concurrency = 4});
      auto start = std::chrono::steady_clock::now();
      auto e = co_await failure_of<coproc::task_timeout>(
          pool.apply(task_options{300ms}, block_thread, dir.file("started")));
      CHECK(elapsed_ms(start) < 10'000);
      CHECK(e.timeout() == 300ms);
      long worker = numbers_in(dir.file("started")).at(0);
      CHECK(e.pid() == worker);
      CHECK(co_await eventually([&] { return !alive(worker); }));
      long replacement = co_await pool.apply(pid_after, 1);
      CHECK(replacement != worker);
      CHECK(co_await pool.apply(square_now, 9) == 81);
    }());
  }
}

TEST_CASE("100 coroutine tasks of which every 10th times out") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, {.processes = 2, .concurrency = 8});
    auto start = std::chrono::steady_clock::now();
    std::vector<coproc::async_result<int>> results;
    for (int i = 0; i < 100; ++i)
      results.push_back(pool.apply_async(task_options{300ms}, tenth_hangs, i));
    int values = 0, timeouts = 0;
    for (int i = 0; i < 100; ++i) {
      if (i % 10 == 0) {
        auto e = co_await failure_of<coproc::task_timeout>(results[i].get());
        CHECK(e.timeout() == 300ms);
        ++timeouts;
      } else {
        CHECK(co_await results[i].get() == i);
        ++values;
      }
    }
    CHECK(values == 90);
    CHECK(timeouts == 10);
    CHECK(elapsed_ms(start) < 30'000);
    // The map form: each item its own clock, the late ones fail.
    std::vector<int> items{1, 2, 3};
    CHECK(co_await pool.map(task_options{10s}, tenth_hangs, items) == items);
    auto e = co_await failure_of<coproc::task_timeout>(
        pool.map(task_options{200ms}, tenth_hangs, std::vector<int>{1, 10, 3}));
    CHECK(e.timeout() == 200ms);
  }());
}

TEST_CASE("a coroutine task awaiting a hanging child: past its timeout the child is gone") {
  for (auto method : every_method) {
    CAPTURE(method_name(method));
    std::string marker =
        "1000.000" + std::to_string(::getpid()) + std::to_string(static_cast<int>(method));
    coproc_test::run([&]() -> coproc::awaitable<void> {
      auto ex = co_await boost::asio::this_coro::executor;
      coproc::pool pool(ex, {.processes = 1, .method = method, .concurrency = 2});
      auto r = pool.apply_async(task_options{2s}, run_hanging_child, marker);
      CHECK(co_await eventually([&] { return !processes_with_arg(marker).empty(); }));
      co_await failure_of<coproc::task_timeout>(r.get());
      CHECK(co_await eventually([&] { return processes_with_arg(marker).empty(); }));
      CHECK(co_await pool.apply(square_now, 4) == 16);
    }());
    CHECK(processes_with_arg(marker).empty());
  }
}

TEST_CASE("cancel stops a running coroutine task in its worker, its siblings go on") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, {.processes = 1, .concurrency = 4});
    auto victim = pool.apply_async(long_wait, dir.file(""), 30'000);
    auto sibling = pool.apply_async(pid_after, 300);
    co_await until_exists(dir.file("started"));
    long worker = numbers_in(dir.file("started")).at(0);
    CHECK(victim.cancel());
    CHECK(co_await aborted(victim.get()));
    CHECK(co_await eventually([&] { return exists(dir.file("aborted")); }));
    CHECK(co_await sibling.get() == worker); // the worker lives
    CHECK(co_await pool.apply(pid_after, 1) == worker);
  }());
}

TEST_CASE("a task past its timeout is killed with its grandchildren and the pool goes on") {
  for (auto method : {coproc::start_method::fork, coproc::start_method::spawn,
                      coproc::start_method::forkserver}) {
    CAPTURE(method_name(method));
    temp_dir dir;
    std::string marker =
        "coproc-timeout-marker-" + std::to_string(::getpid()) + "-" + method_name(method);
    std::string report = dir.file("report");
    coproc_test::run([&]() -> coproc::awaitable<void> {
      auto ex = co_await boost::asio::this_coro::executor;
      coproc::pool pool(ex, {.processes = 2, .method = method});
      auto other = pool.apply_async(nap_then, 800); // on the other worker: unaffected
      auto start = std::chrono::steady_clock::now();
      auto e = co_await failure_of<coproc::task_timeout>(
          pool.apply(task_options{600ms}, hang_with_grandchildren, marker, report));
      CHECK(elapsed_ms(start) >= 600);
      CHECK(e.timeout() == 600ms);
      std::string what = e.what();
      CHECK(what.find("0.6 s") != std::string::npos);
      auto pids = numbers_in(report);
      REQUIRE(pids.size() == 3); // the grandchildren had started
      CHECK(e.pid() == pids[0]);
      CHECK(what.find(std::to_string(pids[0])) != std::string::npos);
      CHECK(co_await eventually([&] {
        return processes_with_argv0(marker).empty() && !alive(pids[1]) && !alive(pids[2]);
      }));
      CHECK(co_await pool.apply(square, 7) == 49);
      CHECK(co_await other.get() == 800);
      CHECK(co_await pool.apply(square, 8) == 64);
    }());
    CHECK(processes_with_argv0(marker).empty());
  }
}

TEST_CASE("pool_options task_timeout is the default and task_options overrides it") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, {.processes = 1, .task_timeout = 300ms});
    auto e = co_await failure_of<coproc::task_timeout>(pool.apply(nap_then, 60'000));
    CHECK(e.timeout() == 300ms);
    CHECK(co_await pool.apply(task_options{20s}, nap_then, 600) == 600);
    CHECK(co_await pool.apply(square, 3) == 9);
  }());
}

TEST_CASE("each item of a timed chunk has its own clock and only the late one fails") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 2);
    // One chunk of four items in one worker: 800 ms in all, each far below its 500 ms.
    std::vector<int> naps(4, 200);
    CHECK(co_await pool.map(task_options{500ms}, nap_then, naps, 4) == naps);

    // The third item hangs: it fails alone; the chunk's items after it run elsewhere.
    std::vector<int> items{5, 6, 60'000, 7, 8};
    auto stream = pool.imap(task_options{400ms}, nap_then, items, 5);
    std::vector<std::string> got;
    for (std::size_t i = 0; i < items.size(); ++i) {
      try {
        auto v = co_await stream.next();
        got.push_back(std::to_string(v.value()));
      } catch (const coproc::task_timeout&) {
        got.push_back("timeout");
      }
    }
    CHECK(got == std::vector<std::string>{"5", "6", "timeout", "7", "8"});
    CHECK_FALSE(co_await stream.next());

    auto e = co_await failure_of<coproc::task_timeout>(
        pool.map(task_options{400ms}, nap_then, items, 1));
    CHECK(e.timeout() == 400ms);
  }());
}

TEST_CASE("cancel withdraws a queued task: it never runs") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, 1);
    auto blocker = pool.apply_async(touch_after_go, dir.file(""));
    co_await until_exists(dir.file("started"));
    auto queued = pool.apply_async(touch_now, dir.file("queued"));
    co_await coproc::sleep(20ms); // sent to the busy worker by now, most likely: both count
    CHECK(queued.cancel());
    CHECK_FALSE(queued.cancel());
    CHECK(queued.ready());
    CHECK_FALSE(queued.successful());
    CHECK(co_await aborted(queued.get()));
    write_file(dir.file("go"), "go");
    CHECK(co_await blocker.get() == 1);
    CHECK(co_await pool.apply(square, 4) == 16); // the worker went past the withdrawn frame
    CHECK_FALSE(exists(dir.file("queued")));
    CHECK_FALSE(blocker.cancel());
  }());
}

TEST_CASE("cancel stops a running task: its side effect never happens") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, 1);
    auto running = pool.apply_async(touch_after_go, dir.file(""));
    co_await until_exists(dir.file("started"));
    long worker = numbers_in(dir.file("started")).at(0);
    auto queued = pool.apply_async(square, 6); // behind it: not lost with the worker
    CHECK(running.cancel());
    CHECK(running.ready());
    CHECK(co_await aborted(running.get()));
    CHECK(co_await eventually([&] { return !alive(worker); }));
    write_file(dir.file("go"), "go");
    CHECK(co_await queued.get() == 36);
    CHECK(co_await pool.apply(square, 5) == 25);
    CHECK_FALSE(exists(dir.file("done")));
  }());
}

TEST_CASE("cancel of a map_async result stops every unfinished item") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, 2);
    std::vector<std::string> dirs;
    for (const char* name : {"a", "b", "c", "d"}) {
      std::filesystem::create_directory(dir.file(name));
      dirs.push_back(dir.file(name));
    }
    auto all = pool.map_async(touch_after_go, dirs, 1);
    co_await until_exists(dirs[0] + "/started");
    co_await until_exists(dirs[1] + "/started");
    CHECK(all.cancel());
    CHECK_FALSE(all.cancel());
    CHECK(co_await aborted(all.get()));
    std::vector<long> workers{numbers_in(dirs[0] + "/started").at(0),
                              numbers_in(dirs[1] + "/started").at(0)};
    CHECK(co_await eventually([&] { return !alive(workers[0]) && !alive(workers[1]); }));
    for (const auto& d : dirs) write_file(d + "/go", "go");
    CHECK(co_await pool.map(square, std::vector<int>{1, 2, 3}) == std::vector<int>{1, 4, 9});
    for (const auto& d : dirs) CHECK_FALSE(exists(d + "/done"));
    CHECK_FALSE(exists(dirs[2] + "/started")); // withdrawn before they started
    CHECK_FALSE(exists(dirs[3] + "/started"));

    auto finished = pool.map_async(square, std::vector<int>{2, 3});
    CHECK(co_await finished.get() == std::vector<int>{4, 9});
    CHECK_FALSE(finished.cancel());
    CHECK(co_await finished.get() == std::vector<int>{4, 9});
  }());
}

TEST_CASE("terminal cancellation of an awaited apply or map stops the running task") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, 1);
    for (bool map : {false, true}) {
      CAPTURE(map);
      temp_dir dir;
      std::string task_dir = dir.file("");
      auto started = dir.file("started");
      if (map) {
        auto outcome = co_await (pool.map(touch_after_go, std::vector<std::string>{task_dir}) ||
                                 until_exists(started));
        CHECK(outcome.index() == 1);
      } else {
        auto outcome = co_await (pool.apply(touch_after_go, task_dir) || until_exists(started));
        CHECK(outcome.index() == 1);
      }
      long worker = numbers_in(started).at(0);
      CHECK(co_await eventually([&] { return !alive(worker); }));
      write_file(dir.file("go"), "go");
      CHECK(co_await pool.apply(square, 3) == 9);
      CHECK_FALSE(exists(dir.file("done")));
    }
  }());
}

namespace {

// 1000 rounds of apply_async(task, i) (task returns i * i) racing its cancel(); with
// `timed`, every other task has a timeout (which it does not reach).
template <class Task> void cancel_race(coproc::pool_options options, Task task, bool timed) {
  // Half the cancels come from another thread, racing the pool's deliveries on its own.
  boost::asio::io_context other;
  auto guard = boost::asio::make_work_guard(other);
  std::thread other_thread([&] { other.run(); });
  struct joiner {
    decltype(guard)& guard;
    std::thread& thread;
    ~joiner() {
      guard.reset();
      thread.join();
    }
  } join_at_exit{guard, other_thread};
  int values = 0, cancelled = 0;
  coproc_test::run([&]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, options);
    std::mt19937 rng(1313);
    for (int i = 0; i < 1000; ++i) {
      auto r = timed && (i / 2) % 2 ? pool.apply_async(task_options{10s}, task, i)
                                    : pool.apply_async(task, i);
      // (A round trip takes some 50-100 µs: the cancels land before, during and after it.)
      auto delay = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 120)(rng));
      std::atomic<int> first{-1};
      if (i % 2 == 0) {
        if (i % 8 != 0) co_await coproc::sleep(delay); // else before it leaves this thread
        first = r.cancel();
      } else {
        boost::asio::post(other, [&first, r, delay]() mutable {
          std::this_thread::sleep_for(delay);
          first = r.cancel();
        });
        co_await eventually([&] { return first != -1; });
      }
      bool again = r.cancel();
      REQUIRE(r.ready());
      bool was_aborted = false;
      int value = -1;
      try {
        value = co_await r.get();
      } catch (const boost::system::system_error& e) {
        was_aborted = e.code() == boost::asio::error::operation_aborted;
      }
      CHECK_FALSE(again);
      if (first == 1) {
        CHECK(was_aborted);
        CHECK_FALSE(r.successful());
        ++cancelled;
      } else {
        CHECK(value == i * i);
        CHECK(r.successful());
        ++values;
      }
    }
    CHECK(co_await pool.apply(square, 12) == 144);
  }());
  MESSAGE("values " << values << ", cancelled " << cancelled);
  CHECK(values + cancelled == 1000);
}

} // namespace

TEST_CASE("1000 rounds of cancel racing completion give the value or operation_aborted once") {
  cancel_race({.processes = 2}, square, false);
}

TEST_CASE("1000 rounds of cancel racing a coroutine task's completion, timed or not") {
  cancel_race({.processes = 2, .concurrency = 4}, square_now, true);
}

TEST_CASE("cancelling a running task loses no finished answer of its worker") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, 1);
    // Its cost measured (tiny), the next ten go to the one worker together: the answers
    // of those before the long one are batched in the worker while it runs, those after
    // it have not started.
    CHECK(co_await pool.apply(tiny_or_long, dir.file(""), 0) == 0);
    std::vector<coproc::async_result<int>> results;
    for (int i = 1; i <= 10; ++i)
      results.push_back(pool.apply_async(tiny_or_long, dir.file(""), i));
    co_await until_exists(dir.file("started"));
    long worker = numbers_in(dir.file("started")).at(0);
    CHECK(results[4].cancel());
    for (int i = 1; i <= 10; ++i)
      if (i != 5) CHECK(co_await results[i - 1].get() == i);
    CHECK(co_await aborted(results[4].get()));
    CHECK(co_await eventually([&] { return !alive(worker); }));
    write_file(dir.file("go"), "go");
    CHECK(co_await pool.apply(square, 5) == 25);
    CHECK_FALSE(exists(dir.file("done")));
  }());
}

TEST_CASE("as_completed yields each result as it finishes with its index") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    temp_dir dir;
    coproc::pool pool(ex, 3);
    std::vector<coproc::async_result<int>> results;
    for (int i = 0; i < 3; ++i) results.push_back(pool.apply_async(when_told, dir.file(""), i));
    auto stream = coproc::as_completed(results);
    for (int i : {2, 0, 1}) {
      write_file(dir.file(("go" + std::to_string(i)).c_str()), "go");
      auto item = co_await stream.next();
      REQUIRE(item);
      CHECK(item->first == static_cast<std::size_t>(i));
      CHECK(co_await item->second.get() == i);
    }
    CHECK_FALSE(co_await stream.next());

    // Ready ones come at once; a failed one comes as a result that throws.
    auto done = pool.apply_async(square, 4);
    co_await done.wait();
    std::vector<coproc::async_result<int>> mixed{done, pool.apply_async(fail_on_odd, 1)};
    auto mixed_stream = coproc::as_completed(std::move(mixed));
    std::vector<std::size_t> order;
    while (auto item = co_await mixed_stream.next()) {
      order.push_back(item->first);
      if (item->first == 0) CHECK(co_await item->second.get() == 16);
      else CHECK_FALSE(item->second.successful());
    }
    CHECK(order == std::vector<std::size_t>{0, 1});

    auto empty = coproc::as_completed(std::vector<coproc::async_result<int>>{});
    CHECK_FALSE(co_await empty.next());
  }());
}
