#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/start_method.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <stdexcept>

// One case: the default is fixed for the rest of the test program once anything started.
TEST_CASE("the default start method: fork, settable until the first start, read at start") {
  CHECK(coproc::get_start_method() == coproc::start_method::fork);
  coproc::set_start_method(coproc::start_method::spawn);
  CHECK(coproc::get_start_method() == coproc::start_method::spawn);
  coproc::set_start_method(coproc::start_method::forkserver);
  coproc::set_start_method(coproc::start_method::fork);
  CHECK(coproc::get_start_method() == coproc::start_method::fork);

  // A process without a method reads the default at start(), not at construction; a pool
  // when it is made. A start that fails does not fix the default.
  // (Here the start fails because a capture cannot travel to a forkserver child.)
  int captured = 1;
  coproc::process late({.name = "late"}, [captured] { return captured; });
  coproc::set_start_method(coproc::start_method::forkserver);
  CHECK_THROWS_WITH_AS(late.start(), doctest::Contains("process 'late'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(late.start(), doctest::Contains("start_method::forkserver"),
                       std::invalid_argument);
  coproc_test::run([&]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    CHECK_THROWS_WITH_AS(coproc::pool(ex, {.processes = 1, .initializer = [&] { ++captured; }}),
                         doctest::Contains("forkserver"), std::invalid_argument);
  }());
  coproc::set_start_method(coproc::start_method::spawn);
  coproc::set_start_method(coproc::start_method::forkserver);

  // A chosen method wins over the default; the first start fixes the default.
  coproc::process chosen({.method = coproc::start_method::fork}, [] { return 4; });
  chosen.start();
  CHECK(coproc_test::run(chosen.join()) == 4);
  CHECK_THROWS_WITH_AS(coproc::set_start_method(coproc::start_method::spawn),
                       doctest::Contains("already started"), std::logic_error);
  CHECK_THROWS_AS(coproc::set_start_method(coproc::start_method::forkserver), std::logic_error);
  CHECK(coproc::get_start_method() == coproc::start_method::forkserver);
}

TEST_CASE("a pool's start fixes the default too") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool forked(ex, {.processes = 1, .method = coproc::start_method::fork});
    forked.close();
    co_await forked.join();
  }());
  CHECK_THROWS_AS(coproc::set_start_method(coproc::get_start_method()), std::logic_error);
}
