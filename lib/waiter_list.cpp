// detail::waiter_list (coproc/detail/pool_state.hpp): the parked waiters and their
// timers, out of line so the pool's headers need no steady_timer.
#include <coproc/detail/pool_state.hpp>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <atomic>

namespace coproc::detail {

struct waiter_list::waiter {
  // (The handler is move-constructed: Asio 1.81's any_completion_handler move
  // assignment recurses without end.)
  waiter(boost::asio::any_io_executor ex, boost::asio::cancellation_slot slot,
         boost::asio::any_completion_handler<void(boost::system::error_code)> handler)
      : ex(std::move(ex)), slot(slot), handler(std::move(handler)) {}
  const boost::asio::any_io_executor ex;
  boost::asio::cancellation_slot slot;
  boost::asio::any_completion_handler<void(boost::system::error_code)> handler;
  std::optional<boost::asio::steady_timer> timer;
  std::atomic<bool> cancelled{false};
};

// Installed in the waiter's cancellation slot while it is parked.
class waiter_list::cancel_waiter {
public:
  cancel_waiter(waiter_list& list, std::mutex& mutex, std::shared_ptr<waiter> w)
      : list_(list), mutex_(mutex), w_(std::move(w)) {}
  void operator()(boost::asio::cancellation_type type) {
    if (type == boost::asio::cancellation_type::none) return;
    std::lock_guard lock(mutex_);
    w_->cancelled = true; // also when a wake-up is already on its way
    list_.wake(w_);
  }

private:
  waiter_list& list_;
  std::mutex& mutex_;
  std::shared_ptr<waiter> w_;
};

void waiter_list::park_handler(std::mutex& mutex, deadline until, boost::asio::any_io_executor ex,
                               boost::asio::cancellation_slot slot,
                               boost::asio::any_completion_handler<void(boost::system::error_code)> handler) {
  auto w = std::make_shared<waiter>(std::move(ex), slot, std::move(handler));
  waiters_.push_back(w);
  if (w->slot.is_connected()) w->slot.template emplace<cancel_waiter>(*this, mutex, w);
  if (until.is_never()) return;
  w->timer.emplace(w->ex, until.when());
  w->timer->async_wait([this, &mutex, weak = std::weak_ptr<waiter>(w)](boost::system::error_code ec) {
    auto expired = weak.lock();
    if (ec || !expired) return; // woken or cancelled first
    std::lock_guard lock(mutex);
    wake(expired);
  });
}

void waiter_list::notify_all() {
  for (auto& w : waiters_) complete(std::move(w));
  waiters_.clear();
}

// Caller holds the owner's mutex. Nothing if someone else woke it first.
void waiter_list::wake(const std::shared_ptr<waiter>& w) {
  auto it = std::find(waiters_.begin(), waiters_.end(), w);
  if (it == waiters_.end()) return;
  waiters_.erase(it);
  complete(w);
}

// On the waiter's executor, as the timer and the slot want: there nobody else uses them.
void waiter_list::complete(std::shared_ptr<waiter> w) {
  auto ex = w->ex;
  boost::asio::post(ex, [w = std::move(w)]() mutable {
    if (w->timer) w->timer->cancel();
    w->slot.clear();
    boost::system::error_code ec;
    if (w->cancelled) ec = boost::asio::error::operation_aborted;
    auto handler = std::move(w->handler);
    w.reset();
    std::move(handler)(ec);
  });
}

} // namespace coproc::detail
