// The g++ 12 style (docs/design.md "Compilers", docs/platform.md): g++ 12.2 miscompiles a co_await
// full-expression that holds a braced list or an aggregate temporary, so every awaitable, lambda
// and options struct is named first and then awaited with co_await std::move(op). This file is what
// the g++ 12 build of the test command runs; clang builds it too.
#include <coproc/coproc.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <boost/asio/steady_timer.hpp>

#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {
int exit_with(int code) { return code; }

coproc::awaitable<int> nap_then(int code) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, 10ms);
  auto wait = timer.async_wait(boost::asio::use_awaitable);
  co_await std::move(wait);
  co_return code;
}
} // namespace

TEST_CASE("g++ style: start and join processes") {
  auto main = []() -> coproc::awaitable<int> {
    coproc::process_options options;
    options.name = "gcc-child";
    coproc::process p(options, exit_with, 7);
    p.start();
    auto join = p.join();
    int code = co_await std::move(join);
    co_return code;
  };
  auto op = main();
  CHECK(coproc::block_on(std::move(op)) == 7);
}

TEST_CASE("g++ style: coroutine targets and a timed join") {
  auto main = []() -> coproc::awaitable<void> {
    coproc::process quick(nap_then, 4);
    quick.start();
    auto timed = quick.join(5s);
    std::optional<int> code = co_await std::move(timed);
    CHECK(code == 4);
  };
  auto op = main();
  coproc::block_on(std::move(op));
}

TEST_CASE("g++ style: gather of joins") {
  auto main = []() -> coproc::awaitable<std::vector<int>> {
    std::vector<coproc::process> procs;
    for (int i = 0; i < 8; ++i) procs.emplace_back(exit_with, i);
    std::vector<coproc::awaitable<int>> joins;
    for (auto& p : procs) {
      p.start();
      joins.push_back(p.join());
    }
    auto all = coproc::gather(std::move(joins));
    auto codes = co_await std::move(all);
    co_return codes;
  };
  auto op = main();
  auto codes = coproc::block_on(std::move(op));
  CHECK(codes == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("g++ style: run with input and a timeout") {
  auto main = []() -> coproc::awaitable<coproc::completed_process> {
    std::vector<std::string> args{"cat"};
    coproc::run_options options;
    options.input = "through cat";
    options.capture_output = true;
    options.timeout = 5s;
    auto op = coproc::run(args, options);
    auto result = co_await std::move(op);
    co_return result;
  };
  auto op = main();
  auto r = coproc::block_on(std::move(op));
  CHECK(r.returncode == 0);
  CHECK(r.out == "through cat");
}

TEST_CASE("g++ style: popen communicate") {
  auto main = []() -> coproc::awaitable<std::string> {
    auto ex = co_await boost::asio::this_coro::executor;
    std::vector<std::string> args{"sh", "-c", "tr a-z A-Z"};
    coproc::popen_options options;
    options.in = coproc::stdio::pipe;
    options.out = coproc::stdio::pipe;
    coproc::popen child(ex, args, options);
    auto talk = child.communicate(std::string("shout"));
    auto [out, err] = co_await std::move(talk);
    auto wait = child.wait();
    CHECK(co_await std::move(wait) == 0);
    co_return out;
  };
  auto op = main();
  CHECK(coproc::block_on(std::move(op)) == "SHOUT");
}

namespace {
int square(int x) { return x * x; }
} // namespace

TEST_CASE("g++ style: pool apply and map") {
  auto main = []() -> coproc::awaitable<std::vector<int>> {
    auto ex = co_await boost::asio::this_coro::executor;
    coproc::pool_options options;
    options.processes = 2;
    coproc::pool pool(ex, options);
    auto one = pool.apply(square, 7);
    CHECK(co_await std::move(one) == 49);
    std::vector<int> items{1, 2, 3, 4};
    auto all = pool.map(square, items);
    auto squares = co_await std::move(all);
    pool.close();
    auto join = pool.join();
    co_await std::move(join);
    co_return squares;
  };
  auto op = main();
  CHECK(coproc::block_on(std::move(op)) == std::vector<int>{1, 4, 9, 16});
}

TEST_CASE("g++ style: a queue between two processes") {
  auto main = []() -> coproc::awaitable<std::vector<std::string>> {
    coproc::queue<std::string> q;
    coproc::process writer(
        [](coproc::queue<std::string> q) -> coproc::awaitable<void> {
          for (const char* item : {"A", "B", "C"}) {
            auto put = q.put(std::string(item));
            co_await std::move(put);
          }
        },
        q);
    writer.start();
    std::vector<std::string> got;
    for (int i = 0; i < 3; ++i) {
      auto get = q.get(5s);
      got.push_back(co_await std::move(get));
    }
    auto join = writer.join();
    CHECK(co_await std::move(join) == 0);
    co_return got;
  };
  auto op = main();
  CHECK(coproc::block_on(std::move(op)) == std::vector<std::string>{"A", "B", "C"});
}
