// coproc/this_process.hpp — os.getpid/getppid/fork, cpu_count, the process name,
// and asyncio-style helpers to run and combine awaitables.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

template <class T> using awaitable = boost::asio::awaitable<T>;
using duration = std::chrono::steady_clock::duration;

int getpid();
int getppid();

// os.fork(): 0 in the child, the child's pid in the parent. C stdio and the standard
// iostreams are flushed first, so nothing buffered is printed twice. In the child,
// coproc's own bookkeeping (children of the parent, the background reaper) is reset;
// an io_context of the parent must not be run in the child (use block_on, or call
// notify_fork(fork_child) on it first). std::system_error when fork fails.
int fork();

unsigned cpu_count();

namespace this_process {
// "MainProcess" in the program, the process's name in a coproc::process child,
// "ForkPoolWorker-N" in a pool worker.
std::string name();
} // namespace this_process

// asyncio.run(): runs main on a fresh io_context until it ends, returns its result or
// rethrows its exception.
template <class T> T block_on(awaitable<T> main) {
  boost::asio::io_context ctx;
  std::exception_ptr failure;
  std::optional<std::conditional_t<std::is_void_v<T>, int, T>> result;
  if constexpr (std::is_void_v<T>) {
    boost::asio::co_spawn(ctx, std::move(main), [&](std::exception_ptr e) {
      failure = e;
      result.emplace(0);
    });
  } else {
    boost::asio::co_spawn(ctx, std::move(main), [&](std::exception_ptr e, T value) {
      failure = e;
      if (!e) result.emplace(std::move(value));
    });
  }
  ctx.run();
  if (failure) std::rethrow_exception(failure);
  if constexpr (!std::is_void_v<T>) return std::move(*result);
}

// asyncio.sleep(): suspends the calling coroutine, not the thread.
inline awaitable<void> sleep(duration d) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor, d);
  co_await timer.async_wait(boost::asio::use_awaitable);
}

namespace detail {
// What the awaitables of one gather() share: results by index, the first exception,
// and a timer that the last one to finish cancels to wake the gathering coroutine.
template <class R> struct gather_state {
  explicit gather_state(boost::asio::any_io_executor ex, std::size_t n)
      : results(n), remaining(n), done(ex, boost::asio::steady_timer::time_point::max()) {}
  std::mutex mutex;
  std::vector<std::optional<R>> results;
  std::size_t remaining;
  std::exception_ptr first_failure;
  boost::asio::steady_timer done;

  void finished(std::size_t i, std::exception_ptr e, std::optional<R> value) {
    std::lock_guard lock(mutex);
    if (e && !first_failure) first_failure = e;
    if (value) results[i] = std::move(value);
    if (--remaining == 0) done.cancel();
  }
};

template <class R, class T>
awaitable<std::vector<std::optional<R>>> gather_all(std::vector<awaitable<T>> items) {
  auto ex = co_await boost::asio::this_coro::executor;
  auto state = std::make_shared<gather_state<R>>(ex, items.size());
  for (std::size_t i = 0; i < items.size(); ++i) {
    if constexpr (std::is_void_v<T>) {
      boost::asio::co_spawn(ex, std::move(items[i]), [state, i](std::exception_ptr e) {
        state->finished(i, e, R{});
      });
    } else {
      boost::asio::co_spawn(ex, std::move(items[i]), [state, i](std::exception_ptr e, T value) {
        state->finished(i, e, e ? std::nullopt : std::optional<R>(std::move(value)));
      });
    }
  }
  bool pending;
  {
    std::lock_guard lock(state->mutex);
    pending = state->remaining != 0;
  }
  if (pending) {
    boost::system::error_code ec;
    co_await state->done.async_wait(
        boost::asio::redirect_error(boost::asio::use_awaitable, ec));
  }
  if (state->first_failure) std::rethrow_exception(state->first_failure);
  co_return std::move(state->results);
}
} // namespace detail

// asyncio.gather(): runs every awaitable concurrently on the caller's executor and
// returns their results in input order. When some throw, the first exception is
// rethrown once all have ended.
template <class T> awaitable<std::vector<T>> gather(std::vector<awaitable<T>> items) {
  auto slots = co_await detail::gather_all<T>(std::move(items));
  std::vector<T> results;
  results.reserve(slots.size());
  for (auto& slot : slots) results.push_back(std::move(*slot));
  co_return results;
}

inline awaitable<void> gather(std::vector<awaitable<void>> items) {
  co_await detail::gather_all<char>(std::move(items));
}

} // namespace coproc
