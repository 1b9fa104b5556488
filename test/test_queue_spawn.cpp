// Queues and pipe ends passed to spawn children as process arguments: their descriptors
// travel with the child (coproc/detail/travel.hpp), which then works on the same shared
// memory, eventfds and sockets as a fork child's inherited copies.
#include <coproc/process.hpp>
#include <coproc/queue.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <signal.h>

#include <array>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using coproc_test::run;

namespace {

constexpr auto spawn = coproc::start_method::spawn;

int join(coproc::process& p) { return run(p.join()); }

// Not wire-serializable: they travel only as a process's own arguments.
static_assert(!coproc::wire::serializable<coproc::queue<int>>);
static_assert(!coproc::wire::serializable<coproc::connection<std::string>>);
static_assert(!coproc::wire::serializable<std::vector<coproc::queue<int>>>);
static_assert(!coproc::wire::serializable<std::tuple<int, coproc::connection<int>>>);

coproc::awaitable<void> put_range(coproc::queue<int> q, int first, int count) {
  for (int i = first; i < first + count; ++i) co_await q.put(i);
}

} // namespace

TEST_CASE("spawn: a queue argument: the child puts 1000 items, the parent gets them in order") {
  coproc::queue<int> q(16); // small: both sides wait on the other's eventfd
  coproc::process p({.method = spawn}, put_range, q, 0, 1000);
  p.start();
  std::vector<int> got = run([](coproc::queue<int> q) -> coproc::awaitable<std::vector<int>> {
    std::vector<int> items;
    for (int i = 0; i < 1000; ++i) items.push_back(co_await q.get());
    co_return items;
  }(q));
  CHECK(join(p) == 0);
  std::vector<int> expected;
  for (int i = 0; i < 1000; ++i) expected.push_back(i);
  CHECK(got == expected);
  CHECK(q.empty());
}

TEST_CASE(
    "spawn: the parent puts, the child gets until the queue is closed and exits with their sum") {
  coproc::queue<std::string> q(
      coproc::queue_options{.capacity_bytes = 256}); // a few items at a time
  coproc::process p(
      {.method = spawn},
      [](coproc::queue<std::string> q) -> coproc::awaitable<int> {
        int sum = 0;
        try {
          for (;;) sum += std::stoi(co_await q.get());
        } catch (const coproc::queue_closed&) {
        }
        co_return sum % 251;
      },
      q);
  p.start();
  run([](coproc::queue<std::string> q) -> coproc::awaitable<void> {
    for (int i = 1; i <= 100; ++i) co_await q.put(std::to_string(i));
  }(q));
  q.close(); // seen by the child: its gets drain the rest, then queue_closed
  CHECK(join(p) == 5050 % 251);
  CHECK(q.closed());
}

TEST_CASE("spawn: a child killed right after its commit, holding the queue's lock, loses nothing") {
  coproc::queue<int> q;
  coproc::process p(
      {.method = spawn},
      [](coproc::queue<int> q) {
        coproc::detail::queue_ring::kill_after_next_commit();
        q.put_nowait(7);
      },
      q);
  p.start();
  CHECK(join(p) == -SIGKILL);
  // The item was committed; the dead child's lock is taken over in this process.
  CHECK(q.get_nowait() == 7);
  q.put_nowait(8);
  CHECK(run(q.get()) == 8);
}

TEST_CASE("spawn: a connection argument: 100 round trips, then the child sees the parent close") {
  auto [here, there] = coproc::pipe<int>();
  coproc::process p(
      {.method = spawn},
      [](coproc::connection<int> c) -> coproc::awaitable<int> {
        for (int i = 0; i < 100; ++i) co_await c.send(co_await c.recv() + 1);
        try {
          co_await c.recv();
        } catch (const coproc::eof_error&) {
          co_return 0;
        }
        co_return 1;
      },
      there);
  p.start();
  there.close(); // the child's copy is its own
  int answered = run([](coproc::connection<int> c) -> coproc::awaitable<int> {
    int right = 0;
    for (int i = 0; i < 100; ++i) {
      co_await c.send(i * 3);
      right += co_await c.recv() == i * 3 + 1;
    }
    co_return right;
  }(here));
  CHECK(answered == 100);
  here.close();
  CHECK(join(p) == 0);
}

TEST_CASE(
    "spawn: two children with the two ends of one pipe: A sends, B receives until A is gone") {
  auto [reader, writer] = coproc::pipe<std::string>(false);
  coproc::process a(
      {.method = spawn},
      [](coproc::connection<std::string> w) -> coproc::awaitable<void> {
        for (int i = 0; i < 50; ++i) co_await w.send("message " + std::to_string(i));
      },
      writer);
  coproc::process b(
      {.method = spawn},
      [](coproc::connection<std::string> r) -> coproc::awaitable<int> {
        int in_order = 0;
        try {
          for (;;) in_order += co_await r.recv() == "message " + std::to_string(in_order);
        } catch (const coproc::eof_error&) {
        }
        co_return in_order;
      },
      reader);
  a.start();
  b.start();
  // B sees EOF once every copy of the sending end is closed: A's at its exit, this one
  // now (and no copy made for the launch lingers).
  reader.close();
  writer.close();
  CHECK(join(a) == 0);
  CHECK(join(b) == 50);
}

TEST_CASE("spawn: queue and plain arguments together, two queues and one queue passed twice") {
  coproc::queue<std::string> words;
  coproc::queue<int> counts;
  coproc::process p(
      {.method = spawn},
      [](std::string prefix, coproc::queue<std::string> words, int n, coproc::queue<int> counts,
         coproc::queue<int> same) -> coproc::awaitable<int> {
        for (int i = 0; i < n; ++i) co_await words.put(prefix + std::to_string(i));
        co_await counts.put(n);
        // `same` is `counts`: one ring in the child, as in the parent.
        co_return co_await same.get() == n&& counts.empty() ? 0 : 1;
      },
      std::string("w"), words, 5, counts, counts);
  p.start();
  CHECK(join(p) == 0);
  std::vector<std::string> got;
  while (!words.empty()) got.push_back(words.get_nowait());
  CHECK(got == std::vector<std::string>{"w0", "w1", "w2", "w3", "w4"});
}

TEST_CASE("spawn: a queue that arrived in a child travels on to its own spawn child") {
  coproc::queue<int> q;
  coproc::process p(
      {.method = spawn},
      [](coproc::queue<int> q) -> coproc::awaitable<int> {
        coproc::process grandchild({.method = coproc::start_method::spawn}, put_range, q, 10, 3);
        grandchild.start();
        int code = co_await grandchild.join();
        co_return code == 0 && q.qsize() == 3 ? 0 : 1;
      },
      q);
  p.start();
  CHECK(join(p) == 0);
  CHECK(q.get_nowait() == 10);
  CHECK(q.get_nowait() == 11);
  CHECK(q.get_nowait() == 12);
}

namespace {
constexpr int threads = 4, children = 2, items = 200;
}

TEST_CASE("spawn: threads each start spawn children with queues of their own at once") {
  std::array<int, threads> sums{};
  std::array<int, threads> codes{};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([t, &sums, &codes] {
      coproc::queue<int> q(8);
      std::vector<coproc::process> started;
      for (int c = 0; c < children; ++c) {
        started.emplace_back(coproc::process_options{.method = coproc::start_method::spawn},
                             put_range, q, (t * children + c) * items, items);
        started.back().start();
      }
      sums[t] = run([](coproc::queue<int> q) -> coproc::awaitable<int> {
        int sum = 0;
        for (int i = 0; i < children * items; ++i) sum += co_await q.get();
        co_return sum;
      }(q));
      for (auto& p : started) codes[t] += join(p) == 0;
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < threads; ++t) {
    const int first = t * children * items, n = children * items;
    CHECK(sums[t] == n * first + n * (n - 1) / 2); // each thread got exactly its own items
    CHECK(codes[t] == children);
  }
}

TEST_CASE(
    "spawn: a queue or connection inside another argument, or a closed connection, is refused") {
  coproc::queue<int> q;
  coproc::process nested(
      {.name = "nested", .method = spawn}, [](std::vector<coproc::queue<int>>) {},
      std::vector<coproc::queue<int>>{q});
  CHECK_THROWS_WITH_AS(
      nested.start(),
      doctest::Contains("process 'nested': cannot start with start_method::spawn: a queue, "
                        "connection or synchronization object inside another argument"),
      std::invalid_argument);
  auto [a, b] = coproc::pipe<int>();
  a.close();
  coproc::process closed(
      {.name = "closed", .method = spawn}, [](coproc::connection<int>) {}, a);
  CHECK_THROWS_WITH_AS(closed.start(), doctest::Contains("process 'closed'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(closed.start(), doctest::Contains("a closed coproc::connection"),
                       std::invalid_argument);
  // fork inherits them, inside anything.
  coproc::process forked([](std::vector<coproc::queue<int>> qs) { qs.at(0).put_nowait(1); },
                         std::vector<coproc::queue<int>>{q});
  forked.start();
  CHECK(join(forked) == 0);
  CHECK(q.get_nowait() == 1);
}
