#include <coproc/process.hpp>
#include <coproc/queue.hpp>

#include <doctest/doctest.h>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "support/checks.hpp"
#include "support/ipc.hpp"
#include "support/person.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;

namespace {

using coproc_test::clock_type;
using coproc_test::person;
using coproc_test::shared_array;
using coproc_test::skewed;

template <class E, class F> std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception of the expected type");
  return {};
}

// The state letter of a process in /proc ('S': asleep in the kernel).
char process_state(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto comm_end = line.rfind(')'); // pid (comm) state ...: comm may hold parentheses
  return comm_end == std::string::npos || comm_end + 2 >= line.size() ? '?' : line[comm_end + 2];
}

// Waits until *announced reaches at least `value`, then until process pid is asleep: a
// process that announces a wait and makes no other blocking call on its way into it is
// then in that wait. False if that takes more than 20 s.
coproc::awaitable<bool> until_waiting(int pid, const std::atomic<int>* announced, int value = 1) {
  auto give_up = clock_type::now() + 20s;
  while (!(announced->load() >= value && process_state(pid) == 'S')) {
    if (clock_type::now() > give_up) co_return false;
    co_await coproc::sleep(1ms);
  }
  co_return true;
}

} // namespace

TEST_CASE("put and get in one process keep FIFO order and the sizes") {
  coproc::queue<int> q;
  CHECK(q.capacity_bytes() == coproc::default_queue_capacity);
  CHECK(q.capacity_bytes() == 1024 * 1024);
  CHECK(q.maxsize() == 0);
  CHECK(q.empty());
  CHECK_FALSE(q.full());
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < 1000; ++i) co_await q.put(i);
    CHECK(q.qsize() == 1000);
    CHECK_FALSE(q.empty());
    for (int i = 0; i < 1000; ++i) CHECK(co_await q.get() == i);
    CHECK(q.empty());
  }());
}

TEST_CASE("strings vectors and a user struct cross processes") {
  coproc::queue<std::string> strings;
  coproc::queue<std::vector<int>> vectors;
  coproc::queue<person> people;
  coproc::process child(
      [](coproc::queue<std::string> s, coproc::queue<std::vector<int>> v,
         coproc::queue<person> p) -> coproc::awaitable<void> {
        co_await s.put("");
        co_await s.put(std::string(100000, 'x'));
        co_await s.put("tail");
        co_await v.put({1, 2, 3});
        co_await v.put({});
        co_await p.put(person{"Ada", 36, {"math"}});
      },
      strings, vectors, people);
  child.start();
  run([&]() -> coproc::awaitable<void> {
    CHECK(co_await strings.get() == "");
    CHECK(co_await strings.get() == std::string(100000, 'x'));
    CHECK(co_await strings.get() == "tail");
    CHECK(co_await vectors.get() == std::vector<int>{1, 2, 3});
    CHECK((co_await vectors.get()).empty());
    CHECK(co_await people.get() == person{"Ada", 36, {"math"}});
    CHECK(co_await child.join() == 0);
  }());
}

TEST_CASE("items that wrap around the end of the ring arrive whole") {
  coproc::queue<std::string> q(coproc::queue_options{.capacity_bytes = 256});
  CHECK(q.capacity_bytes() == 256);
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < 500; ++i) {
      std::string item(static_cast<std::size_t>(i * 37 % 200), static_cast<char>('a' + i % 26));
      co_await q.put(item);
      CHECK(co_await q.get() == item);
    }
  }());
}

TEST_CASE("two producers and two consumers move 10000 items each exactly once in order") {
  constexpr int per_producer = 10000;
  coproc::queue<std::uint32_t> q(coproc::queue_options{.capacity_bytes = 4096});
  coproc::queue<std::vector<std::uint32_t>> results;
  auto producer = [](coproc::queue<std::uint32_t> q, std::uint32_t id) -> coproc::awaitable<void> {
    for (std::uint32_t i = 0; i < per_producer; ++i) co_await q.put(id << 24 | i);
  };
  auto consumer = [](coproc::queue<std::uint32_t> q,
                     coproc::queue<std::vector<std::uint32_t>> results) -> coproc::awaitable<void> {
    std::vector<std::uint32_t> got;
    try {
      for (;;) got.push_back(co_await q.get());
    } catch (const coproc::queue_closed&) {
    }
    co_await results.put(std::move(got));
  };
  std::vector<coproc::process> procs;
  procs.emplace_back(producer, q, 1u);
  procs.emplace_back(producer, q, 2u);
  procs.emplace_back(consumer, q, results);
  procs.emplace_back(consumer, q, results);
  for (auto& p : procs) p.start();
  run([&]() -> coproc::awaitable<void> {
    CHECK(co_await procs[0].join() == 0);
    CHECK(co_await procs[1].join() == 0);
    q.close();
    std::map<std::uint32_t, int> seen;
    for (int c = 0; c < 2; ++c) {
      auto got = co_await results.get(10s);
      std::map<std::uint32_t, std::uint32_t> next; // per producer, within one consumer
      for (auto item : got) {
        auto id = item >> 24, seq = item & 0xffffff;
        CHECK(seq >= next[id]); // FIFO per producer
        next[id] = seq + 1;
        ++seen[item];
      }
    }
    CHECK(seen.size() == 2 * per_producer);
    CHECK(std::all_of(seen.begin(), seen.end(), [](auto& kv) { return kv.second == 1; }));
    CHECK(co_await procs[2].join() == 0);
    CHECK(co_await procs[3].join() == 0);
  }());
}

TEST_CASE("get_nowait on an empty queue and put_nowait on a full one throw") {
  coproc::queue<int> q(2);
  CHECK(error_of<coproc::queue_empty>([&] { q.get_nowait(); }).find("empty") != std::string::npos);
  q.put_nowait(1);
  q.put_nowait(2);
  CHECK(q.full());
  CHECK(error_of<coproc::queue_full>([&] { q.put_nowait(3); }).find("full") != std::string::npos);
  CHECK(q.get_nowait() == 1);
  CHECK_FALSE(q.full());
  q.put_nowait(3);
  CHECK(q.get_nowait() == 2);
  CHECK(q.get_nowait() == 3);
  CHECK_THROWS_AS(q.get_nowait(), coproc::queue_empty);
}

TEST_CASE("a timed get on an empty queue and a timed put on a full one expire") {
  coproc::queue<std::string> q(1);
  run([&]() -> coproc::awaitable<void> {
    auto start = clock_type::now();
    CHECK_THROWS_AS(co_await q.get(100ms), coproc::queue_empty);
    auto waited = clock_type::now() - start;
    CHECK(waited >= 100ms);
    CHECK(waited < 3s);
    co_await q.put("one");
    start = clock_type::now();
    CHECK_THROWS_AS(co_await q.put("two", 100ms), coproc::queue_full);
    waited = clock_type::now() - start;
    CHECK(waited >= 100ms);
    CHECK(waited < 3s);
    CHECK(co_await q.get(0ms) == "one"); // an item already there is returned at once
  }());
}

TEST_CASE("a timed get is woken by a put from another process before its deadline") {
  coproc::queue<int> q;
  shared_array<std::atomic<int>> getting(1);
  coproc::process child(
      [](coproc::queue<int> q, std::atomic<int>* getting) -> coproc::awaitable<int> {
        if (!co_await until_waiting(coproc::getppid(), getting)) co_return 1;
        co_await q.put(7);
        co_return 0;
      },
      q, getting.data);
  child.start();
  run([&]() -> coproc::awaitable<void> {
    auto start = clock_type::now();
    getting.data->store(1);
    CHECK(co_await q.get(20s) == 7);
    CHECK(clock_type::now() - start < 10s);
    CHECK(co_await child.join() == 0);
  }());
}

TEST_CASE("a bounded queue blocks its producer until a consumer makes room") {
  coproc::queue<int> q(3);
  shared_array<std::atomic<int>> progress(1);
  coproc::process producer(
      [](coproc::queue<int> q, std::atomic<int>* progress) -> coproc::awaitable<void> {
        for (int i = 0; i < 10; ++i) {
          co_await q.put(i);
          progress->store(i + 1);
        }
      },
      q, progress.data);
  producer.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(producer.pid(), progress.data, 3));
    CHECK(progress.data->load() == 3); // the fourth put waits
    CHECK(q.qsize() == 3);
    CHECK(q.full());
    for (int i = 0; i < 10; ++i) CHECK(co_await q.get(10s) == i);
    CHECK(co_await producer.join() == 0);
  }());
}

TEST_CASE("a queue bounded by bytes blocks its producer too") {
  coproc::queue<std::string> q(coproc::queue_options{.capacity_bytes = 64});
  shared_array<std::atomic<int>> progress(1);
  coproc::process producer(
      [](coproc::queue<std::string> q, std::atomic<int>* progress) -> coproc::awaitable<void> {
        for (int i = 0; i < 20; ++i) {
          co_await q.put(std::string(20, static_cast<char>('a' + i)));
          progress->store(i + 1);
        }
      },
      q, progress.data);
  producer.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(producer.pid(), progress.data));
    CHECK(progress.data->load() == 1); // the second put waits
    CHECK(q.qsize() == 1);             // a 20-byte string takes 40 bytes of ring: one fits in 64
    for (int i = 0; i < 20; ++i)
      CHECK(co_await q.get(10s) == std::string(20, static_cast<char>('a' + i)));
    CHECK(co_await producer.join() == 0);
  }());
}

TEST_CASE("close drains what is left then gets fail and puts fail") {
  coproc::queue<int> q;
  run([&]() -> coproc::awaitable<void> {
    co_await q.put(1);
    co_await q.put(2);
    q.close();
    CHECK(q.closed());
    auto what = error_of<coproc::queue_closed>([&] { q.put_nowait(3); });
    CHECK(what.find("closed") != std::string::npos);
    CHECK_THROWS_AS(co_await q.put(3), coproc::queue_closed);
    CHECK(co_await q.get() == 1);
    CHECK(q.get_nowait() == 2);
    CHECK_THROWS_AS(co_await q.get(), coproc::queue_closed);
    CHECK_THROWS_AS(q.get_nowait(), coproc::queue_closed);
  }());
}

TEST_CASE("close wakes a getter and a putter waiting in other processes") {
  coproc::queue<int> empty_q, full_q(1);
  full_q.put_nowait(0);
  shared_array<std::atomic<int>> waiting(2); // [0] the getter, [1] the putter
  auto getter = [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<int> {
    try {
      waiting->store(1);
      co_await q.get();
    } catch (const coproc::queue_closed&) {
      co_return 42;
    }
    co_return 1;
  };
  auto putter = [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<int> {
    try {
      waiting->store(1);
      co_await q.put(1);
    } catch (const coproc::queue_closed&) {
      co_return 43;
    }
    co_return 1;
  };
  coproc::process g(getter, empty_q, waiting.data), p(putter, full_q, waiting.data + 1);
  g.start();
  p.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(g.pid(), waiting.data));
    REQUIRE(co_await until_waiting(p.pid(), waiting.data + 1));
    CHECK(g.is_alive());
    CHECK(p.is_alive());
    empty_q.close();
    full_q.close();
    CHECK(co_await g.join() == 42);
    CHECK(co_await p.join() == 43);
    CHECK(full_q.get_nowait() == 0); // still drained after close
  }());
}

TEST_CASE("shutdown without immediate is close: gets drain the items then fail") {
  coproc::queue<int> q;
  run([&]() -> coproc::awaitable<void> {
    co_await q.put(1);
    co_await q.put(2);
    q.shutdown();
    CHECK(q.closed());
    CHECK_THROWS_AS(co_await q.put(3), coproc::queue_closed);
    CHECK_THROWS_AS(q.put_nowait(3), coproc::queue_closed);
    CHECK(q.qsize() == 2);
    CHECK(co_await q.get() == 1);
    CHECK(co_await q.get(1s) == 2);
    CHECK_THROWS_AS(co_await q.get(), coproc::queue_closed);
    CHECK_THROWS_AS(co_await q.get(1s), coproc::queue_closed);
  }());
}

TEST_CASE("shutdown immediate drops every item: gets fail at once and puts fail") {
  coproc::queue<std::string> q(coproc::queue_options{.capacity_bytes = 256});
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < 5; ++i) co_await q.put(std::string(20, 'x'));
    CHECK(q.full() == false);
    q.shutdown(true);
    CHECK(q.closed());
    CHECK(q.qsize() == 0);
    CHECK(q.empty());
    CHECK_THROWS_AS(q.get_nowait(), coproc::queue_closed);
    CHECK_THROWS_AS(co_await q.get(), coproc::queue_closed);
    CHECK_THROWS_AS(co_await q.put("y"), coproc::queue_closed);
    q.shutdown(true); // again: nothing changes
    q.shutdown();
    CHECK_THROWS_AS(q.get_nowait(), coproc::queue_closed);
  }());
}

TEST_CASE("shutdown immediate drops the items for a child that forks before it too") {
  coproc::queue<int> q, done;
  for (int i = 0; i < 10; ++i) q.put_nowait(i);
  coproc::process child(
      [](coproc::queue<int> q, coproc::queue<int> done) -> coproc::awaitable<int> {
        co_await done.get(); // the parent has shut q down
        try {
          co_await q.get();
        } catch (const coproc::queue_closed&) {
          co_return q.qsize() == 0 ? 42 : 2;
        }
        co_return 1;
      },
      q, done);
  child.start();
  q.shutdown(true);
  done.put_nowait(0);
  CHECK(run(child.join()) == 42);
}

TEST_CASE("shutdown immediate wakes waiting getters and putters of this and other processes") {
  coproc::queue<int> empty_q, full_q(1);
  full_q.put_nowait(0);
  shared_array<std::atomic<int>> waiting(2); // [0] the getter, [1] the putter
  auto getter = [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<int> {
    try {
      waiting->store(1);
      co_await q.get();
    } catch (const coproc::queue_closed&) {
      co_return 42;
    }
    co_return 1;
  };
  auto putter = [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<int> {
    try {
      waiting->store(1);
      co_await q.put(1);
    } catch (const coproc::queue_closed&) {
      co_return 43;
    }
    co_return 1;
  };
  coproc::process g(getter, empty_q, waiting.data), p(putter, full_q, waiting.data + 1);
  g.start();
  p.start();
  run([&]() -> coproc::awaitable<void> {
    using namespace boost::asio::experimental::awaitable_operators;
    REQUIRE(co_await until_waiting(g.pid(), waiting.data));
    REQUIRE(co_await until_waiting(p.pid(), waiting.data + 1));
    // A getter and a putter of this process wait too.
    int started = 0, failed = 0;
    auto local_get = [&]() -> coproc::awaitable<void> {
      ++started;
      CHECK_THROWS_AS(co_await empty_q.get(), coproc::queue_closed);
      ++failed;
    };
    auto local_put = [&]() -> coproc::awaitable<void> {
      ++started;
      CHECK_THROWS_AS(co_await full_q.put(2), coproc::queue_closed);
      ++failed;
    };
    auto shut = [&]() -> coproc::awaitable<void> {
      // One thread: once both have started, both are asleep in their waits.
      while (started < 2) co_await coproc::sleep(1ms);
      const auto start = clock_type::now();
      empty_q.shutdown(true);
      full_q.shutdown(true);
      CHECK(co_await g.join() == 42);
      CHECK(co_await p.join() == 43);
      CHECK(clock_type::now() - start < 2s);
    };
    co_await (local_get() && local_put() && shut());
    CHECK(failed == 2);
    CHECK_THROWS_AS(full_q.get_nowait(), coproc::queue_closed); // the item was dropped
  }());
}

TEST_CASE("an item larger than the capacity is a length_error naming both sizes") {
  coproc::queue<std::string> q(coproc::queue_options{.capacity_bytes = 1000});
  std::string big(2000, 'x');
  auto what = error_of<std::length_error>([&] { q.put_nowait(big); });
  CHECK(what.find("2008") != std::string::npos); // the encoded item: 8-byte length + 2000
  CHECK(what.find("1000") != std::string::npos);
  run([&]() -> coproc::awaitable<void> {
    CHECK_THROWS_AS(co_await q.put(big), std::length_error);
    co_await q.put(std::string(900, 'y')); // the queue still works
    CHECK((co_await q.get()).size() == 900);
  }());
  CHECK_THROWS_AS(coproc::queue<int>(coproc::queue_options{.capacity_bytes = 8}),
                  std::invalid_argument);
}

TEST_CASE("a malformed item is a coproc error and the queue goes on") {
  coproc::queue<skewed> q;
  q.put_nowait(skewed{"1", 2});
  q.put_nowait(skewed{"3", 4});
  auto what = error_of<coproc::error>([&] { q.get_nowait(); });
  CHECK(what.find("malformed") != std::string::npos);
  CHECK(what.find("skewed") != std::string::npos);
  CHECK_THROWS_AS(q.get_nowait(), coproc::error);
  CHECK(q.empty());
}

namespace {
long cpu_ms() {
  rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}
} // namespace

TEST_CASE("waiting gets and puts sleep instead of spinning also after earlier wake-ups") {
  coproc::queue<int> q(1);
  shared_array<std::atomic<int>> waiting(2);
  // A getter and a putter are each woken once, so the wake-up eventfds have been used.
  coproc::process first_getter(
      [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<void> {
        waiting->store(1);
        co_await q.get(10s);
      },
      q, waiting.data);
  first_getter.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(first_getter.pid(), waiting.data));
    q.put_nowait(1);
    CHECK(co_await first_getter.join() == 0);
  }());
  q.put_nowait(2);
  coproc::process first_putter(
      [](coproc::queue<int> q, std::atomic<int>* waiting) -> coproc::awaitable<void> {
        waiting->store(1);
        co_await q.put(3, 10s);
      },
      q, waiting.data + 1);
  first_putter.start();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await until_waiting(first_putter.pid(), waiting.data + 1));
    CHECK(q.get_nowait() == 2);
    CHECK(co_await first_putter.join() == 0);
  }());
  // Now a putter on the full queue and, on another queue, a getter wait 500 ms each, and
  // a getter without a deadline (it looks again at intervals) is cancelled after 500 ms.
  coproc::queue<int> empty_q;
  auto sleeper = [](coproc::queue<int> full_q,
                    coproc::queue<int> empty_q) -> coproc::awaitable<int> {
    using namespace boost::asio::experimental::awaitable_operators;
    long before = cpu_ms();
    int expired = 0;
    try {
      co_await full_q.put(4, 500ms);
    } catch (const coproc::queue_full&) {
      ++expired;
    }
    try {
      co_await empty_q.get(500ms);
    } catch (const coproc::queue_empty&) {
      ++expired;
    }
    auto r = co_await (empty_q.get() || coproc::sleep(500ms));
    if (r.index() == 1) ++expired;
    if (expired != 3) co_return 2;
    co_return cpu_ms() - before < 200 ? 0 : 1; // a spinning wait would burn ~1500 ms
  };
  coproc::process s(sleeper, q, empty_q);
  s.start();
  CHECK(run(s.join()) == 0);
}

TEST_CASE("several coroutines of one process wait on one queue") {
  coproc::queue<int> q;
  shared_array<std::atomic<int>> getting(1);
  coproc::process child(
      [](coproc::queue<int> q, std::atomic<int>* getting) -> coproc::awaitable<int> {
        if (!co_await until_waiting(coproc::getppid(), getting)) co_return 1;
        for (int i = 0; i < 4; ++i) co_await q.put(i);
        co_return 0;
      },
      q, getting.data);
  child.start();
  run([&]() -> coproc::awaitable<void> {
    getting.data->store(1); // the four getters start at once, none finds an item
    std::vector<coproc::awaitable<int>> getters;
    for (int i = 0; i < 4; ++i) getters.push_back(q.get(20s));
    auto got = co_await coproc::gather(std::move(getters));
    std::sort(got.begin(), got.end());
    CHECK(got == std::vector<int>{0, 1, 2, 3});
    CHECK(co_await child.join() == 0);
  }());
}

// The item of round r, number seq: its length and bytes follow from both, so a torn or
// misplaced item cannot pass check_item.
namespace {
std::string make_item(std::uint32_t round, std::uint32_t seq) {
  std::string s(8 + (seq * 37 + round) % 400, '\0');
  std::memcpy(s.data(), &round, 4);
  std::memcpy(s.data() + 4, &seq, 4);
  for (std::size_t i = 8; i < s.size(); ++i) s[i] = static_cast<char>(seq * 31 + i * 7 + round);
  return s;
}
bool check_item(const std::string& s, std::uint32_t& round, std::uint32_t& seq) {
  if (s.size() < 8) return false;
  std::memcpy(&round, s.data(), 4);
  std::memcpy(&seq, s.data() + 4, 4);
  return s == make_item(round, seq);
}

struct kill_log {
  std::atomic<std::uint32_t> count;
  std::atomic<std::uint32_t> torn;
  std::uint32_t seqs[1 << 20];
};
} // namespace

TEST_CASE("processes killed at random moments in put and get never break the queue") {
  constexpr int rounds = 200;
  // A small ring: producers wait for room, records wrap, locks change hands often.
  coproc::queue<std::string> q(coproc::queue_options{.capacity_bytes = 2048});
  shared_array<kill_log> log(1);
  std::mt19937 rng(20261122);
  int lost_total = 0, consumed_total = 0;
  for (int r = 0; r < rounds; ++r) {
    log.data->count = 0;
    // Modes: 0 the consumer is slower (producer waits on full), 1 the producer is slower
    // (consumer waits on empty), 2 both at full speed.
    int mode = static_cast<int>(rng() % 3);
    coproc::process producer(
        [](coproc::queue<std::string> q, std::uint32_t round, int mode) -> coproc::awaitable<void> {
          for (std::uint32_t seq = 0; seq < (1u << 20); ++seq) {
            co_await q.put(make_item(round, seq));
            if (mode == 1 && seq % 8 == 0) co_await coproc::sleep(50us);
          }
        },
        q, static_cast<std::uint32_t>(r), mode);
    coproc::process consumer(
        [](coproc::queue<std::string> q, kill_log* log, int mode) -> coproc::awaitable<void> {
          for (;;) {
            auto item = co_await q.get();
            std::uint32_t round, seq;
            if (!check_item(item, round, seq)) log->torn.store(1);
            auto n = log->count.load(std::memory_order_relaxed);
            if (n < (1u << 20)) {
              log->seqs[n] = seq;
              log->count.store(n + 1, std::memory_order_release);
            }
            if (mode == 0 && seq % 8 == 0) co_await coproc::sleep(50us);
          }
        },
        q, log.data, mode);
    producer.start();
    consumer.start();
    auto first_delay = std::chrono::microseconds(rng() % 3000);
    auto second_delay = std::chrono::microseconds(rng() % 1500);
    bool producer_first = rng() % 2;
    std::this_thread::sleep_for(first_delay);
    (producer_first ? producer : consumer).kill();
    std::this_thread::sleep_for(second_delay);
    (producer_first ? consumer : producer).kill();
    run([&]() -> coproc::awaitable<void> {
      CHECK(co_await producer.join() == -9);
      CHECK(co_await consumer.join() == -9);
    }());
    // What the consumer logged, then what is left in the queue, must be this round's
    // items in order, each once, missing at most the consumer's in-flight one.
    std::vector<std::uint32_t> order(log.data->seqs, log.data->seqs + log.data->count.load());
    for (;;) {
      std::string item;
      try {
        item = q.get_nowait();
      } catch (const coproc::queue_empty&) {
        break;
      }
      std::uint32_t round, seq;
      REQUIRE(check_item(item, round, seq));
      REQUIRE(round == static_cast<std::uint32_t>(r));
      order.push_back(seq);
    }
    REQUIRE(log.data->torn.load() == 0);
    std::int64_t expected = 0;
    int lost = 0;
    for (auto seq : order) {
      REQUIRE(static_cast<std::int64_t>(seq) >= expected); // no duplicate, FIFO
      lost += static_cast<int>(seq - expected);
      expected = seq + 1;
    }
    INFO("round " << r << ": " << order.size() << " items, " << lost << " lost");
    REQUIRE(lost <= 1);
    REQUIRE(q.qsize() == 0);
    lost_total += lost;
    consumed_total += static_cast<int>(order.size());
    // Whatever the kills left behind (a lock, a wake-up flag, a sleeper's count), a new
    // consumer that goes to sleep is woken by the next put.
    coproc::process sleeper(
        [](coproc::queue<std::string> q, std::uint32_t round) -> coproc::awaitable<int> {
          std::uint32_t got_round, seq;
          auto item = co_await q.get(10s);
          co_return check_item(item, got_round, seq) && got_round == round&& seq == 0xfffff ? 0 : 1;
        },
        q, static_cast<std::uint32_t>(r));
    sleeper.start();
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    q.put_nowait(make_item(static_cast<std::uint32_t>(r), 0xfffff));
    REQUIRE(run(sleeper.join()) == 0);
  }
  MESSAGE(rounds << " rounds: " << consumed_total << " items checked, " << lost_total
                 << " in-flight items lost with their killed consumer");
  CHECK(consumed_total > rounds); // the rounds did move items
  // The queue still works normally after all the killing.
  run([&]() -> coproc::awaitable<void> {
    co_await q.put("after");
    CHECK(co_await q.get(1s) == "after");
  }());
}

// ---- hardening: cancelled queue operations, a killed waker ----

TEST_CASE("gets cancelled by a timer take nothing so every item arrives exactly once") {
  using namespace boost::asio::experimental::awaitable_operators;
  constexpr int cancellations = 20000;
  coproc::queue<int> q(1);                   // the getter mostly waits, however slow it runs (TSan)
  shared_array<std::atomic<int>> control(3); // [0] stop, [1] items put, [2] done
  // Pauses longer than the getter's timers: puts land just before, at and just after the
  // moment a timer cancels a waiting get.
  coproc::process producer(
      [](coproc::queue<int> q, std::atomic<int>* control) -> coproc::awaitable<void> {
        std::mt19937 rng(20261202);
        int i = 0;
        for (; control[0].load() == 0; ++i) {
          co_await q.put(i);
          co_await coproc::sleep(std::chrono::microseconds(100 + rng() % 400));
        }
        control[1].store(i);
        control[2].store(1);
      },
      q, control.data);
  producer.start();
  std::vector<int> seen;
  int cancelled = 0, out_of_range = 0;
  run([&]() -> coproc::awaitable<void> {
    std::mt19937 rng(7);
    auto give_up = clock_type::now() + 100s;
    // done before empty: once the last put is seen committed, an empty queue is drained.
    while (!(control.data[2].load() != 0 && q.empty()) && clock_type::now() < give_up) {
      if (cancelled >= cancellations) control.data[0].store(1);
      auto timer = coproc::sleep(std::chrono::microseconds(rng() % 50));
      // Both waits: without a deadline and with one that does not pass first.
      auto r = rng() % 2 ? co_await (q.get() || std::move(timer))
                         : co_await (q.get(10s) || std::move(timer));
      if (r.index() == 1) {
        ++cancelled;
        continue;
      }
      auto item = static_cast<std::size_t>(std::get<0>(r));
      if (item >= 10'000'000) {
        ++out_of_range;
        continue;
      }
      if (item >= seen.size()) seen.resize(item + 1);
      ++seen[item];
    }
    control.data[0].store(1); // when it gave up too: the producer, maybe waiting for room, ends
    while (control.data[2].load() == 0) {
      try {
        co_await q.get(100ms);
      } catch (const coproc::queue_empty&) {
      }
    }
    CHECK(co_await producer.join() == 0);
  }());
  const int put = control.data[1].load();
  seen.resize(static_cast<std::size_t>(std::max(put, 1)));
  int missing = 0, duplicated = 0;
  for (int count : seen) {
    missing += count == 0;
    duplicated += count > 1;
  }
  MESSAGE(put << " items, " << cancelled << " gets cancelled, " << missing << " items lost, "
              << duplicated << " duplicated");
  CHECK(cancelled >= cancellations);
  CHECK(put > 1000);
  CHECK(out_of_range == 0);
  CHECK(seen.size() == static_cast<std::size_t>(put)); // nothing beyond what was put
  CHECK(missing == 0);
  CHECK(duplicated == 0);
  CHECK(q.qsize() == 0);
}

TEST_CASE("timed-out and cancelled puts that are retried put every item exactly once") {
  using namespace boost::asio::experimental::awaitable_operators;
  constexpr int n = 10000;
  coproc::queue<int> q(1); // every put but the first waits for the consumer
  shared_array<std::atomic<int>> seen(n);
  coproc::process consumer(
      [](coproc::queue<int> q, std::atomic<int>* seen) -> coproc::awaitable<void> {
        std::mt19937 rng(3);
        for (;;) {
          int item = co_await q.get();
          if (item < 0) break;
          seen[item].fetch_add(1);
          if (rng() % 2) co_await coproc::sleep(std::chrono::microseconds(rng() % 200));
        }
      },
      q, seen.data);
  consumer.start();
  int timed_out = 0, cancelled = 0;
  run([&]() -> coproc::awaitable<void> {
    std::mt19937 rng(5);
    for (int i = 0; i < n; ++i) {
      for (;;) {
        auto timeout = std::chrono::microseconds(rng() % 300);
        if (i % 2 == 0) {
          try {
            co_await q.put(i, timeout);
            break;
          } catch (const coproc::queue_full&) {
            ++timed_out; // not put: put it again
          }
        } else {
          auto r = rng() % 2 ? co_await (q.put(i) || coproc::sleep(timeout))
                             : co_await (q.put(i, 10s) || coproc::sleep(timeout));
          if (r.index() == 0) break;
          ++cancelled; // not put: put it again
        }
      }
    }
    co_await q.put(-1);
    CHECK(co_await consumer.join() == 0);
  }());
  int missing = 0, duplicated = 0;
  for (std::size_t i = 0; i < n; ++i) {
    missing += seen.data[i].load() == 0;
    duplicated += seen.data[i].load() > 1;
  }
  MESSAGE(n << " items, " << timed_out << " puts timed out, " << cancelled << " cancelled, "
            << missing << " items lost, " << duplicated << " duplicated");
  CHECK(missing == 0);
  CHECK(duplicated == 0);
  CHECK(q.qsize() == 0);
  CHECK(timed_out > 10); // the deadlines and the timers did race the gets
  CHECK(cancelled > 10);
}

TEST_CASE("a getter wakes with the item when its putter is killed between commit and wake-up") {
  using namespace boost::asio::experimental::awaitable_operators;
  coproc::queue<int> q;
  shared_array<std::atomic<int>> go(1);
  coproc::process killed(
      [](coproc::queue<int> q, std::atomic<int>* go) -> coproc::awaitable<void> {
        while (go->load() == 0) co_await coproc::sleep(1ms);
        coproc::detail::queue_ring::kill_after_next_commit();
        co_await q.put(7); // dies with the item committed, its sleepers not woken
      },
      q, go.data);
  killed.start();
  bool got = false;
  run([&]() -> coproc::awaitable<void> {
    clock_type::time_point released;
    auto getter = [&]() -> coproc::awaitable<void> {
      auto r = co_await (q.get() || coproc::sleep(10s)); // no deadline of its own
      REQUIRE(r.index() == 0);
      CHECK(std::get<0>(r) == 7);
      got = true;
      CHECK(clock_type::now() - released < 3s);
    };
    // Runs once the getter has suspended in its wait (coroutines start in order).
    auto release = [&]() -> coproc::awaitable<void> {
      released = clock_type::now();
      go.data->store(1);
      CHECK(co_await killed.join() == -9);
      CHECK((got || q.qsize() == 1)); // committed, and the getter was not woken
    };
    co_await (getter() && release());
  }());
  CHECK(got);
  CHECK(q.qsize() == 0);
}

TEST_CASE("a putter wakes and puts when its getter is killed between commit and wake-up") {
  using namespace boost::asio::experimental::awaitable_operators;
  coproc::queue<int> q(1);
  q.put_nowait(1);
  shared_array<std::atomic<int>> go(1);
  coproc::process killed(
      [](coproc::queue<int> q, std::atomic<int>* go) -> coproc::awaitable<void> {
        while (go->load() == 0) co_await coproc::sleep(1ms);
        coproc::detail::queue_ring::kill_after_next_commit();
        co_await q.get(); // dies with the room made, its sleepers not woken
      },
      q, go.data);
  killed.start();
  bool put = false;
  run([&]() -> coproc::awaitable<void> {
    clock_type::time_point released;
    auto putter = [&]() -> coproc::awaitable<void> {
      auto r = co_await (q.put(2, 20s) || coproc::sleep(10s)); // a far deadline
      REQUIRE(r.index() == 0);
      put = true;
      CHECK(clock_type::now() - released < 3s);
    };
    auto release = [&]() -> coproc::awaitable<void> {
      released = clock_type::now();
      go.data->store(1);
      CHECK(co_await killed.join() == -9);
      CHECK((put || q.qsize() == 0)); // room made, and the putter was not woken
    };
    co_await (putter() && release());
  }());
  CHECK(put);
  CHECK(q.qsize() == 1);
  CHECK(q.get_nowait() == 2);
}
