// coproc/sync.hpp — multiprocessing's Lock, RLock, Semaphore, BoundedSemaphore, Event,
// Condition, Barrier, Value and Array, awaitable.
//
//   coproc::lock l;                                   // before the children start
//   coproc::process p([](coproc::lock l) -> coproc::awaitable<void> {
//     co_await l.acquire();                           // sleeps in this io_context
//     ...
//     l.release();
//   }, l);
//
// Every object is a cheap copyable handle to state in shared memory: one memfd mapping
// and one eventfd per object (detail/shared_block.hpp, lib/sync_block.hpp), made by the
// constructor, inherited by every process forked afterwards, and passed to spawn and
// forkserver children as process arguments (their descriptors travel with the child,
// coproc/detail/travel.hpp; a handle inside another argument does not). Pass handles by
// value to process targets; coroutines of one process may share a handle. They are not
// pool task arguments (no wire encoding: a compile-time error, as for queues).
//
// Waiting never blocks a thread: a waiter sleeps on the object's eventfd in the awaiting
// coroutine's io_context, and whoever changes the object wakes the sleepers of every
// process (one token each). A waiter also looks again every 100 ms by itself, so no wait
// depends on a wake-up that a process killed at the wrong instant never sent; a sleeping
// waiter costs about ten wake-ups a second, not a spin.
//
// Cancellation: an acquire or wait whose coroutine is cancelled (the loser of
// `co_await (l.acquire() || timer)`) takes nothing and throws
// boost::system::system_error(operation_aborted).
//
// ## lock and rlock: owned by a process, safe against kill -9
//
// A lock is held by a process, not by a coroutine or a thread: any coroutine of the holding
// process may release it, another process releasing it is std::logic_error, as is
// releasing a lock nobody holds. An rlock may be acquired again by the process that holds
// it (any of its coroutines) and is free once released as many times.
//
// The lock is one 64-bit word: 0 (free), the holder's identity — (start time << 22) | pid,
// the start time from /proc/<pid>/stat, so a reused pid never passes for the dead holder —
// or a hand-off mark. Taking a free lock is one compare-and-swap, releasing an uncontended
// one one store: no system call.
//
// Holder death: a waiter that finds the lock held by another process opens a pidfd on the
// holder (checked against the identity after the open) and sleeps on it beside the
// eventfd. When the holder exits — a zombie is exited too, its parent need not have reaped
// it — the pidfd wakes the waiter, which swaps the dead identity for its own: the lock
// changes hands within the waiter's wake-up latency, and abandoned() is true in the new
// holder until it releases (an rlock is then held once). Where pidfds are refused, waiters
// look at the holder every 10 ms instead. try_acquire takes over a dead holder's lock too.
//
// Fairness: waiters take a ticket and register it in the lock (32 places). A lock released
// while processes wait is handed off rather than freed: the word becomes a hand-off mark
// naming the oldest registered ticket, which only that waiter may take. So waiters are
// served in the order they came, and a process looping on acquire/release cannot starve
// the others (a running process would otherwise always beat the sleepers it wakes). A
// waiter that times out or is cancelled passes a hand-off made to it on to the next; one
// that does not take its hand-off within 10 ms and whose process died waiting, or within
// 250 ms whatever the reason (its process runs but not its io_context), loses its place,
// and the lock goes to whoever looks next. Waiters beyond the 32 places take only such lapsed
// hand-offs or a free lock. While a hand-off to another waiter is pending, a waiter looks
// again every millisecond on a timer instead of on the eventfd: it must leave the wake-up
// token to the target (epoll does not report an eventfd that a faster process has
// drained meanwhile), and the target normally takes the lock within microseconds.
//
// ## semaphore, bounded_semaphore, event
//
// A semaphore is a 32-bit counter; acquire takes one when it is above 0. Units held by a
// process that dies are gone with it (as in Python). bounded_semaphore: a release above
// the initial value is std::logic_error. An event is a flag; set wakes every waiter.
//
// ## condition
//
// A condition uses a lock or an rlock (its own rlock by default; condition(l) shares l:
// the handle is copied). wait() and notify() need the lock held by this process, else
// std::logic_error. wait() releases the lock completely (an rlock's whole count), sleeps
// until notified, then acquires it again and restores the count, as Python's does; the
// timed wait returns false at the deadline (after re-acquiring). Waiters are served in the
// order they began to wait; notify(n) wakes up to n of them, skipping waiters whose process
// has died. At most 256 waiters at once per condition (std::length_error beyond). A
// cancelled wait re-acquires the lock (that part cannot be cancelled: it may take as long as
// the holder keeps it), then throws operation_aborted; a notification that had reached it
// goes to the next waiter, so none is lost.
//
// ## barrier
//
// parties processes (or coroutines) meet: wait returns a unique index in [0, parties).
// A waiter's timeout, abort() and reset() break it for every waiter of that round, who
// get broken_barrier; a broken barrier stays broken until reset(). A party that dies while
// waiting breaks it too: the other waiters look at the waiting parties' processes every
// 25 ms, and a process killed inside the barrier's own critical section breaks it at the
// next look. A party that dies before it reaches wait() cannot be told from a slow one —
// nothing names the parties in advance — so only a timeout bounds that wait.
//
// ## value<T>, array<T>
//
// T lives in the shared mapping; it must be trivially copyable. load() and store() are
// atomic (std::atomic_ref when T is lock-free, else under a short robust mutex of the
// value's own); integral T also has fetch_add, fetch_sub and compare_exchange (which
// updates `expected` on failure, as std::atomic's does). get_lock() is a lock for
// compound updates, shared by every copy. array<T>::view() is the shared elements
// themselves: concurrent access is the program's to order, e.g. under get_lock().
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/deadline.hpp>
#include <coproc/detail/travel.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace coproc {

class lock;
class rlock;
class semaphore;
class bounded_semaphore;
class event;
class condition;
class barrier;
template <class T> class value;
template <class T> class array;

// Process arguments only: they travel with a spawn or forkserver child (their descriptors
// go with it), and they are not wire-serializable, so no queue, message or pool task
// carries one.
namespace wire::detail {
template <> inline constexpr bool process_argument_only<lock> = true;
template <> inline constexpr bool process_argument_only<rlock> = true;
template <> inline constexpr bool process_argument_only<semaphore> = true;
template <> inline constexpr bool process_argument_only<bounded_semaphore> = true;
template <> inline constexpr bool process_argument_only<event> = true;
template <> inline constexpr bool process_argument_only<condition> = true;
template <> inline constexpr bool process_argument_only<barrier> = true;
template <class T> inline constexpr bool process_argument_only<value<T>> = true;
template <class T> inline constexpr bool process_argument_only<array<T>> = true;
} // namespace wire::detail

namespace detail {

class sync_block;
class process_watch;
class fd_departure;
class fd_arrival;

class lock_core {
public:
  // A lock in a block of its own, or at `state` inside `block` (a value's lock).
  explicit lock_core(bool recursive);
  lock_core(std::shared_ptr<sync_block> block, void* state, bool recursive);
  // On the state of a lock that arrived in its block (no initialization).
  struct adopt_t {};
  lock_core(adopt_t, std::shared_ptr<sync_block> block, bool recursive);
  ~lock_core();
  lock_core(const lock_core&) = delete;
  lock_core& operator=(const lock_core&) = delete;

  static std::size_t state_size() noexcept;
  static awaitable<bool> acquire(std::shared_ptr<lock_core> self, deadline until);
  bool try_acquire();
  void release();
  bool abandoned() const noexcept;
  bool held_here() const noexcept;
  // For condition: releases every level (logic_error unless held here), returns the count.
  unsigned release_all(const char* who);
  // Sets the count of a lock just acquired.
  void restore(unsigned count) noexcept;
  bool recursive() const noexcept { return recursive_; }

  // As a process argument (detail/travel.hpp); one core per block and child.
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<lock_core> arrive(wire::input_archive& ar, fd_arrival& fds);

private:
  struct state;
  enum class outcome { acquired, wait, wait_for_exit, wait_for_handoff };
  outcome attempt(std::uint64_t& ticket, std::shared_ptr<process_watch>& watch,
                  std::int64_t& handoff_at);
  std::uint64_t take_ticket() noexcept;
  bool holds_ticket(std::uint64_t ticket) const noexcept;
  void drop_ticket(std::uint64_t ticket) noexcept;
  std::uint64_t first_ticket() const noexcept;
  void leave(std::uint64_t ticket) noexcept;
  bool lapsed(std::uint64_t ticket, std::int64_t handoff_at) const noexcept;
  bool take(std::uint64_t from, bool abandoned);
  void release_now();
  std::shared_ptr<process_watch> watch(std::uint64_t holder, bool& dead);
  [[noreturn]] void misuse(std::uint64_t owner) const;

  std::shared_ptr<sync_block> block_;
  state* s_;
  bool recursive_;
  std::mutex local_; // rlock: this process's threads change its count one at a time
  std::mutex watches_mutex_;
  std::vector<std::shared_ptr<process_watch>> watches_; // pidfds on recent holders
};

class semaphore_core {
public:
  semaphore_core(unsigned value, std::optional<unsigned> bound, const char* what);
  static awaitable<bool> acquire(std::shared_ptr<semaphore_core> self, deadline until);
  bool try_acquire() noexcept;
  void release();
  unsigned value() const noexcept;
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<semaphore_core> arrive(wire::input_archive& ar, fd_arrival& fds);
  semaphore_core(std::shared_ptr<sync_block> block, std::optional<unsigned> bound);

private:
  std::shared_ptr<sync_block> block_;
  std::atomic<std::uint32_t>* value_;
  std::optional<unsigned> bound_; // a bounded_semaphore's initial value, 0 too
};

class event_core {
public:
  event_core();
  static awaitable<bool> wait(std::shared_ptr<event_core> self, deadline until);
  void set() noexcept;
  void clear() noexcept;
  bool is_set() const noexcept;
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<event_core> arrive(wire::input_archive& ar, fd_arrival& fds);
  explicit event_core(std::shared_ptr<sync_block> block);

private:
  std::shared_ptr<sync_block> block_;
  std::atomic<std::uint32_t>* flag_;
};

class condition_core {
public:
  explicit condition_core(std::shared_ptr<lock_core> lock);
  static awaitable<bool> wait(std::shared_ptr<condition_core> self, deadline until);
  void notify(unsigned n);
  const std::shared_ptr<lock_core>& lock() const noexcept { return lock_; }
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<condition_core> arrive(wire::input_archive& ar, fd_arrival& fds);
  condition_core(std::shared_ptr<lock_core> lock, std::shared_ptr<sync_block> block);

private:
  struct state;
  void check_held(const char* what) const;
  void notify_waiters(unsigned n);
  std::shared_ptr<lock_core> lock_;
  std::shared_ptr<sync_block> block_;
  state* s_;
};

class barrier_core {
public:
  explicit barrier_core(unsigned parties);
  static awaitable<unsigned> wait(std::shared_ptr<barrier_core> self, deadline until);
  void abort();
  void reset();
  bool broken() const;
  unsigned parties() const noexcept { return parties_; }
  unsigned n_waiting() const;
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<barrier_core> arrive(wire::input_archive& ar, fd_arrival& fds);
  barrier_core(std::shared_ptr<sync_block> block, unsigned parties);

private:
  struct state;
  enum class look { tripped, broken, waiting };
  look check(std::uint64_t generation, bool& dead_party);
  void break_locked() noexcept;
  std::uint64_t* arrived() const noexcept;
  unsigned parties_;
  std::shared_ptr<sync_block> block_;
  state* s_;
};

// The storage of a value or an array: `bytes` aligned to `align`, a lock (get_lock) and a
// robust mutex for values whose loads and stores are not lock-free.
class shared_data {
public:
  shared_data(std::size_t bytes, std::size_t align, const char* what);
  void* data() const noexcept { return data_; }
  // As a process argument: coproc::error in the child unless it is storage of `bytes`
  // aligned to `align`, as the child's type expects.
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<shared_data> arrive(wire::input_archive& ar, fd_arrival& fds,
                                             std::size_t bytes, std::size_t align,
                                             const char* what);
  shared_data(std::shared_ptr<sync_block> block, std::shared_ptr<lock_core> lock, std::size_t bytes,
              std::size_t align);
  const std::shared_ptr<lock_core>& lock() const noexcept { return lock_; }
  void lock_data() const;
  void unlock_data() const noexcept;

private:
  // Where the mutex and the data lie in the block's state.
  static std::size_t mutex_at() noexcept;
  static std::size_t data_at(std::size_t align) noexcept;
  std::shared_ptr<sync_block> block_;
  void* mutex_;
  void* data_;
  std::size_t bytes_, align_;
  std::shared_ptr<lock_core> lock_;
};

} // namespace detail

class lock {
public:
  lock() : core_(std::make_shared<detail::lock_core>(false)) {}
  // Waits until this process holds it.
  awaitable<void> acquire() { return acquire_until(core_); }
  // False if it is still held by another process (or by this one) after timeout.
  awaitable<bool> acquire(duration timeout) {
    return detail::lock_core::acquire(core_, detail::deadline::after(timeout));
  }
  bool try_acquire() { return core_->try_acquire(); }
  // std::logic_error if this process does not hold it.
  void release() { core_->release(); }
  // True while this process holds it after taking it from a holder that died.
  bool abandoned() const noexcept { return core_->abandoned(); }

private:
  friend class condition;
  template <class T> friend class value;
  template <class T> friend class array;
  explicit lock(std::shared_ptr<detail::lock_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static lock arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return lock(detail::lock_core::arrive(ar, fds));
  }
  static awaitable<void> acquire_until(std::shared_ptr<detail::lock_core> core) {
    if (core->try_acquire()) co_return; // uncontended: no second coroutine frame
    auto op = detail::lock_core::acquire(std::move(core), detail::deadline::never());
    co_await std::move(op);
  }
  std::shared_ptr<detail::lock_core> core_;
};

class rlock {
public:
  rlock() : core_(std::make_shared<detail::lock_core>(true)) {}
  // Immediate when this process holds it already (one more level).
  awaitable<void> acquire() { return acquire_until(core_); }
  awaitable<bool> acquire(duration timeout) {
    return detail::lock_core::acquire(core_, detail::deadline::after(timeout));
  }
  bool try_acquire() { return core_->try_acquire(); }
  // One level; std::logic_error if this process does not hold it.
  void release() { core_->release(); }
  bool abandoned() const noexcept { return core_->abandoned(); }

private:
  friend class condition;
  explicit rlock(std::shared_ptr<detail::lock_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static rlock arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return rlock(detail::lock_core::arrive(ar, fds));
  }
  static awaitable<void> acquire_until(std::shared_ptr<detail::lock_core> core) {
    if (core->try_acquire()) co_return; // uncontended: no second coroutine frame
    auto op = detail::lock_core::acquire(std::move(core), detail::deadline::never());
    co_await std::move(op);
  }
  std::shared_ptr<detail::lock_core> core_;
};

class semaphore {
public:
  explicit semaphore(unsigned value = 1)
      : core_(std::make_shared<detail::semaphore_core>(value, std::nullopt, "coproc::semaphore")) {}
  awaitable<void> acquire() { return acquire_until(core_); }
  // False if no unit became free before timeout.
  awaitable<bool> acquire(duration timeout) {
    return detail::semaphore_core::acquire(core_, detail::deadline::after(timeout));
  }
  bool try_acquire() noexcept { return core_->try_acquire(); }
  void release() { core_->release(); }
  // A snapshot: other processes may change it at once.
  unsigned value() const noexcept { return core_->value(); }

protected:
  explicit semaphore(std::shared_ptr<detail::semaphore_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static semaphore arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return semaphore(detail::semaphore_core::arrive(ar, fds));
  }
  static awaitable<void> acquire_until(std::shared_ptr<detail::semaphore_core> core) {
    if (core->try_acquire()) co_return;
    auto op = detail::semaphore_core::acquire(std::move(core), detail::deadline::never());
    co_await std::move(op);
  }
  std::shared_ptr<detail::semaphore_core> core_;
};

// release() above the initial value: std::logic_error.
class bounded_semaphore : public semaphore {
public:
  explicit bounded_semaphore(unsigned value = 1)
      : semaphore(
            std::make_shared<detail::semaphore_core>(value, value, "coproc::bounded_semaphore")) {}

private:
  friend struct detail::travel_access;
  explicit bounded_semaphore(std::shared_ptr<detail::semaphore_core> core)
      : semaphore(std::move(core)) {}
  static bounded_semaphore arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return bounded_semaphore(detail::semaphore_core::arrive(ar, fds));
  }
};

class event {
public:
  event() : core_(std::make_shared<detail::event_core>()) {}
  void set() noexcept { core_->set(); }
  void clear() noexcept { core_->clear(); }
  bool is_set() const noexcept { return core_->is_set(); }
  awaitable<void> wait() { return wait_until(core_); }
  // The flag at the end: false if it was not set before timeout.
  awaitable<bool> wait(duration timeout) {
    return detail::event_core::wait(core_, detail::deadline::after(timeout));
  }

private:
  explicit event(std::shared_ptr<detail::event_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static event arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return event(detail::event_core::arrive(ar, fds));
  }
  static awaitable<void> wait_until(std::shared_ptr<detail::event_core> core) {
    if (core->is_set()) co_return;
    auto op = detail::event_core::wait(std::move(core), detail::deadline::never());
    co_await std::move(op);
  }
  std::shared_ptr<detail::event_core> core_;
};

class condition {
public:
  // With an rlock of its own.
  condition() : condition(rlock()) {}
  explicit condition(lock l)
      : core_(std::make_shared<detail::condition_core>(std::move(l.core_))) {}
  explicit condition(rlock l)
      : core_(std::make_shared<detail::condition_core>(std::move(l.core_))) {}

  // The condition's lock.
  awaitable<void> acquire() { return lock::acquire_until(core_->lock()); }
  awaitable<bool> acquire(duration timeout) {
    return detail::lock_core::acquire(core_->lock(), detail::deadline::after(timeout));
  }
  bool try_acquire() { return core_->lock()->try_acquire(); }
  void release() { core_->lock()->release(); }

  // Needs the lock held by this process (std::logic_error otherwise); returns with it held.
  awaitable<void> wait() { return wait_until(core_); }
  // False if not notified before timeout.
  awaitable<bool> wait(duration timeout) {
    return detail::condition_core::wait(core_, detail::deadline::after(timeout));
  }
  // Waits until pred() (called with the lock held) is true or the timeout passes; returns
  // pred()'s last result. Wake-ups in between may be spurious.
  template <class P> awaitable<bool> wait_for(P pred, std::optional<duration> timeout = {}) {
    return wait_for_until(core_, std::move(pred),
                          timeout ? detail::deadline::after(*timeout) : detail::deadline::never());
  }
  // Wake up to n waiters (std::logic_error unless this process holds the lock).
  void notify(unsigned n = 1) { core_->notify(n); }
  void notify_all() { core_->notify(~0u); }

private:
  explicit condition(std::shared_ptr<detail::condition_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static condition arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return condition(detail::condition_core::arrive(ar, fds));
  }
  static awaitable<void> wait_until(std::shared_ptr<detail::condition_core> core) {
    auto op = detail::condition_core::wait(std::move(core), detail::deadline::never());
    co_await std::move(op);
  }
  template <class P>
  static awaitable<bool> wait_for_until(std::shared_ptr<detail::condition_core> core, P pred,
                                        detail::deadline until) {
    bool result = pred();
    while (!result && !until.passed()) {
      auto op = detail::condition_core::wait(core, until);
      (void)co_await std::move(op);
      result = pred();
    }
    co_return result;
  }
  std::shared_ptr<detail::condition_core> core_;
};

class barrier {
public:
  // std::invalid_argument for 0 parties.
  explicit barrier(unsigned parties) : core_(std::make_shared<detail::barrier_core>(parties)) {}
  // Waits until `parties` waiters are here; returns this waiter's index (the last to
  // arrive gets parties - 1). broken_barrier if the barrier is or becomes broken, also
  // when this wait's timeout passes (which breaks it for the others too).
  awaitable<unsigned> wait(std::optional<duration> timeout = {}) {
    return detail::barrier_core::wait(core_, timeout ? detail::deadline::after(*timeout)
                                                     : detail::deadline::never());
  }
  // Breaks it: current and later waiters get broken_barrier until reset().
  void abort() { core_->abort(); }
  // Back to empty and unbroken; the current waiters get broken_barrier.
  void reset() { core_->reset(); }
  bool broken() const { return core_->broken(); }
  unsigned parties() const noexcept { return core_->parties(); }
  unsigned n_waiting() const { return core_->n_waiting(); }

private:
  explicit barrier(std::shared_ptr<detail::barrier_core> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static barrier arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return barrier(detail::barrier_core::arrive(ar, fds));
  }
  std::shared_ptr<detail::barrier_core> core_;
};

template <class T> class value {
  static_assert(
      std::is_trivially_copyable_v<T>,
      "coproc::value<T>: T must be trivially copyable: its bytes live in shared memory that "
      "other processes read, where a pointer or an owned resource would mean nothing");
  static constexpr bool lock_free = std::atomic_ref<T>::is_always_lock_free;

public:
  explicit value(T init = {})
      : core_(std::make_shared<detail::shared_data>(
            sizeof(T), std::atomic_ref<T>::required_alignment, "coproc::value")) {
    std::memcpy(core_->data(), &init, sizeof(T));
  }

  T load() const {
    if constexpr (lock_free) {
      return std::atomic_ref<T>(*ptr()).load();
    } else {
      core_->lock_data();
      T out;
      std::memcpy(&out, core_->data(), sizeof(T));
      core_->unlock_data();
      return out;
    }
  }
  void store(T v) {
    if constexpr (lock_free) {
      std::atomic_ref<T>(*ptr()).store(v);
    } else {
      core_->lock_data();
      std::memcpy(core_->data(), &v, sizeof(T));
      core_->unlock_data();
    }
  }
  T fetch_add(T d)
    requires std::is_integral_v<T>
  {
    return std::atomic_ref<T>(*ptr()).fetch_add(d);
  }
  T fetch_sub(T d)
    requires std::is_integral_v<T>
  {
    return std::atomic_ref<T>(*ptr()).fetch_sub(d);
  }
  // As std::atomic: true and desired stored if the value was expected; else false and
  // expected set to the value.
  bool compare_exchange(T& expected, T desired)
    requires std::is_integral_v<T>
  {
    return std::atomic_ref<T>(*ptr()).compare_exchange_strong(expected, desired);
  }
  // For compound updates (load, compute, store); every copy shares it.
  coproc::lock get_lock() const { return coproc::lock(core_->lock()); }

private:
  explicit value(std::shared_ptr<detail::shared_data> core) : core_(std::move(core)) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { core_->travel(ar, fds); }
  static value arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return value(detail::shared_data::arrive(
        ar, fds, sizeof(T), std::atomic_ref<T>::required_alignment, "coproc::value"));
  }
  T* ptr() const noexcept { return static_cast<T*>(core_->data()); }
  std::shared_ptr<detail::shared_data> core_;
};

template <class T> class array {
  static_assert(
      std::is_trivially_copyable_v<T>,
      "coproc::array<T>: T must be trivially copyable: its bytes live in shared memory that "
      "other processes read, where a pointer or an owned resource would mean nothing");

public:
  explicit array(std::size_t n, T init = {})
      : core_(std::make_shared<detail::shared_data>(n * sizeof(T), alignof(T), "coproc::array")),
        size_(n) {
    for (std::size_t i = 0; i < n; ++i)
      std::memcpy(static_cast<T*>(core_->data()) + i, &init, sizeof(T));
  }
  // The shared elements (the same memory in every process).
  std::span<T> view() const noexcept { return {static_cast<T*>(core_->data()), size_}; }
  std::size_t size() const noexcept { return size_; }
  coproc::lock get_lock() const { return coproc::lock(core_->lock()); }

private:
  array(std::shared_ptr<detail::shared_data> core, std::size_t n)
      : core_(std::move(core)), size_(n) {}
  friend struct detail::travel_access;
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const {
    const std::uint64_t n = size_;
    ar(n);
    core_->travel(ar, fds);
  }
  static array arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    std::uint64_t n = 0;
    ar(n);
    if (n > SIZE_MAX / sizeof(T)) throw coproc::error("coproc::array: a malformed argument");
    const auto count = static_cast<std::size_t>(n);
    auto core =
        detail::shared_data::arrive(ar, fds, count * sizeof(T), alignof(T), "coproc::array");
    return array(std::move(core), count);
  }
  std::shared_ptr<detail::shared_data> core_;
  std::size_t size_;
};

} // namespace coproc
