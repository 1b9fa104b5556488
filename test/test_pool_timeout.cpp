// Per-task timeouts that kill the task with everything it started, cancel() that stops a
// task, and as_completed (coproc/pool.hpp).
#include <coproc/pool.hpp>
#include <coproc/start_method.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/fresh_image.hpp"
#include "support/pool_tasks.hpp"
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

namespace {

bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Whole, by a rename: a reader never sees half of it.
void write_file(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path + ".tmp");
    out << text;
  }
  std::filesystem::rename(path + ".tmp", path);
}

std::vector<long> numbers_in(const std::string& path) {
  std::ifstream in(path);
  std::vector<long> numbers;
  for (long n; in >> n;) numbers.push_back(n);
  return numbers;
}

std::string argv0_of(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string arg0;
  std::getline(in, arg0, '\0');
  return arg0;
}

// Processes whose argv[0] is `marker` (a zombie has no cmdline: it does not count).
std::vector<long> processes_with_argv0(const std::string& marker) {
  std::vector<long> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (argv0_of(std::stol(name)) == marker) found.push_back(std::stol(name));
  }
  return found;
}

// Running or sleeping, not gone and not a zombie.
bool alive(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

// ---- tasks (they run in the workers) ----

// Starts two grandchildren, a `sleep` exec'd with `marker` as its argv[0] and a plain
// fork, writes "own-pid sleep-pid fork-pid" to `report` once the sleep runs, then hangs.
int hang_with_grandchildren(std::string marker, std::string report) {
  pid_t sleeper = ::fork();
  if (sleeper == 0) {
    ::execlp("sleep", marker.c_str(), "1000", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  pid_t forked = ::fork();
  if (forked == 0)
    for (;;) ::pause();
  while (argv0_of(sleeper) != marker) ::usleep(1000);
  write_file(report, std::to_string(::getpid()) + " " + std::to_string(sleeper) + " " +
                         std::to_string(forked));
  for (;;) ::pause();
}

void wait_for_path(const std::string& path) {
  while (!exists(path)) ::usleep(1000);
}

// Writes its pid to dir/started, waits for dir/go, then creates dir/done: the side effect
// a stopped task never has.
int touch_after_go(std::string dir) {
  write_file(dir + "/started", std::to_string(::getpid()));
  wait_for_path(dir + "/go");
  write_file(dir + "/done", "done");
  return 1;
}

int touch_now(std::string path) {
  write_file(path, "done");
  return 1;
}

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

// The fork server is this test program's child for the whole run: it starts before the
// first case, so the runner's leak check does not count it against one.
struct preload_before_the_cases : doctest::IReporter {
  explicit preload_before_the_cases(const doctest::ContextOptions&) {}
  void test_run_start() override {
    coproc::forkserver_preload();
    coproc::set_start_method(coproc::get_start_method()); // not a start: keeps the default
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

const char* method_name(coproc::start_method m) {
  return m == coproc::start_method::fork    ? "fork"
         : m == coproc::start_method::spawn ? "spawn"
                                            : "forkserver";
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_before_the_cases", 2, preload_before_the_cases);

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
coproc::awaitable<int> doubled_later(int x) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, 1ms);
  co_await t.async_wait(boost::asio::use_awaitable);
  co_return 2 * x;
}
} // namespace

TEST_CASE("a timeout for coroutine tasks is invalid_argument, untimed ones still run") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool pool(ex, coproc::pool_options{.processes = 1, .concurrency = 2});
    std::vector<int> items{1, 2};
    task_options timed{1s};
    CHECK_THROWS_WITH_AS(pool.apply_async(timed, doubled_later, 1),
                         doctest::Contains("coroutine tasks"), std::invalid_argument);
    CHECK_THROWS_AS(pool.map_async(timed, doubled_later, items), std::invalid_argument);
    CHECK(co_await pool.apply(doubled_later, 4) == 8);
    coproc::pool defaulted(ex, coproc::pool_options{.processes = 1, .task_timeout = 1s});
    CHECK_THROWS_AS(defaulted.apply_async(doubled_later, 1), std::invalid_argument);
    CHECK(co_await defaulted.apply(square, 3) == 9);
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

TEST_CASE("1000 rounds of cancel racing completion give the value or operation_aborted once") {
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
    coproc::pool pool(ex, 2);
    std::mt19937 rng(1313);
    for (int i = 0; i < 1000; ++i) {
      auto r = pool.apply_async(square, i);
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
