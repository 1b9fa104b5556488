// lib/child_io.hpp — moving a child's piped streams and bounding the wait, shared by
// run/popen (lib/subprocess.cpp) and pipelines (lib/pipeline.cpp). Home: lib/child_io.cpp.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/child.hpp>
#include <coproc/detail/launch_guard.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/readable_pipe.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/writable_pipe.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace coproc::detail {

// Writes data[offset..] and closes the pipe. offset survives a cancellation, so a
// later call goes on where this one stopped. A child that stops reading gets the
// rest dropped, as in Python. pid names the child in errors.
awaitable<void> write_all(boost::asio::writable_pipe& pipe, std::string_view data,
                          std::size_t& offset, int pid);

// Appends everything up to EOF to into, then closes the pipe. What was read stays in
// into if the read is cancelled.
awaitable<void> read_all(boost::asio::readable_pipe& pipe, std::string& into, int pid);

// Runs the stream operations concurrently; the first failure cancels the rest and is
// rethrown once all have ended. One runs inline, with no coroutine spawned.
awaitable<void> all_of(std::vector<awaitable<void>> ops);

// After a kill: waits for the child; if that wait cannot complete (the io_context is
// going away), the child's destructor leaves it to the background reaper. The caller
// has turned throw_if_cancelled off, or a cancelled caller could not wait at all.
awaitable<void> reap(child& c);

// Awaits op unless the deadline passes first (then op is cancelled and nullopt is
// returned). A cancellation of the caller cancels both and throws.
template <class T> awaitable<std::optional<T>> before_deadline(awaitable<T> op, duration timeout) {
  namespace asio = boost::asio;
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex, timeout);
  auto group = asio::experimental::make_parallel_group(
      asio::co_spawn(ex, std::move(op), asio::deferred), timer.async_wait(asio::deferred));
  auto [order, failure, value, timer_ec] = co_await completed_after_launch(
      std::move(group).async_wait(asio::experimental::wait_for_one(), asio::deferred),
      asio::use_awaitable);
  if (order[0] == 0) {
    if (failure) std::rethrow_exception(failure);
    co_return std::optional<T>(std::move(value));
  }
  if (timer_ec) throw boost::system::system_error(timer_ec); // we were cancelled
  co_return std::nullopt;
}

} // namespace coproc::detail
