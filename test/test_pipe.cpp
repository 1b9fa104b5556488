#include <coproc/process.hpp>
#include <coproc/queue.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/ipc.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>

#include <dirent.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::run;

namespace {
using coproc_test::clock_type;
using coproc_test::shared_array;
using coproc_test::skewed;
} // namespace

TEST_CASE("a duplex pipe carries messages both ways between processes") {
  auto [a, b] = coproc::pipe<std::string>();
  coproc::process child(
      [](coproc::connection<std::string> conn) -> coproc::awaitable<void> {
        for (;;) {
          auto msg = co_await conn.recv();
          if (msg == "bye") break;
          co_await conn.send(msg + "!");
        }
        co_await conn.send(std::string(1 << 20, 'L')); // larger than the socket buffer
      },
      b);
  child.start();
  b.close();
  run([&]() -> coproc::awaitable<void> {
    for (auto word : {"ping", "", "pong"}) {
      co_await a.send(word);
      CHECK(co_await a.recv() == std::string(word) + "!");
    }
    co_await a.send("bye");
    CHECK(co_await a.recv() == std::string(1 << 20, 'L'));
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error); // the child exited
    CHECK(co_await child.join() == 0);
  }());
}

TEST_CASE("a one-way pipe receives on the first end and sends on the second") {
  auto [reader, writer] = coproc::pipe<int>(false);
  run([&]() -> coproc::awaitable<void> {
    co_await writer.send(5);
    CHECK(co_await reader.recv() == 5);
    auto what = std::string();
    try {
      co_await reader.send(1);
    } catch (const std::logic_error& e) {
      what = e.what();
    }
    CHECK(what.find("receive-only") != std::string::npos);
    CHECK_THROWS_AS(co_await writer.recv(), std::logic_error);
  }());
}

TEST_CASE("poll waits up to its timeout and sees a message or the end") {
  auto [a, b] = coproc::pipe<int>();
  coproc::process child(
      [](coproc::connection<int> conn) -> coproc::awaitable<void> {
        co_await conn.recv(); // the parent's go: it has seen poll find nothing
        co_await conn.send(9);
      },
      b);
  child.start();
  b.close();
  run([&]() -> coproc::awaitable<void> {
    CHECK_FALSE(co_await a.poll());
    auto start = clock_type::now();
    CHECK_FALSE(co_await a.poll(30ms));
    CHECK(clock_type::now() - start >= 30ms);
    co_await a.send(0);
    CHECK(co_await a.poll(20s));
    CHECK(co_await a.poll()); // still there: poll does not consume
    CHECK(co_await a.recv() == 9);
    CHECK(co_await child.join() == 0);
    CHECK(co_await a.poll(5s)); // the end: recv would not wait
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error);
  }());
}

TEST_CASE("recv from a peer killed by SIGKILL is eof_error") {
  auto [a, b] = coproc::pipe<int>();
  coproc::process child(
      [](coproc::connection<int> conn) -> coproc::awaitable<void> {
        co_await conn.send(1);
        co_await coproc::sleep(60s);
      },
      b);
  child.start();
  b.close();
  run([&]() -> coproc::awaitable<void> {
    CHECK(co_await a.recv() == 1);
    child.kill();
    CHECK(co_await child.join() == -9);
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error);
    // Sending to it fails too, with the OS error.
    std::string what;
    try {
      co_await a.send(2);
    } catch (const std::system_error& e) {
      what = e.what();
    }
    CHECK(what.find("pid " + std::to_string(::getpid())) != std::string::npos);
    CHECK(what.find("the other end is closed") != std::string::npos);
  }());
}

TEST_CASE("a message cut short by a killed sender is a coproc error") {
  auto [a, b] = coproc::pipe<std::string>();
  coproc::process child(
      [](coproc::connection<std::string> conn) -> coproc::awaitable<void> {
        co_await conn.send(std::string(8 << 20, 'x')); // blocks: nobody reads yet
      },
      b);
  child.start();
  b.close();
  run([&]() -> coproc::awaitable<void> {
    REQUIRE(co_await a.poll(20s)); // the message has begun to arrive (poll takes nothing)
    child.kill();
    CHECK(co_await child.join() == -9);
    std::string what;
    try {
      co_await a.recv();
    } catch (const coproc::eof_error&) {
      FAIL("a partial frame must not look like a clean end");
    } catch (const coproc::error& e) {
      what = e.what();
    }
    CHECK(what.find("in the middle of a frame") != std::string::npos);
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error);
  }());
}

TEST_CASE("a message that does not decode is a coproc error") {
  auto [a, b] = coproc::pipe<skewed>();
  run([&]() -> coproc::awaitable<void> {
    co_await b.send(skewed{"1", 2});
    CHECK_THROWS_AS(co_await a.recv(), coproc::error);
    co_await b.send(skewed{"3", 4});
    CHECK_THROWS_AS(co_await a.recv(), coproc::error);
  }());
}

namespace {
std::set<int> open_fds() {
  std::set<int> fds;
  DIR* dir = ::opendir("/proc/self/fd");
  while (auto* e = ::readdir(dir))
    if (e->d_name[0] != '.' && std::atoi(e->d_name) != ::dirfd(dir))
      fds.insert(std::atoi(e->d_name));
  ::closedir(dir);
  return fds;
}
} // namespace

TEST_CASE("forged frames with a wrong or absurd length are coproc errors") {
  auto before = open_fds();
  auto [a, b] = coproc::pipe<int>();
  std::vector<int> made;
  for (int fd : open_fds())
    if (!before.count(fd)) made.push_back(fd);
  REQUIRE(made.size() == 2);
  int raw_b = made[1]; // socketpair takes the lowest free numbers, a's first
  auto send_raw = [&](std::uint64_t length, const std::string& body) {
    std::string frame(reinterpret_cast<const char*>(&length), 8);
    frame += body;
    REQUIRE(::send(raw_b, frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size()));
  };
  run([&]() -> coproc::awaitable<void> {
    send_raw(3, "abc"); // an int frame must hold 4 bytes
    std::string what;
    try {
      co_await a.recv();
    } catch (const coproc::error& e) {
      what = e.what();
    }
    CHECK(what.find("malformed int frame of 3 bytes") != std::string::npos);
    co_await b.send(5); // the stream is still in step
    CHECK(co_await a.recv() == 5);
    send_raw(std::uint64_t{1} << 50, "");
    what.clear();
    try {
      co_await a.recv();
    } catch (const coproc::error& e) {
      what = e.what();
    }
    CHECK(what.find("malformed frame announcing 1125899906842624 bytes") != std::string::npos);
  }());
}

TEST_CASE("a closed connection refuses send and recv") {
  auto [a, b] = coproc::pipe<int>();
  a.close();
  a.close(); // idempotent
  run([&]() -> coproc::awaitable<void> {
    CHECK_THROWS_AS(co_await a.send(1), std::logic_error);
    CHECK_THROWS_AS(co_await a.recv(), std::logic_error);
    CHECK_THROWS_AS(co_await b.recv(), coproc::eof_error);
  }());
}

// ---- hardening: pipes ----

namespace {
// A pipe and the descriptors of its two ends, for tests that forge or inspect records.
template <class T> struct raw_pipe {
  raw_pipe() {
    std::vector<int> made;
    for (int fd : open_fds())
      if (!before.count(fd)) made.push_back(fd);
    REQUIRE(made.size() == 2);
    fd_a = made[0]; // socketpair takes the lowest free numbers, a's first
    fd_b = made[1];
  }
  // Sends [length][body] as one write from b's descriptor.
  void forge(std::uint64_t length, const std::string& body) {
    std::string frame(reinterpret_cast<const char*>(&length), 8);
    frame += body;
    REQUIRE(::send(fd_b, frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size()));
  }
  std::set<int> before = open_fds();
  std::pair<coproc::connection<T>, coproc::connection<T>> ends = coproc::pipe<T>();
  coproc::connection<T>& a = ends.first;
  coproc::connection<T>& b = ends.second;
  int fd_a = -1, fd_b = -1;
};

// Unread bytes queued on a socket.
int queued_bytes(int fd) {
  int n = 0;
  REQUIRE(::ioctl(fd, SIOCINQ, &n) == 0);
  return n;
}

long resident_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  REQUIRE(f != nullptr);
  REQUIRE(std::fscanf(f, "%ld %ld", &pages, &resident) == 2);
  std::fclose(f);
  return resident * ::sysconf(_SC_PAGESIZE);
}
} // namespace

TEST_CASE("a send cancelled in the middle of a large message still delivers it whole and then the "
          "next one") {
  auto [a, b] = coproc::pipe<std::string>();
  shared_array<std::atomic<int>> outcome(1); // 1: the send was cancelled, 2: it completed
  coproc::process child(
      [](coproc::connection<std::string> conn,
         std::atomic<int>* outcome) -> coproc::awaitable<void> {
        using namespace boost::asio::experimental::awaitable_operators;
        // Nobody reads yet: the first records fill the socket, then the timer cancels.
        auto r = co_await (conn.send(std::string(8 << 20, 'x')) || coproc::sleep(50ms));
        outcome->store(r.index() == 1 ? 1 : 2);
        co_await conn.send("next");
      },
      b, outcome.data);
  child.start();
  b.close();
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; outcome.data->load() == 0; ++i) {
      REQUIRE(i < 4000);
      co_await coproc::sleep(5ms);
    }
    CHECK(outcome.data->load() == 1);
    std::string first;
    try {
      first = co_await a.recv();
    } catch (const coproc::error& e) {
      FAIL((std::string("the stream is corrupt: ") + e.what()));
    }
    CHECK(first.size() == std::size_t{8} << 20);
    CHECK(first == std::string(8 << 20, 'x'));
    CHECK(co_await a.recv() == "next");
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error);
    CHECK(co_await child.join() == 0);
  }());
}

TEST_CASE("a recv cancelled as its message arrives does not lose the message") {
  auto [a, b] = coproc::pipe<int>();
  run([&]() -> coproc::awaitable<void> {
    using namespace boost::asio::experimental::awaitable_operators;
    for (int i = 0; i < 20; ++i) {
      // The recv waits; then, before its io_context looks at the socket again, a message
      // arrives and the recv is cancelled.
      auto arrive = [&]() -> coproc::awaitable<void> {
        co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                                   boost::asio::use_awaitable);
        co_await b.send(i);
      };
      auto r = co_await (a.recv() || arrive());
      std::optional<int> got;
      if (r.index() == 0) {
        got = std::get<0>(r);
      } else {
        auto again = co_await (a.recv() || coproc::sleep(5s));
        if (again.index() == 0) got = std::get<0>(again);
      }
      REQUIRE(got == i);
    }
  }());
}

TEST_CASE("a child that receives one message or polls leaves the other messages to the parent") {
  // CPython's _TestPoll.test_boundaries: a process that exits takes no one else's message.
  auto [r, w] = coproc::pipe<std::string>(false);
  run([&]() -> coproc::awaitable<void> {
    for (auto word : {"first", "second", "third"}) co_await w.send(word);
  }());
  coproc::process receiver(
      [](coproc::connection<std::string> r) -> coproc::awaitable<void> {
        if (co_await r.recv() != "first") throw std::runtime_error("not the first message");
      },
      r);
  coproc::process poller(
      [](coproc::connection<std::string> r) -> coproc::awaitable<void> {
        if (!co_await r.poll(5s)) throw std::runtime_error("poll saw no message");
      },
      r);
  run([&]() -> coproc::awaitable<void> {
    receiver.start();
    CHECK(co_await receiver.join() == 0);
    poller.start();
    CHECK(co_await poller.join() == 0);
    w.close();
    CHECK(co_await r.recv() == "second");
    CHECK(co_await r.recv() == "third");
    CHECK_THROWS_AS(co_await r.recv(), coproc::eof_error);
  }());
}

TEST_CASE("two processes receiving from one end get every small message whole exactly once") {
  auto [r, w] = coproc::pipe<int>(false);
  constexpr int n = 3000;
  shared_array<std::atomic<int>> seen(n);
  auto body = [](coproc::connection<int> r, std::atomic<int>* seen) -> coproc::awaitable<void> {
    for (;;) {
      int v = co_await r.recv();
      if (v < 0) co_return;
      seen[v].fetch_add(1);
    }
  };
  coproc::process first(body, r, seen.data), second(body, r, seen.data);
  first.start();
  second.start();
  r.close();
  run([&]() -> coproc::awaitable<void> {
    for (int i = 0; i < n; ++i) co_await w.send(i);
    co_await w.send(-1); // one stop for each receiver
    co_await w.send(-1);
    for (auto* p : {&first, &second}) {
      auto code = co_await p->join(20s);
      if (!code) p->kill();
      CHECK(code == 0);
    }
    co_await first.join();
    co_await second.join();
  }());
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += seen.data[i].load() != 1;
  CHECK(wrong == 0);
}

TEST_CASE("a header announcing a huge message takes memory only as its bytes arrive") {
  raw_pipe<std::string> p;
  p.forge(std::uint64_t{1} << 30, "12345678"); // 1 GiB announced, 8 bytes sent
  const long before = resident_bytes();
  long during = 0;
  std::string what;
  run([&]() -> coproc::awaitable<void> {
    using namespace boost::asio::experimental::awaitable_operators;
    auto receive = [&]() -> coproc::awaitable<void> {
      try {
        co_await p.a.recv();
      } catch (const coproc::error& e) {
        what = e.what();
      }
    };
    auto watch = [&]() -> coproc::awaitable<void> {
      for (int i = 0; queued_bytes(p.fd_a) != 0; ++i) { // the receiver has taken them
        REQUIRE(i < 4000);
        co_await coproc::sleep(5ms);
      }
      co_await boost::asio::post(co_await boost::asio::this_coro::executor,
                                 boost::asio::use_awaitable);
      during = resident_bytes();
      p.b.close();
    };
    co_await (receive() && watch());
  }());
  CHECK(during - before < (long{64} << 20));
  CHECK(what.find("in the middle of a frame") != std::string::npos);
  CHECK(what.find("1073741824") != std::string::npos);
}

TEST_CASE("a header above the message size limit is a coproc error and the pipe goes on") {
  raw_pipe<int> p;
  run([&]() -> coproc::awaitable<void> {
    for (std::uint64_t length :
         {std::uint64_t{1} << 40, std::uint64_t{coproc::max_message_bytes} + 1}) {
      p.forge(length, "");
      std::string what;
      try {
        co_await p.a.recv();
      } catch (const coproc::error& e) {
        what = e.what();
      }
      CHECK(what.find("malformed frame announcing " + std::to_string(length) + " bytes") !=
            std::string::npos);
      CHECK(what.find("the limit is " + std::to_string(coproc::max_message_bytes)) !=
            std::string::npos);
    }
    co_await p.b.send(5);
    CHECK(co_await p.a.recv() == 5);
  }());
}

TEST_CASE("a piece of a message without its start and a start cut short are coproc errors") {
  raw_pipe<int> p;
  constexpr std::uint64_t continued = std::uint64_t{1} << 63;
  auto error_from_recv = [&]() -> coproc::awaitable<std::string> {
    try {
      co_await p.a.recv();
    } catch (const coproc::error& e) {
      co_return e.what();
    }
    co_return "";
  };
  run([&]() -> coproc::awaitable<void> {
    // What a second receiver of a large message gets: its middle.
    p.forge(continued | 65528, "abcd");
    p.forge(continued | 65532, "efgh"); // dropped with the first piece, silently
    CHECK((co_await error_from_recv()).find("a piece at offset 65528 of a message whose start") !=
          std::string::npos);
    co_await p.b.send(7);
    CHECK(co_await p.a.recv() == 7);
    // What follows a sender killed half-way when another process sends on the same end.
    p.forge(100, "12345678");
    co_await p.b.send(8);
    CHECK((co_await error_from_recv()).find("a message of 100 bytes was cut short after 8 bytes") !=
          std::string::npos);
    CHECK(co_await p.a.recv() == 8);
    co_await p.b.send(9);
    CHECK(co_await p.a.recv() == 9);
  }());
}

TEST_CASE("messages from a peer that exited without reading its own still arrive") {
  // The kernel reports ECONNRESET once, before the records still queued for the reader.
  auto [a, b] = coproc::pipe<int>();
  coproc::process child(
      [](coproc::connection<int> conn) -> coproc::awaitable<void> {
        co_await conn.send(2);
        co_await conn.send(3);
      },
      b);
  run([&]() -> coproc::awaitable<void> {
    co_await a.send(1); // never read
    child.start();
    b.close();
    CHECK(co_await child.join() == 0);
    CHECK(co_await a.recv() == 2);
    CHECK(co_await a.recv() == 3);
    CHECK_THROWS_AS(co_await a.recv(), coproc::eof_error);
  }());
}
