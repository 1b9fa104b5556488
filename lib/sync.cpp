// The synchronization objects of coproc/sync.hpp other than the lock (lib/sync_lock.cpp).
#include <coproc/errors.hpp>
#include <coproc/sync.hpp>

#include <coproc/detail/travel.hpp>
#include <coproc/wire.hpp>

#include "sync_block.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <pthread.h>

#include <algorithm>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace coproc::detail {

namespace {
constexpr std::chrono::milliseconds recheck_interval{100};
// How often a barrier's waiters look whether a waiting party died.
constexpr std::chrono::milliseconds party_check_interval{25};

std::size_t round_up(std::size_t n, std::size_t align) { return (n + align - 1) / align * align; }
} // namespace

// ---- semaphore

semaphore_core::semaphore_core(unsigned value, std::optional<unsigned> bound, const char* what)
    : block_(std::make_shared<sync_block>(sizeof(std::atomic<std::uint32_t>),
                                          alignof(std::atomic<std::uint32_t>), what)),
      value_(new(block_->state()) std::atomic<std::uint32_t>(value)), bound_(bound) {}

semaphore_core::semaphore_core(std::shared_ptr<sync_block> block, std::optional<unsigned> bound)
    : block_(std::move(block)), value_(static_cast<std::atomic<std::uint32_t>*>(block_->state())),
      bound_(bound) {}

void semaphore_core::travel(wire::output_archive& ar, fd_departure& fds) const {
  const bool bounded = bound_.has_value();
  const std::uint32_t bound = bound_.value_or(0);
  ar(bounded, bound);
  block_->travel(ar, fds);
}

std::shared_ptr<semaphore_core> semaphore_core::arrive(wire::input_archive& ar, fd_arrival& fds) {
  bool bounded = false;
  std::uint32_t bound = 0;
  ar(bounded, bound);
  std::uint32_t key = 0;
  auto block = sync_block::arrive(ar, fds, sizeof(std::atomic<std::uint32_t>),
                                  bounded ? "coproc::bounded_semaphore" : "coproc::semaphore", key);
  return fds.object<semaphore_core>(key, [&] {
    return std::make_shared<semaphore_core>(
        std::move(block), bounded ? std::optional<unsigned>(bound) : std::nullopt);
  });
}

bool semaphore_core::try_acquire() noexcept {
  auto v = value_->load(std::memory_order_seq_cst);
  while (v != 0)
    if (value_->compare_exchange_weak(v, v - 1, std::memory_order_acquire)) return true;
  return false;
}

awaitable<bool> semaphore_core::acquire(std::shared_ptr<semaphore_core> self, deadline until) {
  if (self->try_acquire()) co_return true;
  sync_block::sleeper counted(*self->block_);
  for (;;) {
    if (self->try_acquire()) co_return true;
    if (until.passed()) co_return false;
    auto op = self->block_->sleep(until, recheck_interval);
    (void)co_await std::move(op);
  }
}

void semaphore_core::release() {
  auto v = value_->load(std::memory_order_relaxed);
  for (;;) {
    if (bound_ && v >= *bound_)
      throw std::logic_error(std::string(block_->what()) + ": release above the initial value " +
                             std::to_string(*bound_));
    if (v == std::numeric_limits<std::uint32_t>::max())
      throw std::overflow_error(std::string(block_->what()) + ": the value would pass 2^32 - 1");
    if (value_->compare_exchange_weak(v, v + 1, std::memory_order_release)) break;
  }
  block_->wake();
}

unsigned semaphore_core::value() const noexcept { return value_->load(std::memory_order_acquire); }

// ---- event

event_core::event_core()
    : block_(std::make_shared<sync_block>(sizeof(std::atomic<std::uint32_t>),
                                          alignof(std::atomic<std::uint32_t>), "coproc::event")),
      flag_(new(block_->state()) std::atomic<std::uint32_t>(0)) {}

event_core::event_core(std::shared_ptr<sync_block> block)
    : block_(std::move(block)), flag_(static_cast<std::atomic<std::uint32_t>*>(block_->state())) {}

void event_core::travel(wire::output_archive& ar, fd_departure& fds) const {
  block_->travel(ar, fds);
}

std::shared_ptr<event_core> event_core::arrive(wire::input_archive& ar, fd_arrival& fds) {
  std::uint32_t key = 0;
  auto block =
      sync_block::arrive(ar, fds, sizeof(std::atomic<std::uint32_t>), "coproc::event", key);
  return fds.object<event_core>(key,
                                [&] { return std::make_shared<event_core>(std::move(block)); });
}

void event_core::set() noexcept {
  flag_->store(1, std::memory_order_seq_cst);
  block_->wake();
}

void event_core::clear() noexcept { flag_->store(0, std::memory_order_seq_cst); }

bool event_core::is_set() const noexcept { return flag_->load(std::memory_order_acquire) != 0; }

awaitable<bool> event_core::wait(std::shared_ptr<event_core> self, deadline until) {
  if (self->is_set()) co_return true;
  sync_block::sleeper counted(*self->block_);
  for (;;) {
    if (self->flag_->load(std::memory_order_seq_cst) != 0) co_return true;
    if (until.passed()) co_return false;
    auto op = self->block_->sleep(until, recheck_interval);
    (void)co_await std::move(op);
  }
}

// ---- condition

namespace {
constexpr int condition_slots = 256;
enum phase : std::uint32_t { free_slot = 0, waiting = 1, notified = 2, setting_up = 3 };
} // namespace

struct condition_core::state {
  struct slot {
    std::atomic<std::uint64_t> ticket; // the order in which waiters began to wait
    std::atomic<std::uint64_t> who;    // the waiter's process
    std::atomic<std::uint32_t> phase;
    std::uint32_t unused;
  };
  std::atomic<std::uint64_t> next_ticket;
  slot slots[condition_slots];
};

condition_core::condition_core(std::shared_ptr<lock_core> lock)
    : lock_(std::move(lock)),
      block_(std::make_shared<sync_block>(sizeof(state), alignof(state), "coproc::condition")),
      s_(new(block_->state()) state{}) {}

condition_core::condition_core(std::shared_ptr<lock_core> lock, std::shared_ptr<sync_block> block)
    : lock_(std::move(lock)), block_(std::move(block)), s_(static_cast<state*>(block_->state())) {}

void condition_core::travel(wire::output_archive& ar, fd_departure& fds) const {
  lock_->travel(ar, fds);
  block_->travel(ar, fds);
}

std::shared_ptr<condition_core> condition_core::arrive(wire::input_archive& ar, fd_arrival& fds) {
  auto lock = lock_core::arrive(ar, fds);
  std::uint32_t key = 0;
  auto block = sync_block::arrive(ar, fds, sizeof(state), "coproc::condition", key);
  return fds.object<condition_core>(
      key, [&] { return std::make_shared<condition_core>(std::move(lock), std::move(block)); });
}

void condition_core::check_held(const char* what) const {
  if (!lock_->held_here())
    throw std::logic_error(std::string("coproc::condition: ") + what +
                           " without its lock held by this process (" +
                           std::to_string(identity_pid(self_identity())) + ")");
}

awaitable<bool> condition_core::wait(std::shared_ptr<condition_core> self, deadline until) {
  self->check_held("wait");
  auto& s = *self->s_;
  state::slot* mine = nullptr;
  for (auto& slot : s.slots) {
    std::uint32_t expected = free_slot;
    if (slot.phase.compare_exchange_strong(expected, setting_up, std::memory_order_acq_rel)) {
      mine = &slot;
      break;
    }
  }
  if (!mine)
    throw std::length_error("coproc::condition: more than " + std::to_string(condition_slots) +
                            " waiters at once");
  mine->ticket.store(s.next_ticket.fetch_add(1, std::memory_order_relaxed),
                     std::memory_order_relaxed);
  mine->who.store(self_identity(), std::memory_order_relaxed);
  mine->phase.store(waiting, std::memory_order_seq_cst);
  auto ex = co_await boost::asio::this_coro::executor;
  const unsigned levels = self->lock_->release_all("coproc::condition: wait");
  bool was_notified = false;
  std::exception_ptr cancelled; // (no co_await in a handler)
  {
    sync_block::sleeper counted(*self->block_);
    try {
      for (;;) {
        if (mine->phase.load(std::memory_order_seq_cst) == notified) {
          was_notified = true;
          break;
        }
        if (until.passed()) break;
        auto op = self->block_->sleep(until, recheck_interval);
        (void)co_await std::move(op);
      }
    } catch (...) {
      cancelled = std::current_exception();
    }
  }
  // Withdraw, unless a notify came just now: then it counts.
  std::uint32_t expected = waiting;
  if (!was_notified &&
      !mine->phase.compare_exchange_strong(expected, free_slot, std::memory_order_acq_rel))
    was_notified = true;
  mine->phase.store(free_slot, std::memory_order_release);
  // A wait ends with the lock held, also when it is cancelled (the caller's scope still
  // releases it): so the re-acquire runs in a coroutine of its own that the cancellation
  // does not reach, awaited with the cancelled state's throw on co_await switched off.
  namespace asio = boost::asio;
  const bool throws = co_await asio::this_coro::throw_if_cancelled();
  co_await asio::this_coro::throw_if_cancelled(false);
  std::exception_ptr failed;
  try {
    if (!self->lock_->try_acquire()) {
      auto op = asio::co_spawn(
          ex, lock_core::acquire(self->lock_, deadline::never()),
          asio::bind_cancellation_slot(asio::cancellation_slot(), asio::use_awaitable));
      (void)co_await std::move(op);
    }
  } catch (...) {
    failed = std::current_exception(); // an OS failure: the lock is not held
  }
  co_await asio::this_coro::throw_if_cancelled(throws);
  if (failed) std::rethrow_exception(failed);
  self->lock_->restore(levels);
  // A cancellation that came while it re-acquired ends the wait too, lock held.
  if (!cancelled &&
      (co_await asio::this_coro::cancellation_state).cancelled() != asio::cancellation_type::none)
    cancelled =
        std::make_exception_ptr(boost::system::system_error(asio::error::operation_aborted));
  if (cancelled) {
    // A notification this waiter took and will not act on goes to the next waiter.
    if (was_notified) self->notify_waiters(1);
    std::rethrow_exception(cancelled);
  }
  co_return was_notified;
}

void condition_core::notify(unsigned n) {
  check_held(n == ~0u ? "notify_all" : "notify");
  notify_waiters(n);
}

void condition_core::notify_waiters(unsigned n) {
  const auto me = self_identity();
  bool any = false;
  while (n > 0) {
    state::slot* first = nullptr;
    std::uint64_t first_ticket = 0;
    for (auto& slot : s_->slots) {
      if (slot.phase.load(std::memory_order_acquire) != waiting) continue;
      auto t = slot.ticket.load(std::memory_order_relaxed);
      if (!first || t < first_ticket) first = &slot, first_ticket = t;
    }
    if (!first) break;
    std::uint32_t expected = waiting;
    auto who = first->who.load(std::memory_order_relaxed);
    if (who != me && !identity_alive(who)) {
      first->phase.compare_exchange_strong(expected, free_slot,
                                           std::memory_order_acq_rel); // died waiting
      continue;
    }
    if (first->phase.compare_exchange_strong(expected, notified, std::memory_order_acq_rel)) {
      --n;
      any = true;
    }
  }
  if (any) block_->wake();
}

// ---- barrier

struct barrier_core::state {
  pthread_mutex_t mutex;
  std::uint64_t generation;
  std::uint64_t broken_bits; // bit generation % 64: that generation ended broken
  std::uint32_t count;       // waiting in this generation
  std::uint32_t broken;      // this generation is broken (until reset)
  // Followed by the identities of the waiting parties, `parties` of them (arrived()).
};

namespace {
std::uint64_t generation_bit(std::uint64_t g) { return std::uint64_t{1} << (g % 64); }
constexpr const char* barrier_what = "coproc::barrier";
} // namespace

barrier_core::barrier_core(unsigned parties) : parties_(parties) {
  if (parties == 0) throw std::invalid_argument("coproc::barrier: 0 parties");
  block_ = std::make_shared<sync_block>(sizeof(state) + parties * sizeof(std::uint64_t),
                                        alignof(state), barrier_what);
  s_ = static_cast<state*>(block_->state()); // zeroed shared memory: a valid empty state
  init_robust_mutex(&s_->mutex, barrier_what);
}

barrier_core::barrier_core(std::shared_ptr<sync_block> block, unsigned parties)
    : parties_(parties), block_(std::move(block)), s_(static_cast<state*>(block_->state())) {}

void barrier_core::travel(wire::output_archive& ar, fd_departure& fds) const {
  const std::uint32_t parties = parties_;
  ar(parties);
  block_->travel(ar, fds);
}

std::shared_ptr<barrier_core> barrier_core::arrive(wire::input_archive& ar, fd_arrival& fds) {
  std::uint32_t parties = 0;
  ar(parties);
  if (parties == 0) throw coproc::error("coproc::barrier: a barrier of 0 parties arrived");
  std::uint32_t key = 0;
  auto block = sync_block::arrive(ar, fds, sizeof(state) + parties * sizeof(std::uint64_t),
                                  barrier_what, key);
  return fds.object<barrier_core>(
      key, [&] { return std::make_shared<barrier_core>(std::move(block), parties); });
}

std::uint64_t* barrier_core::arrived() const noexcept {
  static_assert(sizeof(state) % alignof(std::uint64_t) == 0);
  return reinterpret_cast<std::uint64_t*>(s_ + 1);
}

// Under the mutex.
void barrier_core::break_locked() noexcept {
  s_->broken = 1;
  s_->broken_bits |= generation_bit(s_->generation);
}

namespace {
// Holds a barrier's mutex; a process that died holding it was inside the barrier (a party
// arriving, or an abort or reset): that breaks the barrier.
class barrier_guard {
public:
  template <class F> barrier_guard(pthread_mutex_t* m, F on_dead) : m_(m) {
    if (lock_robust_mutex(m_, barrier_what)) on_dead();
  }
  ~barrier_guard() { pthread_mutex_unlock(m_); }
  barrier_guard(const barrier_guard&) = delete;
  barrier_guard& operator=(const barrier_guard&) = delete;

private:
  pthread_mutex_t* m_;
};
} // namespace

barrier_core::look barrier_core::check(std::uint64_t generation, bool& dead_party) {
  std::vector<std::uint64_t> others;
  {
    barrier_guard held(&s_->mutex, [this] { break_locked(); });
    if (s_->generation != generation)
      return (s_->broken_bits & generation_bit(generation)) ? look::broken : look::tripped;
    if (s_->broken) return look::broken;
    if (!dead_party) return look::waiting;
    others.assign(arrived(), arrived() + s_->count);
  }
  // dead_party on entry: look at the parties too (outside the mutex: /proc reads).
  const auto me = self_identity();
  dead_party = false;
  for (auto who : others)
    if (who != me && !identity_alive(who)) dead_party = true;
  if (!dead_party) return look::waiting;
  bool woke = false;
  {
    barrier_guard held(&s_->mutex, [this] { break_locked(); });
    if (s_->generation != generation)
      return (s_->broken_bits & generation_bit(generation)) ? look::broken : look::tripped;
    if (!s_->broken) break_locked(), woke = true;
  }
  if (woke) block_->wake();
  return look::broken;
}

awaitable<unsigned> barrier_core::wait(std::shared_ptr<barrier_core> self, deadline until) {
  auto& s = *self->s_;
  std::uint64_t generation;
  unsigned index;
  bool tripped = false;
  {
    barrier_guard held(&s.mutex, [&] { self->break_locked(); });
    if (s.broken) throw broken_barrier("coproc::barrier: wait on a broken barrier");
    generation = s.generation;
    index = s.count;
    self->arrived()[index] = self_identity();
    s.count = index + 1;
    if (s.count == self->parties_) {
      s.broken_bits &= ~generation_bit(generation + 1);
      s.generation = generation + 1;
      s.count = 0;
      tripped = true;
    }
  }
  if (tripped) {
    self->block_->wake();
    co_return index;
  }
  sync_block::sleeper counted(*self->block_);
  auto last_party_check = deadline::clock::now();
  for (;;) {
    bool look_at_parties = deadline::clock::now() - last_party_check >= party_check_interval;
    if (look_at_parties) last_party_check = deadline::clock::now();
    bool dead_party = look_at_parties;
    switch (self->check(generation, dead_party)) {
    case look::tripped:
      co_return index;
    case look::broken:
      throw broken_barrier(dead_party ? "coproc::barrier: a waiting party died"
                                      : "coproc::barrier: broken while waiting");
    case look::waiting:
      break;
    }
    if (until.passed()) {
      bool woke = false;
      {
        barrier_guard held(&s.mutex, [&] { self->break_locked(); });
        if (s.generation != generation) {
          if (!(s.broken_bits & generation_bit(generation))) tripped = true;
        } else if (!s.broken) {
          self->break_locked();
          woke = true;
        }
      }
      if (woke) self->block_->wake();
      if (tripped) co_return index;
      throw broken_barrier("coproc::barrier: the wait's timeout passed");
    }
    auto op = self->block_->sleep(until, party_check_interval);
    (void)co_await std::move(op);
  }
}

void barrier_core::abort() {
  {
    barrier_guard held(&s_->mutex, [this] { break_locked(); });
    break_locked();
  }
  block_->wake();
}

void barrier_core::reset() {
  {
    barrier_guard held(&s_->mutex, [this] { break_locked(); });
    if (s_->count > 0) s_->broken_bits |= generation_bit(s_->generation); // its waiters break
    const auto next = s_->generation + 1;
    s_->broken_bits &= ~generation_bit(next);
    s_->generation = next;
    s_->count = 0;
    s_->broken = 0;
  }
  block_->wake();
}

bool barrier_core::broken() const {
  barrier_guard held(&s_->mutex, [this] { const_cast<barrier_core*>(this)->break_locked(); });
  return s_->broken != 0;
}

unsigned barrier_core::n_waiting() const {
  barrier_guard held(&s_->mutex, [this] { const_cast<barrier_core*>(this)->break_locked(); });
  return s_->broken ? 0 : s_->count;
}

// ---- value and array storage

std::size_t shared_data::mutex_at() noexcept {
  return round_up(lock_core::state_size(), alignof(pthread_mutex_t));
}

std::size_t shared_data::data_at(std::size_t align) noexcept {
  return round_up(mutex_at() + sizeof(pthread_mutex_t), align);
}

shared_data::shared_data(std::size_t bytes, std::size_t align, const char* what)
    : bytes_(bytes), align_(std::max<std::size_t>(align, alignof(std::uint64_t))) {
  block_ = std::make_shared<sync_block>(data_at(align_) + bytes, align_, what);
  auto* base = static_cast<unsigned char*>(block_->state());
  mutex_ = base + mutex_at();
  data_ = base + data_at(align_);
  init_robust_mutex(static_cast<pthread_mutex_t*>(mutex_), what);
  lock_ = std::make_shared<lock_core>(block_, base, false);
}

shared_data::shared_data(std::shared_ptr<sync_block> block, std::shared_ptr<lock_core> lock,
                         std::size_t bytes, std::size_t align)
    : block_(std::move(block)), bytes_(bytes), align_(align), lock_(std::move(lock)) {
  auto* base = static_cast<unsigned char*>(block_->state());
  mutex_ = base + mutex_at();
  data_ = base + data_at(align_);
}

void shared_data::travel(wire::output_archive& ar, fd_departure& fds) const {
  const std::uint64_t bytes = bytes_, align = align_;
  ar(bytes, align);
  block_->travel(ar, fds);
}

std::shared_ptr<shared_data> shared_data::arrive(wire::input_archive& ar, fd_arrival& fds,
                                                 std::size_t bytes, std::size_t align,
                                                 const char* what) {
  std::uint64_t sent_bytes = 0, sent_align = 0;
  ar(sent_bytes, sent_align);
  align = std::max<std::size_t>(align, alignof(std::uint64_t));
  if (sent_bytes != bytes || sent_align != align)
    throw coproc::error(std::string(what) + ": the storage that arrived with this child holds " +
                        std::to_string(sent_bytes) + " bytes aligned to " +
                        std::to_string(sent_align) + ", not " + std::to_string(bytes) +
                        " aligned to " + std::to_string(align));
  std::uint32_t key = 0;
  auto block = sync_block::arrive(ar, fds, data_at(align) + bytes, what, key);
  auto lock = fds.object<lock_core>(
      key, [&] { return std::make_shared<lock_core>(lock_core::adopt_t{}, block, false); });
  return fds.object<shared_data>(key, [&] {
    return std::make_shared<shared_data>(std::move(block), std::move(lock), bytes, align);
  });
}

void shared_data::lock_data() const {
  // A holder that died mid-store may have left the bytes torn: nothing to repair.
  (void)lock_robust_mutex(static_cast<pthread_mutex_t*>(mutex_), block_->what());
}

void shared_data::unlock_data() const noexcept {
  pthread_mutex_unlock(static_cast<pthread_mutex_t*>(mutex_));
}

} // namespace coproc::detail
