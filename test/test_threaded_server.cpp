// A server-shaped load: one io_context run by 4 threads, many concurrent "mixes" of every
// coproc operation, each on its own coroutine, resuming on whichever thread is free. Every
// child is started with a method that is safe from a threaded program (TSan does not support
// fork in one), and the runner checks that nothing is left behind: no zombie, no descriptor.
#include <coproc/coproc.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/preload_fork_server.hpp"
#include "support/threads.hpp"
#include "support/timing.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <array>
#include <mutex>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

// The start methods a threaded program may use.
constexpr std::array threaded_methods{coproc::start_method::spawn,
                                      coproc::start_method::forkserver};

constexpr int mixes = 500;
constexpr int wave = 16; // mixes at once: enough to overlap everything, not to overload 2 cores
constexpr int pings = 20;

// The child's exit code, computed from its argument.
int exit_code_of(int i) { return i % 113 + 1; }
int triple_plus_one(int x) { return 3 * x + 1; }

// What the mixes of one wave read from the shared queue: every item put, exactly once.
struct taken_items {
  std::mutex mutex;
  std::vector<int> items;
  void add(int item) {
    std::lock_guard lock(mutex);
    items.push_back(item);
  }
};

// One end of a ping-pong: the initiator sends 0, 2, 4, ... and expects each plus one back;
// the other end answers each message with its successor.
coproc::awaitable<int> ping(coproc::connection<int> end, int base) {
  int sum = 0;
  for (int k = 0; k < pings; ++k) {
    co_await end.send(base + 2 * k);
    int answer = co_await end.recv();
    CHECK(answer == base + 2 * k + 1);
    sum += answer;
  }
  co_return sum;
}
coproc::awaitable<int> pong(coproc::connection<int> end) {
  for (int k = 0; k < pings; ++k) co_await end.send(co_await end.recv() + 1);
  co_return 0;
}

coproc::awaitable<void> mix(int i, coproc::start_method method, coproc::pool& pool,
                            coproc::queue<int>& queue, taken_items& taken) {
  // A process joined by two coroutines at once, each on a strand of its own.
  coproc::process child({.method = method}, exit_code_of, i);
  child.start();
  std::vector<coproc::awaitable<int>> joins;
  joins.push_back(coproc_test::on_strand(child.join()));
  joins.push_back(coproc_test::on_strand(child.join()));
  auto codes = co_await coproc::gather(std::move(joins));
  CHECK(codes[0] == exit_code_of(i));
  CHECK(codes[1] == exit_code_of(i));
  CHECK(child.exitcode() == exit_code_of(i));

  // The pool every mix shares.
  CHECK(co_await pool.apply(triple_plus_one, i) == 3 * i + 1);

  // The queue every mix shares: one put, one get (maybe another mix's item).
  co_await queue.put(i);
  taken.add(co_await queue.get());

  // A command, its exit code and its output.
  auto command = co_await coproc::run(
      {"sh", "-c", "echo \"mix $1\"; exit $(($1 % 7))", "sh", std::to_string(i)},
      {.capture_output = true});
  CHECK(command.returncode == i % 7);
  CHECK(command.out == "mix " + std::to_string(i) + "\n");
  CHECK(command.err.empty());

  // A pipe whose two ends are driven from coroutines on different strands.
  auto [a, b] = coproc::pipe<int>();
  std::vector<coproc::awaitable<int>> ends;
  ends.push_back(coproc_test::on_strand(ping(a, 1000 * i)));
  ends.push_back(coproc_test::on_strand(pong(b)));
  auto sums = co_await coproc::gather(std::move(ends));
  CHECK(sums[0] == pings * 1000 * i + pings * pings); // sum of 1000i + 2k + 1, k < pings
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

TEST_CASE(
    "a server on 4 threads runs 500 mixes of processes, a pool, a queue, commands and pipes") {
  for (auto method : threaded_methods) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run_threaded([method]() -> coproc::awaitable<void> {
      auto ex = co_await boost::asio::this_coro::executor;
      coproc::pool pool(ex, {.processes = 2, .method = method});
      coproc::queue<int> queue;
      taken_items taken;
      for (int first = 0; first < mixes; first += wave) {
        std::vector<coproc::awaitable<void>> running;
        for (int i = first; i < std::min(first + wave, mixes); ++i)
          running.push_back(mix(i, method, pool, queue, taken));
        co_await coproc::gather(std::move(running));
      }
      std::sort(taken.items.begin(), taken.items.end());
      std::vector<int> expected(mixes);
      for (int i = 0; i < mixes; ++i) expected[i] = i;
      CHECK(taken.items == expected);
      CHECK(queue.empty());
      pool.close();
      co_await pool.join();
    }());
  }
}
