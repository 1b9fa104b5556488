#include <coproc/pool.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

namespace {
int square(int x) { return x * x; }
}

TEST_CASE("apply returns the result computed in a worker") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    CHECK(co_await pool.apply(square, 7) == 49);
    std::vector<int> items{1, 2, 3, 4, 5};
    auto squares = co_await pool.map(square, items);
    CHECK(squares == std::vector<int>{1, 4, 9, 16, 25});
    pool.close();
    co_await pool.join();
  }());
}
