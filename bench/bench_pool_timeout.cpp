// Per-task timeouts (coproc/pool.hpp, task_options): what a timeout costs a task that
// ends in time, a workload where every tenth task hangs, and the time from a timeout to
// the replacement worker answering; beside pebble's ProcessPool.schedule(timeout=)
// (bench/pool_timeout_peer.py, Debian python3-pebble, run with /usr/bin/python3).
#include <coproc/coproc.hpp>
#include <coproc/main_guard.hpp>

#include "common.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

int tiny(int x) { return x + 1; }
int maybe_hang(int i) {
  if (i % 10 == 0)
    for (;;) ::pause();
  return i;
}

// The same as a coroutine task: the hang is a long timer, cancelled in the worker at the
// timeout (no worker is killed).
coproc::awaitable<int> maybe_hang_async(int i) {
  if (i % 10 == 0) {
    boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, 60s);
    co_await t.async_wait(boost::asio::use_awaitable);
  }
  co_return i;
}

constexpr auto hang_timeout = 20ms;

// pebble is packaged for Debian's Python, not for another python3 first on PATH.
double pebble(const std::string& args) {
  return bench::python("pool_timeout_peer.py", args, "/usr/bin/python3");
}

coproc::awaitable<double> apply_us(coproc::pool& pool, std::optional<coproc::duration> timeout) {
  coproc::task_options options{timeout};
  for (int i = 0; i < 500; ++i) co_await pool.apply(options, tiny, i);
  std::vector<double> runs;
  for (int r = 0; r < 5; ++r) {
    constexpr int n = 3000;
    auto start = bench::clock::now();
    for (int i = 0; i < n; ++i) co_await pool.apply(options, tiny, i);
    runs.push_back(bench::seconds_since(start) / n * 1e6);
  }
  co_return bench::median(runs);
}

template <class Task> coproc::awaitable<double> every_tenth_s(Task task, unsigned concurrency = 1) {
  std::vector<double> runs;
  for (int r = 0; r < 3; ++r) {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .concurrency = concurrency});
    co_await pool.apply(tiny, 1);
    auto start = bench::clock::now();
    std::vector<coproc::async_result<int>> results;
    coproc::task_options options{hang_timeout};
    for (int i = 0; i < 1000; ++i) results.push_back(pool.apply_async(options, task, i));
    int timeouts = 0;
    for (auto& result : results) {
      try {
        co_await result.get();
      } catch (const coproc::task_timeout&) {
        ++timeouts;
      }
    }
    runs.push_back(bench::seconds_since(start));
    if (timeouts != 100) throw std::runtime_error("expected 100 timeouts");
  }
  co_return bench::median(runs);
}

// From the hanging task's timeout to the replacement's answer to a tiny task (that task's
// round trip included; the timeout itself subtracted).
coproc::awaitable<double> replacement_ms() {
  coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
  co_await pool.apply(tiny, 1);
  std::vector<double> samples;
  coproc::task_options options{hang_timeout};
  for (int r = 0; r < 20; ++r) {
    auto start = bench::clock::now();
    try {
      co_await pool.apply(options, maybe_hang, 0);
    } catch (const coproc::task_timeout&) {
    }
    co_await pool.apply(tiny, 1);
    samples.push_back(
        (bench::seconds_since(start) - std::chrono::duration<double>(hang_timeout).count()) * 1e3);
  }
  co_return bench::median(samples);
}

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv);
  coproc::block_on([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    double plain = co_await apply_us(pool, std::nullopt);
    double timed = co_await apply_us(pool, 10s);
    double py_plain = pebble("apply_us");
    double py_timed = pebble("apply_timeout_us");
    bench::row("pool apply round trip, no timeout", "coproc", plain, "us", true);
    bench::row("pool apply round trip, timeout 10 s", "coproc", timed, "us", true);
    bench::row("pool apply round trip, no timeout", "pebble", py_plain, "us", true);
    bench::row("pool apply round trip, timeout 10 s", "pebble", py_timed, "us", true);
    std::printf("  => timeout overhead: coproc %.3fx, pebble %.3fx (target <= 1.1x)\n",
                timed / plain, py_timed / py_plain);
    bench::ratio("apply round trip with a timeout vs pebble", timed, py_timed, true);

    double ours = co_await every_tenth_s(maybe_hang);
    double ours_async = co_await every_tenth_s(maybe_hang_async, 8);
    double theirs = pebble("every_tenth_s " + std::to_string(hang_timeout.count() / 1000.0));
    bench::row("1000 tasks, every 10th times out (20 ms)", "coproc", ours, "s", true);
    bench::row("1000 tasks, every 10th times out (20 ms)", "pebble", theirs, "s", true);
    bench::row("1000 tasks, every 10th times out: rate", "coproc", 1000 / ours, "tasks/s", false);
    bench::row("1000 tasks, every 10th times out: rate", "pebble", 1000 / theirs, "tasks/s", false);
    bench::ratio("every tenth task times out", ours, theirs, true);
    bench::row("1000 coroutine tasks (8 at once), every 10th times out", "coproc", ours_async, "s",
               true);
    bench::ratio("every tenth coroutine task times out vs pebble's sync tasks", ours_async, theirs,
                 true);

    double ours_ms = co_await replacement_ms();
    double theirs_ms = pebble("replacement_ms " + std::to_string(hang_timeout.count() / 1000.0));
    bench::row("timeout to replacement answering (fork)", "coproc", ours_ms, "ms", true);
    bench::row("timeout to replacement answering", "pebble", theirs_ms, "ms", true);
    bench::ratio("timeout to replacement answering (target <= 5 ms)", ours_ms, theirs_ms, true);
    pool.close();
    co_await pool.join();
  }());
}
