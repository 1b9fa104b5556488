// detail::waiter_list (coproc/detail/pool_state.hpp): the parked waiters and their
// timers, out of line so the pool's headers need no steady_timer.
#include <coproc/detail/pool_state.hpp>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>

namespace coproc::detail {

// A parked waiter. Its notifier, its timer and its cancellation may come on different
// threads at once (an io_context run by several threads): its own mutex decides which
// comes first, and none of them touches the owner's list or mutex, which may be gone once
// the waiter has completed.
struct waiter_list::waiter {
  // (The handler is move-constructed: Asio 1.81's any_completion_handler move
  // assignment recurses without end.)
  waiter(boost::asio::any_io_executor ex,
         boost::asio::any_completion_handler<void(boost::system::error_code)> handler)
      : ex(std::move(ex)), handler(std::move(handler)) {}
  const boost::asio::any_io_executor ex;
  std::mutex mutex;
  boost::asio::any_completion_handler<void(boost::system::error_code)> handler;
  std::optional<boost::asio::steady_timer> timer;
  bool cancelled = false;
  std::atomic<bool> woken{false}; // written under mutex; read without it to prune the list
};

// Installed in the waiter's cancellation slot while it is parked, and left there once it
// completed (as Asio's own operations leave theirs): a late cancellation only marks the
// finished waiter. It holds nothing of the owner.
class waiter_list::cancel_waiter {
public:
  explicit cancel_waiter(std::shared_ptr<waiter> w) : w_(std::move(w)) {}
  void operator()(boost::asio::cancellation_type type) {
    if (type == boost::asio::cancellation_type::none) return;
    complete(w_, true);
  }

private:
  std::shared_ptr<waiter> w_;
};

void waiter_list::park_handler(
    deadline until, boost::asio::any_io_executor ex, boost::asio::cancellation_slot slot,
    boost::asio::any_completion_handler<void(boost::system::error_code)> handler) {
  std::erase_if(waiters_, [](const auto& w) { return w->woken.load(std::memory_order_acquire); });
  auto w = std::make_shared<waiter>(std::move(ex), std::move(handler));
  {
    // Before the slot is set: from then on a cancellation may complete w on any thread.
    std::lock_guard lock(w->mutex);
    if (!until.is_never()) {
      w->timer.emplace(w->ex, until.when());
      w->timer->async_wait([weak = std::weak_ptr<waiter>(w)](boost::system::error_code ec) {
        if (auto expired = weak.lock(); expired && !ec) complete(expired, false);
      });
    }
  }
  waiters_.push_back(w);
  if (slot.is_connected()) slot.template emplace<cancel_waiter>(w);
}

void waiter_list::notify_waiting() {
  for (auto& w : waiters_) complete(w, false);
  waiters_.clear();
}

// The first of the notifier, the timer and a cancellation takes the handler; the others
// find it woken. The completion runs on the waiter's executor, never inside the
// notifier's locks, and fails with operation_aborted if a cancellation arrived before it
// ran: a cancelled wait then never goes on to take what it waited for.
void waiter_list::complete(const std::shared_ptr<waiter>& w, bool cancel) {
  std::lock_guard lock(w->mutex);
  if (cancel) w->cancelled = true;
  if (w->woken.load(std::memory_order_relaxed)) return;
  w->woken.store(true, std::memory_order_release);
  if (w->timer) w->timer->cancel();
  boost::asio::post(w->ex, [w] {
    boost::system::error_code ec;
    std::unique_lock lock(w->mutex);
    if (w->cancelled) ec = boost::asio::error::operation_aborted;
    auto handler = std::move(w->handler);
    lock.unlock();
    std::move(handler)(ec);
  });
}

} // namespace coproc::detail
