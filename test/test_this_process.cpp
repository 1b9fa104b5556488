#include <coproc/this_process.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>

#include <stdexcept>

using namespace std::chrono_literals;

namespace {
coproc::awaitable<int> after(std::chrono::milliseconds delay, int value) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, delay);
  co_await timer.async_wait(boost::asio::use_awaitable);
  co_return value;
}
coproc::awaitable<int> fail_after(std::chrono::milliseconds delay, const char* what) {
  co_await after(delay, 0);
  throw std::runtime_error(what);
}
} // namespace

TEST_CASE("getpid and getppid are the OS values") {
  CHECK(coproc::getpid() == ::getpid());
  CHECK(coproc::getppid() == ::getppid());
}

TEST_CASE("cpu_count is at least one and matches the online CPUs") {
  CHECK(coproc::cpu_count() >= 1);
  CHECK(coproc::cpu_count() == static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN)));
}

TEST_CASE("the main program is named MainProcess") {
  CHECK(coproc::this_process::name() == "MainProcess");
}

TEST_CASE("fork returns 0 in the child and the child pid in the parent") {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  int parent = ::getpid();
  int pid = coproc::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    int ok = coproc::getppid() == parent && coproc::getpid() != parent;
    (void)!::write(pipefd[1], &ok, sizeof ok);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  REQUIRE(pid > 0);
  int ok = 0;
  CHECK(::read(pipefd[0], &ok, sizeof ok) == sizeof ok);
  CHECK(ok == 1);
  ::close(pipefd[0]);
  int status;
  CHECK(::waitpid(pid, &status, 0) == pid);
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("fork flushes buffered output so the child does not print it again") {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  int pid = coproc::fork();
  if (pid == 0) {
    // The child's stdout is a pipe: fully buffered, as when a sample is piped.
    ::dup2(pipefd[1], 1);
    std::printf("before\n");
    int inner = coproc::fork();
    std::printf(inner == 0 ? "child\n" : "parent\n");
    std::fflush(stdout);
    if (inner != 0) ::waitpid(inner, nullptr, 0);
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[256];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, n);
  ::close(pipefd[0]);
  ::waitpid(pid, nullptr, 0);
  CHECK(std::count(out.begin(), out.end(), 'b') == 1); // "before" exactly once
  CHECK(out.find("child\n") != std::string::npos);
  CHECK(out.find("parent\n") != std::string::npos);
}

TEST_CASE("block_on returns the result and rethrows the exception") {
  CHECK(coproc::block_on(after(1ms, 42)) == 42);
  CHECK_THROWS_WITH_AS(coproc::block_on(fail_after(1ms, "boom")), "boom", std::runtime_error);
}

TEST_CASE("gather runs concurrently and keeps the input order") {
  auto start = std::chrono::steady_clock::now();
  auto results = coproc::block_on([]() -> coproc::awaitable<std::vector<int>> {
    std::vector<coproc::awaitable<int>> items;
    items.push_back(after(300ms, 1));
    items.push_back(after(100ms, 2));
    items.push_back(after(200ms, 3));
    co_return co_await coproc::gather(std::move(items));
  }());
  CHECK(results == std::vector<int>{1, 2, 3});
  CHECK(std::chrono::steady_clock::now() - start < 550ms); // one after another: 600 ms
}

TEST_CASE("gather of nothing is empty") {
  auto results = coproc::block_on(coproc::gather(std::vector<coproc::awaitable<int>>{}));
  CHECK(results.empty());
}

TEST_CASE("gather rethrows the first exception after every awaitable ended") {
  int finished = 0;
  auto slow = [&]() -> coproc::awaitable<void> {
    co_await after(100ms, 0);
    ++finished;
  };
  auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH_AS(coproc::block_on([&]() -> coproc::awaitable<void> {
                         std::vector<coproc::awaitable<void>> items;
                         items.push_back(slow());
                         items.push_back([]() -> coproc::awaitable<void> {
                           co_await fail_after(10ms, "first");
                         }());
                         items.push_back([]() -> coproc::awaitable<void> {
                           co_await fail_after(50ms, "second");
                         }());
                         co_await coproc::gather(std::move(items));
                       }()),
                       "first", std::runtime_error);
  CHECK(finished == 1);
  CHECK(std::chrono::steady_clock::now() - start >= 100ms);
}

TEST_CASE("sleep suspends the coroutine for at least the duration") {
  auto start = std::chrono::steady_clock::now();
  coproc::block_on(coproc::sleep(30ms));
  CHECK(std::chrono::steady_clock::now() - start >= 30ms);
}

TEST_CASE("cancelling gather cancels every awaitable and waits for them to end") {
  using namespace boost::asio::experimental::awaitable_operators;
  int ended = 0;
  auto slow = [&]() -> coproc::awaitable<void> {
    struct count_end {
      int& n;
      ~count_end() { ++n; }
    } guard{ended};
    co_await coproc::sleep(10s);
  };
  auto start = std::chrono::steady_clock::now();
  coproc::block_on([&]() -> coproc::awaitable<void> {
    std::vector<coproc::awaitable<void>> items;
    items.push_back(slow());
    items.push_back(slow());
    auto first = co_await (coproc::gather(std::move(items)) || coproc::sleep(50ms));
    CHECK(first.index() == 1);
    CHECK(ended == 2);
  }());
  CHECK(std::chrono::steady_clock::now() - start < 5s);
}
