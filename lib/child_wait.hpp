// lib/child_wait.hpp — pieces of a child's timed wait that detail::child (lib/child.cpp)
// and a fork server's child (lib/forkserver.cpp) share.
#pragma once

#include <coproc/detail/launch_guard.hpp>

#include <boost/asio/cancellation_state.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <utility>

namespace coproc::detail {

// Whichever comes first, `event` (a deferred operation) or the timer: true for the event.
// Native operations in a parallel_group rather than `||` of coroutines: on an io_context
// run by several threads, `||` emits its cancellation into the losing coroutine while that
// coroutine may be running on another thread; a group's operations take it on any thread.
// A cancellation of the awaiting coroutine ends both: the caller checks for it.
template <class Event>
boost::asio::awaitable<bool> event_or_timer(Event event, boost::asio::steady_timer& timer) {
  auto group = boost::asio::experimental::make_parallel_group(
      std::move(event), timer.async_wait(boost::asio::deferred));
  auto done = co_await completed_after_launch(
      group.async_wait(boost::asio::experimental::wait_for_one(), boost::asio::deferred),
      boost::asio::use_awaitable);
  co_return std::get<0>(done)[0] == 0;
}

inline void throw_if_cancelled(const boost::asio::cancellation_state& state) {
  if (state.cancelled() != boost::asio::cancellation_type::none)
    throw boost::system::system_error(boost::asio::error::operation_aborted);
}

} // namespace coproc::detail
