// coproc/detail/launch_guard.hpp — parallel_group, safe on an io_context run by several
// threads.
//
// Asio 1.26's parallel_group (and so its `||` and `&&` operators) goes on after it has
// started its operations: it registers its cancellation handler in the awaiting
// coroutine's cancellation slot and reads the range of operations. On an io_context run
// by several threads the operations may all complete on other threads meanwhile and
// resume the coroutine there, which then uses that slot for its next operation or frees
// the range with its frame: a data race, a use after free (docs/platform.md).
// completed_after_launch(op, token) runs op with a handler that waits until op's
// initiation has returned; a completion inside the initiation, on the initiating thread,
// goes through at once, as before.
#pragma once

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>

#include <memory>
#include <mutex>
#include <utility>

namespace coproc::detail {

template <class Op, class Token> auto completed_after_launch(Op op, Token&& token) {
  using signature = typename boost::asio::completion_signature_of<Op>::type;
  return boost::asio::async_initiate<Token, signature>(
      [](auto handler, Op op) {
        // Recursive: a completion inline in the initiation, on this thread, passes.
        auto launching = std::make_shared<std::recursive_mutex>();
        std::unique_lock held(*launching);
        auto slot = boost::asio::get_associated_cancellation_slot(handler);
        auto ex = boost::asio::get_associated_executor(handler);
        std::move(op)(boost::asio::bind_cancellation_slot(
            slot, boost::asio::bind_executor(
                      ex, [launching, handler = std::move(handler)](auto&&... results) mutable {
                        { std::lock_guard launched(*launching); }
                        std::move(handler)(std::forward<decltype(results)>(results)...);
                      })));
      },
      token, std::move(op));
}

} // namespace coproc::detail
