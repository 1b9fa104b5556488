// coproc/run.hpp — asyncio-style helpers to run and combine awaitables: block_on
// (asyncio.run), sleep, gather.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/launch_guard.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstddef>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

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
template <class T>
using spawned_op =
    decltype(boost::asio::co_spawn(std::declval<boost::asio::any_io_executor>(),
                                   std::declval<awaitable<T>>(), boost::asio::deferred));

template <class T>
using gathered = std::tuple<std::vector<std::size_t>, std::vector<std::exception_ptr>,
                            std::conditional_t<std::is_void_v<T>, int, std::vector<T>>>;

// Runs every item as its own coroutine and waits for all of them. Cancelling the
// gathering coroutine cancels every item (as asyncio.gather does). Returns the order in
// which the items ended, their errors and their values, by item.
template <class T> awaitable<gathered<T>> gather_all(std::vector<awaitable<T>> items) {
  auto ex = co_await boost::asio::this_coro::executor;
  std::vector<spawned_op<T>> ops;
  ops.reserve(items.size());
  for (auto& item : items)
    ops.push_back(boost::asio::co_spawn(ex, std::move(item), boost::asio::deferred));
  auto group = boost::asio::experimental::make_parallel_group(std::move(ops));
  if constexpr (std::is_void_v<T>) {
    auto [order, errors] = co_await completed_after_launch(
        group.async_wait(boost::asio::experimental::wait_for_all(), boost::asio::deferred),
        boost::asio::use_awaitable);
    co_return gathered<T>(std::move(order), std::move(errors), 0);
  } else {
    auto [order, errors, values] = co_await completed_after_launch(
        group.async_wait(boost::asio::experimental::wait_for_all(), boost::asio::deferred),
        boost::asio::use_awaitable);
    co_return gathered<T>(std::move(order), std::move(errors), std::move(values));
  }
}

inline void rethrow_first(const std::vector<std::size_t>& order,
                          const std::vector<std::exception_ptr>& errors) {
  for (auto i : order)
    if (errors[i]) std::rethrow_exception(errors[i]);
}
} // namespace detail

// asyncio.gather(): runs every awaitable concurrently on the caller's executor and
// returns their results in input order. When some throw, the exception of the first
// to fail is rethrown once all have ended. Cancelling the caller cancels them all.
// T must be default constructible (as for boost::asio::co_spawn).
template <class T> awaitable<std::vector<T>> gather(std::vector<awaitable<T>> items) {
  if (items.empty()) co_return std::vector<T>{};
  auto [order, errors, values] = co_await detail::gather_all(std::move(items));
  detail::rethrow_first(order, errors);
  co_return std::move(values);
}

inline awaitable<void> gather(std::vector<awaitable<void>> items) {
  if (items.empty()) co_return;
  auto [order, errors, unused] = co_await detail::gather_all(std::move(items));
  detail::rethrow_first(order, errors);
}

} // namespace coproc
