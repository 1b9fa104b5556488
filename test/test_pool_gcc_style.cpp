// The pool in the style g++ 12 compiles correctly (docs/platform.md): every awaitable and
// option struct named before it is awaited. Built by both compilers; the g++ stage of
// ./dev test can list it next to test_gcc_style.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <unistd.h>

#include <csignal>
#include <stdexcept>

namespace {
int sq(int x) { return x * x; }
int add(int a, int b) { return a + b; }
int boom(int x) {
  if (x) throw std::runtime_error("boom");
  return 0;
}
int die(int) {
  ::kill(::getpid(), SIGKILL);
  ::pause();
  return 0;
}
int nap(int ms) {
  ::usleep(static_cast<useconds_t>(ms) * 1000);
  return ms;
}

coproc::awaitable<void> exercise(coproc::start_method method) {
  coproc::pool_options opts;
  opts.processes = 2;
  opts.method = method;
  auto ex = co_await boost::asio::this_coro::executor;
  coproc::pool pool(ex, opts);

  auto applied = pool.apply(sq, 4);
  CHECK(co_await std::move(applied) == 16);

  std::vector<int> items(10000);
  for (int i = 0; i < 10000; ++i) items[static_cast<std::size_t>(i)] = i % 100;
  auto by_one = pool.map(sq, items, 1);
  auto squares = co_await std::move(by_one);
  CHECK(squares[9999] == 99 * 99);
  auto by_default = pool.map(sq, items);
  CHECK(co_await std::move(by_default) == squares);

  std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}};
  auto sums = pool.starmap(add, pairs);
  CHECK((co_await std::move(sums))[1] == 7);

  std::vector<int> flags{0, 1, 0};
  auto stream = pool.imap(boom, flags);
  int errors = 0, values = 0;
  for (;;) {
    try {
      auto next = stream.next();
      auto item = co_await std::move(next);
      if (!item) break;
      ++values;
    } catch (const coproc::remote_error& e) {
      ++errors;
      CHECK(e.message() == "boom");
    }
  }
  CHECK(errors == 1);
  CHECK(values == 2);

  auto lost = pool.apply_async(die, 0);
  try {
    auto get = lost.get();
    co_await std::move(get);
    FAIL("expected worker_lost");
  } catch (const coproc::worker_lost& e) {
    CHECK(e.exitcode() == -SIGKILL);
  }

  auto slow = pool.apply_async(nap, 5000);
  try {
    auto get = slow.get(std::chrono::milliseconds(20));
    co_await std::move(get);
    FAIL("expected timeout_error");
  } catch (const coproc::timeout_error&) {
  }
  pool.terminate();
  try {
    auto get = slow.get();
    co_await std::move(get);
    FAIL("expected pool_closed");
  } catch (const coproc::pool_closed&) {
  }
  auto join = pool.join();
  co_await std::move(join);
}
} // namespace

TEST_CASE("pool in the g++ workaround style with forked workers") {
  coproc_test::run(exercise(coproc::start_method::fork));
}

TEST_CASE("pool in the g++ workaround style with spawned workers") {
  coproc_test::run(exercise(coproc::start_method::spawn));
}
