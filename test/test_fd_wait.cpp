// The descriptor waits behind queue and connection (coproc/detail/fd_wait.hpp): a wait on
// one thread and forget_fd on another (a connection closed while another thread waits on
// it) meet safely.
#include <coproc/detail/fd_wait.hpp>
#include <coproc/queue.hpp>
#include <coproc/run.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>

using namespace std::chrono_literals;

TEST_CASE("forget_fd on another thread while a wait starts and sleeps, 2000 times") {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  REQUIRE(fd >= 0);
  std::atomic<bool> stop{false};
  std::atomic<int> waits{0};
  std::thread waiter([&] {
    coproc::block_on([&]() -> coproc::awaitable<void> {
      while (!stop.load()) {
        waits.fetch_add(1);
        // Never readable: each wait ends by forget_fd (a spurious wake-up) or its deadline.
        (void)co_await coproc::detail::wait_readable(fd, coproc::detail::deadline::after(1s));
      }
    }());
    coproc::detail::forget_fd(fd);
  });
  for (int i = 0; i < 2000; ++i) {
    const int before = waits.load();
    coproc::detail::forget_fd(fd);
    // Until the waiter has begun its next wait: forget meets a wait being set up.
    while (waits.load() == before && i % 2 == 0) std::this_thread::yield();
  }
  stop.store(true);
  std::uint64_t one = 1;
  CHECK(::write(fd, &one, sizeof one) == sizeof one); // readable from now on: the waits end
  waiter.join();
  // Every even round waited for a new wait, and a forget_fd that failed to wake a wait
  // would have cost its 1 s deadline each time, 1000 times over the test's timeout.
  CHECK(waits.load() >= 1000);
  ::close(fd);
}

TEST_CASE("a connection closed on another thread ends a recv waiting on it") {
  for (int round = 0; round < 200; ++round) {
    auto [here, there] = coproc::pipe<int>();
    std::atomic<int> outcome{0}; // 1: logic_error (closed), 2: anything else
    std::atomic<bool> waiting{false};
    std::thread receiver([&, end = here]() mutable {
      try {
        coproc::block_on([&]() -> coproc::awaitable<void> {
          waiting.store(true);
          (void)co_await end.recv();
        }());
        outcome.store(2);
      } catch (const std::logic_error&) {
        outcome.store(1);
      } catch (...) {
        outcome.store(2);
      }
    });
    while (!waiting.load()) std::this_thread::yield();
    if (round % 2 == 0) std::this_thread::sleep_for(100us); // asleep in its wait, or not yet
    here.close();
    receiver.join();
    CHECK(outcome.load() == 1);
    there.close();
  }
}
