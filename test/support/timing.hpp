// Shared by the test programs: waiting on the loop, an expected failure as a value, and
// elapsed wall time.
#pragma once

#include <coproc/awaitable.hpp>

#include <doctest/doctest.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <stdexcept>
#include <utility>

namespace coproc_test {

// Suspends the calling coroutine (not the thread) for d, on its own executor.
inline coproc::awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, d);
  co_await timer.async_wait(boost::asio::use_awaitable);
}

// Awaits op, which must throw an E: returns the exception, fails the test otherwise.
template <class E, class A> coproc::awaitable<E> failure_of(A op) {
  try {
    co_await std::move(op);
  } catch (const E& e) {
    co_return e;
  }
  FAIL("expected an exception");
  throw std::logic_error("unreachable");
}

// Milliseconds since `since`.
inline std::chrono::milliseconds::rep elapsed_ms(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                               since)
      .count();
}

} // namespace coproc_test
