// Shared by the tests that use one coproc object from several threads of one io_context.
#pragma once

#include <coproc/awaitable.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <thread>
#include <utility>
#include <vector>

namespace coproc_test {

inline constexpr int io_threads = 4;

// Runs main on an io_context served by io_threads threads until no work is left;
// rethrows what main threw.
inline void run_threaded(coproc::awaitable<void> main) {
  boost::asio::io_context ctx(io_threads);
  std::exception_ptr failure;
  boost::asio::co_spawn(ctx, std::move(main), [&](std::exception_ptr e) { failure = e; });
  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads; ++i) threads.emplace_back([&] { ctx.run(); });
  ctx.run();
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

// op on a strand of its own (of the caller's io_context). Asio's `a || b` emits the
// loser's cancellation on the winner's thread: the losing coroutine must be on one thread
// or a strand, as Asio requires for every cancellation.
template <class T> coproc::awaitable<T> on_strand(coproc::awaitable<T> op) {
  auto strand = boost::asio::make_strand(co_await boost::asio::this_coro::executor);
  co_return co_await boost::asio::co_spawn(strand, std::move(op), boost::asio::use_awaitable);
}

} // namespace coproc_test
