// coproc/detail/pool_state.hpp — the parent's side of pool tasks: jobs waiting to be
// sent, and the result states that async_result and result_stream wait on.
//
// Threading: the pool core calls a sink's deliver/fail only with its own mutex held,
// so deliveries to one sink are serialized; the sink's own mutex guards what its
// consumers read.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/deadline.hpp>
#include <coproc/detail/pool_task.hpp>
#include <coproc/errors.hpp>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <variant>
#include <vector>

namespace coproc::detail {

// Coroutines waiting for a condition guarded by their owner's mutex. A waiter is a
// stored completion handler; notify_all, its deadline (a timer of its own executor) and
// a cancellation through the handler's cancellation slot race to wake it, possibly on
// different threads of one io_context, and the first wakes it (the waiter's own mutex
// decides), so it completes exactly once. Only notify_all touches the list; the timer and
// the cancellation touch only the waiter, so they may come after the owner is gone. The
// completion is posted to the waiter's own executor, so a waiter on another io_context is
// woken on its own thread, never inside the notifier's locks. It fails with
// operation_aborted if a cancellation arrived before it ran: a cancelled wait then never
// goes on to take what it waited for (a stream item stays for the next reader).
class waiter_list {
public:
  // Caller holds the owner's mutex, which guards this list; the owner outlives the wait
  // (the awaiting coroutine holds it).
  template <class Handler> void park(deadline until, Handler handler) {
    auto ex = boost::asio::get_associated_executor(handler);
    auto slot = boost::asio::get_associated_cancellation_slot(handler);
    park_handler(until, std::move(ex), slot, std::move(handler));
  }
  // Caller holds the owner's mutex. (Inline: a stream notifies at every item, mostly nobody.)
  void notify_all() {
    if (!waiters_.empty()) notify_waiting();
  }

private:
  struct waiter; // (lib/waiter_list.cpp: its timer keeps steady_timer out of this header)
  class cancel_waiter;

  void park_handler(deadline until, boost::asio::any_io_executor ex,
                    boost::asio::cancellation_slot slot,
                    boost::asio::any_completion_handler<void(boost::system::error_code)> handler);
  static void complete(const std::shared_ptr<waiter>& w, bool cancel);
  void notify_waiting();

  std::vector<std::shared_ptr<waiter>> waiters_; // (woken ones are pruned at the next park)
};

// Waits until ready() (evaluated with `mutex` held) or the deadline. True if ready.
// Cancellation (through the awaiting coroutine's cancellation slot) ends the wait at
// once: use_awaitable then throws system_error with operation_aborted.
// (No co_return inside a lock's scope, and the initiation is named first: g++ 12
// mishandles both in coroutines.)
template <class Ready>
awaitable<bool> wait_for_condition(std::mutex& mutex, waiter_list& waiters, Ready ready,
                                   deadline until) {
  auto settled = [&] { return ready() || until.passed(); }; // with the mutex held
  auto park = [&](auto handler) {
    std::unique_lock lock(mutex);
    if (!settled()) return waiters.park(until, std::move(handler));
    lock.unlock();
    auto ex = boost::asio::get_associated_executor(handler);
    boost::asio::post(ex, boost::asio::append(std::move(handler), boost::system::error_code()));
  };
  for (;;) {
    {
      std::lock_guard lock(mutex);
      if (settled()) break;
    }
    auto parked = boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&,
                                              void(boost::system::error_code)>(
        park, boost::asio::use_awaitable);
    co_await std::move(parked);
  }
  bool is_ready;
  {
    std::lock_guard lock(mutex);
    is_ready = ready();
  }
  co_return is_ready;
}

class pool_sink;

// The pool core as a cancelled result sees it (lib/pool_core.cpp).
class pool_canceller {
public:
  // Unless the sink's submission has ended: ends it with operation_aborted
  // (pool_sink::abort), withdraws its unstarted items and stops its running ones. Whether
  // it had not ended.
  virtual bool cancel(pool_sink& sink) = 0;

protected:
  ~pool_canceller() = default;
};

// Where the results of one submission's items go.
class pool_sink {
public:
  virtual ~pool_sink() = default;
  virtual void deliver(std::size_t index, std::string_view bytes) = 0;
  virtual void fail(std::size_t index, std::exception_ptr error) = 0;
  // Ends the submission at once with operation_aborted unless it has ended: whether it had
  // not. Answers that still come are ignored. (A stream is not cancelled this way: false.)
  virtual bool abort() { return false; }

  // The pool that runs the submission (set when it is submitted).
  std::weak_ptr<pool_canceller> canceller;
};

inline std::exception_ptr operation_aborted_error() {
  return std::make_exception_ptr(
      boost::system::system_error(boost::asio::error::operation_aborted));
}

// What travels with every item of a submission besides its arguments.
struct pool_callable_info {
  std::intptr_t target = 0;
  std::string state{}; // the callable's state (pool_state), put before every item
  bool coroutine = false;
};
template <class F, class R> pool_callable_info callable_info(const F& f) {
  return {pool_target(f), pool_state(f), is_coroutine_task<R>};
}

// One submission: `count` items, sent in chunks of `chunksize` items.
class pool_job {
public:
  pool_job(pool_trampoline fn, pool_callable_info callable, std::size_t count,
           std::size_t chunksize, std::shared_ptr<pool_sink> sink)
      : trampoline(pool_image_offset(fn)), target(callable.target), count(count),
        chunksize(std::max<std::size_t>(chunksize, 1)), coroutine(callable.coroutine),
        sink(std::move(sink)), state_(std::move(callable.state)) {}
  virtual ~pool_job() = default;
  // Appends the callable's state and the encoded argument(s) of item i.
  void encode_item(std::size_t i, wire::output_buffer& out) const {
    out.append(state_.data(), state_.size());
    encode_args(i, out);
  }

  const std::intptr_t trampoline, target;
  const std::size_t count, chunksize;
  const bool coroutine; // its items are coroutine tasks (pool_options::concurrency)
  const std::shared_ptr<pool_sink> sink;
  std::size_t next = 0;                          // first item not yet sent (the core's)
  std::int64_t timeout_ns = 0;                   // per item, from its start; 0: none
  const std::type_info* callable_type = nullptr; // for messages

protected:
  virtual void encode_args(std::size_t i, wire::output_buffer& out) const = 0;

private:
  const std::string state_;
};

// map / imap / starmap: the items, copied at submission and encoded as they are sent
// (a starmap tuple as its parts).
template <class T, bool Parts = false> class items_job final : public pool_job {
public:
  items_job(pool_trampoline fn, pool_callable_info callable, std::vector<T> items,
            std::size_t chunksize, std::shared_ptr<pool_sink> sink)
      : pool_job(fn, std::move(callable), items.size(), chunksize, std::move(sink)),
        items_(std::move(items)) {}

private:
  void encode_args(std::size_t i, wire::output_buffer& out) const override {
    if constexpr (Parts) encode_tuple_parts(out, items_[i]);
    else wire::encode_into(out, items_[i]);
  }

  std::vector<T> items_;
};

// The outcome of one value: what async_result::get returns or throws.
template <class T> class result_state : public pool_sink {
public:
  using value_type = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

  void deliver(std::size_t, std::string_view bytes) override {
    if constexpr (std::is_void_v<T>) {
      (void)bytes;
      finish(std::monostate{}, nullptr);
    } else {
      try {
        finish(wire::decode<T>(bytes), nullptr);
      } catch (...) {
        finish(std::nullopt, std::current_exception());
      }
    }
  }
  void fail(std::size_t, std::exception_ptr error) override { finish(std::nullopt, error); }
  bool abort() override { return finish(std::nullopt, operation_aborted_error()); }

  // async_result::cancel.
  bool cancel() {
    auto core = canceller.lock();
    // (No core: the pool is gone, and it failed every unfinished result first.)
    return core && core->cancel(*this);
  }
  // Calls done() once the result is ready (at once if it is), outside this state's lock.
  void on_ready(std::function<void()> done) {
    {
      std::lock_guard lock(mutex_);
      if (!done_) return on_ready_.push_back(std::move(done));
    }
    done();
  }

  awaitable<bool> wait(deadline until) {
    return wait_for_condition(
        mutex_, waiters_, [this] { return done_; }, until);
  }
  bool ready() const {
    std::lock_guard lock(mutex_);
    return done_;
  }
  bool successful() const {
    std::lock_guard lock(mutex_);
    if (!done_)
      throw std::logic_error("coproc::async_result::successful(): the result is not ready");
    return !error_;
  }
  // Once ready: the value (copied: get() may be awaited more than once) or the error.
  T result() const {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>) return *value_;
  }
  // Once ready, for the only await there will be (pool::apply, map, starmap): the value
  // moved out, so a large one is not copied into fresh pages on its way to the caller.
  T take_result() {
    std::lock_guard lock(mutex_);
    if (error_) std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>) return std::move(*value_);
  }

protected:
  // False if it had finished already.
  bool finish(std::optional<value_type> value, std::exception_ptr error) {
    std::vector<std::function<void()>> ready;
    {
      std::lock_guard lock(mutex_);
      if (done_) return false;
      value_ = std::move(value);
      error_ = error;
      done_ = true;
      waiters_.notify_all();
      ready.swap(on_ready_);
    }
    for (auto& done : ready) done();
    return true;
  }

private:
  mutable std::mutex mutex_;
  waiter_list waiters_;
  std::vector<std::function<void()>> on_ready_;
  bool done_ = false;
  std::optional<value_type> value_;
  std::exception_ptr error_;
};

// map_async: every item's result, or the error of the first failing item (in item
// order) once all items have ended.
template <class R> class map_state final : public result_state<std::vector<R>> {
public:
  explicit map_state(std::size_t n) : values_(n), remaining_(n) {
    if (n == 0) this->finish(std::vector<R>{}, nullptr);
  }
  void deliver(std::size_t index, std::string_view bytes) override {
    try {
      values_[index] = wire::decode<R>(bytes);
    } catch (...) {
      return fail(index, std::current_exception());
    }
    item_done();
  }
  void fail(std::size_t index, std::exception_ptr error) override {
    if (!error_ || index < error_index_) {
      error_ = error;
      error_index_ = index;
    }
    item_done();
  }

private:
  void item_done() {
    if (--remaining_ != 0) return;
    if (error_) this->finish(std::nullopt, error_);
    else this->finish(std::move(values_), nullptr);
  }

  std::vector<R> values_;
  std::size_t remaining_;
  std::exception_ptr error_;
  std::size_t error_index_ = 0;
};

// Whether a stream's items come from a worker as bytes: as_completed's are pushed whole,
// never decoded (coproc/pool.hpp specializes this for them).
template <class R> constexpr bool pool_decoded = true;

// The results of an ordered stream that arrived before the next one to hand out: slot i
// holds item handed + i once it came. A ring of a power-of-two size, since most items
// arrive a few slots ahead (two workers answer alternate chunks) and a deque's index
// arithmetic cost more than the item.
template <class V> class arrival_window {
public:
  bool front_ready() const { return size_ != 0 && slots_[head_].has_value(); }
  void put(std::size_t at, V value) {
    if (at >= slots_.size()) grow(at + 1);
    slots_[(head_ + at) & (slots_.size() - 1)] = std::move(value);
    size_ = std::max(size_, at + 1);
  }
  // front_ready().
  V take_front() {
    V value = std::move(*slots_[head_]);
    slots_[head_].reset();
    head_ = (head_ + 1) & (slots_.size() - 1);
    --size_;
    return value;
  }
  void clear() {
    slots_.clear();
    head_ = size_ = 0;
  }

private:
  void grow(std::size_t need) {
    std::size_t capacity = std::max<std::size_t>(16, slots_.size());
    while (capacity < need) capacity *= 2;
    std::vector<std::optional<V>> grown(capacity);
    for (std::size_t i = 0; i < size_; ++i)
      grown[i] = std::move(slots_[(head_ + i) & (slots_.size() - 1)]);
    slots_ = std::move(grown);
    head_ = 0;
  }

  std::vector<std::optional<V>> slots_; // empty outside [head_, head_ + size_)
  std::size_t head_ = 0, size_ = 0;
};

// imap / imap_unordered: results handed out as they may be.
template <class R> class stream_state final : public pool_sink {
public:
  // n: the number of items; nullopt while unknown (a lazy input, until set_total).
  stream_state(std::optional<std::size_t> n, bool ordered) : ordered_(ordered), total_(n) {}
  void deliver(std::size_t index, std::string_view bytes) override {
    if constexpr (pool_decoded<R>) {
      try {
        put(index, wire::decode<R>(bytes));
      } catch (...) {
        put(index, std::current_exception());
      }
    } else {
      (void)bytes;
      put(index, std::make_exception_ptr(error("coproc::pool: bytes for a pushed stream")));
    }
  }
  void fail(std::size_t index, std::exception_ptr error) override { put(index, error); }
  // An item that is a value already (as_completed).
  void push(std::size_t index, R value) { put(index, std::move(value)); }

  using slot = std::variant<R, std::exception_ptr>;
  enum class poll_result { item, end, empty };

  // Without waiting: the next item into `item`, or that none is left, or that a reader
  // must wait (empty). The path of a reader that keeps up with the workers: no wait, no
  // coroutine of its own.
  poll_result poll(std::optional<slot>& item) {
    std::lock_guard lock(mutex_);
    if (exhausted()) return poll_result::end;
    if (!available()) return poll_result::empty;
    item.emplace(take());
    return poll_result::item;
  }
  // The value of a polled item; rethrows a failed item's error.
  static std::optional<R> unwrap(std::optional<slot>& item) {
    if (!item) return std::nullopt;
    if (item->index() == 1) std::rethrow_exception(std::get<1>(*item));
    return std::move(std::get<0>(*item));
  }

  // nullopt after the last item; rethrows a failed item's error. Several readers may
  // wait at once: each item goes to one of them, and all get nullopt at the end.
  awaitable<std::optional<R>> next() {
    std::optional<slot> item;
    // Woken, another reader may still take the item first: look again under the lock.
    while (poll(item) == poll_result::empty) {
      auto wait = wait_for_condition(
          mutex_, waiters_, [this] { return exhausted() || available(); }, deadline::never());
      co_await std::move(wait);
    }
    co_return unwrap(item);
  }

  // A lazy input ended after n items.
  void set_total(std::size_t n) {
    std::lock_guard lock(mutex_);
    total_ = n;
    waiters_.notify_all();
  }
  // Items handed to readers so far (a reader's refill asks it after each item: no lock).
  std::size_t handed() const { return handed_.load(std::memory_order_acquire); }
  // No reader is left: results that still arrive are dropped.
  void abandon() {
    std::lock_guard lock(mutex_);
    abandoned_.store(true, std::memory_order_relaxed);
    window_.clear();
    arrived_.clear();
  }
  // (Asked as each item is encoded: no lock.)
  bool abandoned() const { return abandoned_.load(std::memory_order_relaxed); }

private:
  void put(std::size_t index, std::variant<R, std::exception_ptr> item) {
    std::lock_guard lock(mutex_);
    if (abandoned_.load(std::memory_order_relaxed)) return;
    if (ordered_) {
      // The window starts at the next item to hand out: it holds what arrived early.
      window_.put(index - handed_.load(std::memory_order_relaxed), std::move(item));
    } else {
      arrived_.push_back(std::move(item));
    }
    waiters_.notify_all();
  }
  bool exhausted() const { return total_ && handed_.load(std::memory_order_relaxed) == *total_; }
  bool available() const {
    if (exhausted()) return false;
    return ordered_ ? window_.front_ready() : !arrived_.empty();
  }
  // Caller holds the mutex; available().
  std::variant<R, std::exception_ptr> take() {
    std::variant<R, std::exception_ptr> item = ordered_ ? window_.take_front() : take_arrived();
    std::size_t handed = handed_.load(std::memory_order_relaxed) + 1;
    handed_.store(handed, std::memory_order_release);
    // Readers still waiting for an item learn that none is left.
    if (handed == total_) waiters_.notify_all();
    return item;
  }

  std::variant<R, std::exception_ptr> take_arrived() {
    auto item = std::move(arrived_.front());
    arrived_.pop_front();
    return item;
  }

  mutable std::mutex mutex_;
  waiter_list waiters_;
  const bool ordered_;
  std::optional<std::size_t> total_;
  std::atomic<std::size_t> handed_{0}; // written under mutex_; handed() reads it without
  std::atomic<bool> abandoned_{false}; // written under mutex_; abandoned() reads it without
  arrival_window<std::variant<R, std::exception_ptr>> window_; // ordered
  std::deque<std::variant<R, std::exception_ptr>> arrived_;    // unordered
};

// Where a lazy imap's items come from: pulled as readers take results, so that at most
// pool_options::buffersize items are in flight.
class stream_feeder {
public:
  virtual ~stream_feeder() = default;
  // A reader took a result (or gave up waiting) and `handed` are handed out now: pulls
  // and submits what fits. (Inline: most calls find no room for a whole step yet.)
  void taken(std::size_t handed) {
    if (handed >= refill_at_.load(std::memory_order_acquire)) refill();
  }
  // The last result_stream handle is gone: pull nothing more, withdraw what is unsent.
  virtual void stop() noexcept = 0;

protected:
  // Pulls and submits what fits now, then calls room_at.
  virtual void refill() = 0;
  // The next refill finds room once this many results are handed out.
  void room_at(std::size_t handed) { refill_at_.store(handed, std::memory_order_release); }

private:
  std::atomic<std::size_t> refill_at_{0};
};

// The items of one refill of a lazy imap: indices from `base` in the stream. Once the
// stream is abandoned, items not sent yet fail instead of being sent (withdrawn).
template <class T, class R> class stream_chunk_job final : public pool_job {
public:
  stream_chunk_job(pool_trampoline fn, pool_callable_info callable, std::vector<T> items,
                   std::size_t chunksize, std::shared_ptr<stream_state<R>> stream, std::size_t base)
      : pool_job(fn, std::move(callable), items.size(), chunksize,
                 std::make_shared<offset_sink>(stream, base)),
        stream_(std::move(stream)), items_(std::move(items)) {}

private:
  class offset_sink final : public pool_sink {
  public:
    offset_sink(std::shared_ptr<pool_sink> to, std::size_t base)
        : to_(std::move(to)), base_(base) {}
    void deliver(std::size_t index, std::string_view bytes) override {
      to_->deliver(base_ + index, bytes);
    }
    void fail(std::size_t index, std::exception_ptr error) override {
      to_->fail(base_ + index, error);
    }

  private:
    std::shared_ptr<pool_sink> to_;
    std::size_t base_;
  };

  void encode_args(std::size_t i, wire::output_buffer& out) const override {
    if (stream_->abandoned()) throw pool_closed();
    wire::encode_into(out, items_[i]);
  }

  std::shared_ptr<stream_state<R>> stream_;
  std::vector<T> items_;
};

} // namespace coproc::detail
