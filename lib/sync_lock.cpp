// detail::lock_core (coproc/sync.hpp): the lock word, hand-offs, holder death.
#include <coproc/sync.hpp>

#include <coproc/detail/travel.hpp>
#include <coproc/wire.hpp>

#include "sync_block.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace coproc::detail {

namespace {
// The word's hand-off mark: the top bit, and below it the ticket of the waiter it is for
// (0: for any waiter). Identities never have the top bit ((start time in ticks) << 22
// stays far below 2^63).
constexpr std::uint64_t handoff_bit = std::uint64_t{1} << 63;
constexpr int ticket_slots = 32;
// A hand-off its waiter did not take in this long is free for anyone if that waiter's
// process died, and after the longer bound in any case (its process runs, but its
// io_context does not: it must not hold up every other process for long).
constexpr std::int64_t handoff_grace_ns = 10'000'000;
constexpr std::int64_t handoff_bound_ns = 250'000'000;
constexpr std::chrono::milliseconds recheck_interval{100};
// Where pidfds are refused, a held lock's waiters look at the holder this often.
constexpr std::chrono::milliseconds poll_holder_interval{10};
constexpr std::size_t max_watches = 8;
// A waiter looks this often while a hand-off to another waiter is pending.
constexpr std::chrono::milliseconds handoff_poll{1};

const char* name_of(bool recursive) { return recursive ? "coproc::rlock" : "coproc::lock"; }
} // namespace

struct lock_core::state {
  std::atomic<std::uint64_t> owner;                 // 0, an identity, or handoff_bit | ticket
  std::atomic<std::uint64_t> next_ticket;           // the order in which waiters came
  std::atomic<std::int64_t> handoff_at;             // monotonic_ns() of the latest hand-off
  std::atomic<std::uint32_t> count;                 // rlock: levels held
  std::atomic<std::uint32_t> abandoned;             // the holder took it from a dead one
  std::atomic<std::uint64_t> tickets[ticket_slots]; // the waiting tickets (0: a free slot)
  std::atomic<std::uint64_t> holders[ticket_slots]; // their processes (0: not written yet)
};

std::size_t lock_core::state_size() noexcept { return sizeof(state); }

lock_core::lock_core(bool recursive)
    : block_(std::make_shared<sync_block>(sizeof(state), alignof(state), name_of(recursive))),
      s_(new(block_->state()) state{}), recursive_(recursive) {}

lock_core::lock_core(std::shared_ptr<sync_block> block, void* at, bool recursive)
    : block_(std::move(block)), s_(new(at) state{}), recursive_(recursive) {}

lock_core::lock_core(adopt_t, std::shared_ptr<sync_block> block, bool recursive)
    : block_(std::move(block)), s_(static_cast<state*>(block_->state())), recursive_(recursive) {}

lock_core::~lock_core() = default;

void lock_core::travel(wire::output_archive& ar, fd_departure& fds) const {
  ar(recursive_);
  block_->travel(ar, fds);
}

std::shared_ptr<lock_core> lock_core::arrive(wire::input_archive& ar, fd_arrival& fds) {
  bool recursive = false;
  ar(recursive);
  std::uint32_t key = 0;
  auto block = sync_block::arrive(ar, fds, sizeof(state), name_of(recursive), key);
  // A lock passed twice, or a value's lock passed beside the value: one core here too.
  return fds.object<lock_core>(
      key, [&] { return std::make_shared<lock_core>(adopt_t{}, std::move(block), recursive); });
}

bool lock_core::take(std::uint64_t from, bool abandoned) {
  const auto me = self_identity();
  if (!s_->owner.compare_exchange_strong(from, me, std::memory_order_acquire)) return false;
  s_->count.store(1, std::memory_order_relaxed);
  s_->abandoned.store(abandoned ? 1 : 0, std::memory_order_relaxed);
  return true;
}

bool lock_core::try_acquire() {
  const auto me = self_identity();
  std::unique_lock<std::mutex> guard;
  if (recursive_) {
    guard = std::unique_lock(local_);
    if (s_->owner.load(std::memory_order_relaxed) == me) {
      s_->count.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
  }
  auto o = s_->owner.load(std::memory_order_acquire); // a hand-off's handoff_at is seen with it
  if (o == 0) return take(0, false);
  if (o & handoff_bit) {
    const auto target = o & ~handoff_bit;
    if (target != 0 && !lapsed(target, s_->handoff_at.load(std::memory_order_acquire)))
      return false; // a waiter's turn
    if (!take(o, false)) return false;
    if (target != 0) drop_ticket(target); // it did not come in time
    return true;
  }
  if (o == me) return false;
  return !identity_alive(o) && take(o, true);
}

std::shared_ptr<process_watch> lock_core::watch(std::uint64_t holder, bool& dead) {
  dead = false;
  std::lock_guard guard(watches_mutex_);
  for (auto& w : watches_)
    if (w->identity() == holder) {
      dead = w->exited();
      return w;
    }
  std::shared_ptr<process_watch> w;
  switch (process_watch::open(holder, w)) {
  case process_watch::result::dead:
    dead = true;
    return nullptr;
  case process_watch::result::unsupported:
    return nullptr;
  case process_watch::result::watching:
    break;
  }
  // Waiters still sleeping on an evicted pidfd keep it open until they wake.
  if (watches_.size() >= max_watches) watches_.erase(watches_.begin());
  watches_.push_back(w);
  return w;
}

lock_core::outcome lock_core::attempt(std::uint64_t& ticket, std::shared_ptr<process_watch>& w,
                                      std::int64_t& handoff_at) {
  const auto me = self_identity();
  std::unique_lock<std::mutex> guard;
  if (recursive_) {
    guard = std::unique_lock(local_);
    if (s_->owner.load(std::memory_order_relaxed) == me) {
      s_->count.fetch_add(1, std::memory_order_relaxed);
      return outcome::acquired;
    }
  }
  if (ticket != 0 && !holds_ticket(ticket))
    ticket = take_ticket(); // given up on as dead: queue again
  // seq_cst: after the sleeper's count-in (see release_now).
  auto o = s_->owner.load(std::memory_order_seq_cst);
  if (o == 0) return take(0, false) ? outcome::acquired : outcome::wait;
  if (o & handoff_bit) {
    const auto target = o & ~handoff_bit;
    if (target == 0 || target == ticket) return take(o, false) ? outcome::acquired : outcome::wait;
    // For another waiter: it is woken, and has handoff_grace to come.
    handoff_at = s_->handoff_at.load(std::memory_order_acquire);
    if (!lapsed(target, handoff_at)) return outcome::wait_for_handoff;
    // It did not come: dead (or stuck: it queues again). Its place is dropped.
    drop_ticket(target);
    block_->reclaim_dead_waiters();
    return take(o, false) ? outcome::acquired : outcome::wait;
  }
  if (o == me) return outcome::wait; // a lock this process holds: its release wakes us
  if (guard) guard.unlock();         // not across /proc reads
  bool dead;
  w = watch(o, dead);
  if (!dead) return outcome::wait_for_exit;
  if (recursive_) guard.lock();
  return take(o, true) ? outcome::acquired : outcome::wait;
}

std::uint64_t lock_core::take_ticket() noexcept {
  const auto ticket = s_->next_ticket.fetch_add(1, std::memory_order_relaxed) + 1;
  for (int i = 0; i < ticket_slots; ++i) {
    std::uint64_t expected = 0;
    if (s_->tickets[i].compare_exchange_strong(expected, ticket, std::memory_order_seq_cst)) {
      s_->holders[i].store(self_identity(), std::memory_order_release);
      return ticket;
    }
  }
  return 0; // more waiters than places: this one takes only undirected or lapsed hand-offs
}

// Whether the hand-off to `ticket`, made at handoff_at, may be taken by another.
bool lock_core::lapsed(std::uint64_t ticket, std::int64_t handoff_at) const noexcept {
  const auto age = monotonic_ns() - handoff_at;
  if (age < handoff_grace_ns) return false;
  if (age >= handoff_bound_ns) return true;
  for (int i = 0; i < ticket_slots; ++i)
    if (s_->tickets[i].load(std::memory_order_acquire) == ticket) {
      auto who = s_->holders[i].load(std::memory_order_acquire);
      return who != 0 && !identity_alive(who);
    }
  return true; // it left the queue
}

bool lock_core::holds_ticket(std::uint64_t ticket) const noexcept {
  for (auto& slot : s_->tickets)
    if (slot.load(std::memory_order_relaxed) == ticket) return true;
  return false;
}

void lock_core::drop_ticket(std::uint64_t ticket) noexcept {
  for (auto& slot : s_->tickets) {
    auto expected = ticket;
    if (slot.compare_exchange_strong(expected, 0, std::memory_order_acq_rel)) return;
  }
}

// The oldest waiting ticket, 0 if none is registered.
std::uint64_t lock_core::first_ticket() const noexcept {
  std::uint64_t first = 0;
  for (auto& slot : s_->tickets) {
    auto t = slot.load(std::memory_order_seq_cst);
    if (t != 0 && (first == 0 || t < first)) first = t;
  }
  return first;
}

// Leaves the queue; a hand-off made to this waiter after all (it timed out, was
// cancelled) goes on to the next one.
void lock_core::leave(std::uint64_t ticket) noexcept {
  if (ticket == 0) return;
  drop_ticket(ticket);
  auto mine = handoff_bit | ticket;
  if (s_->owner.compare_exchange_strong(mine, self_identity(), std::memory_order_acq_rel))
    release_now();
}

awaitable<bool> lock_core::acquire(std::shared_ptr<lock_core> self, deadline until) {
  if (self->try_acquire()) co_return true;
  // The place first, then the count-in: a hand-off that sees this sleeper counted sees
  // its ticket too; and the count goes before the place, so a hand-off passed on when
  // leaving does not count this waiter any more.
  struct queued {
    lock_core& lock;
    std::uint64_t ticket;
    ~queued() { lock.leave(ticket); }
  } place{*self, self->take_ticket()};
  sync_block::sleeper counted(*self->block_);
  bool woken = false;
  for (;;) {
    std::shared_ptr<process_watch> w;
    std::int64_t handoff_at = 0;
    auto result = self->attempt(place.ticket, w, handoff_at);
    // A wake-up's token is taken only when the wake-up was not for another waiter: a
    // running process that took every token would leave the sleeping target of a
    // hand-off unwoken (epoll looks at the eventfd again when it reports it).
    if (woken && result != outcome::wait_for_handoff) self->block_->take_token();
    woken = false;
    if (result == outcome::acquired) co_return true;
    if (until.passed()) co_return false;
    if (result == outcome::wait_for_handoff) {
      // Until the target has taken it (or its grace ran out), on a timer: the eventfd
      // stays readable for the target.
      auto op = self->block_->nap(sooner(until, handoff_poll));
      co_await std::move(op);
      continue;
    }
    std::chrono::steady_clock::duration recheck = recheck_interval;
    if (result == outcome::wait_for_exit && !w) recheck = poll_holder_interval;
    auto op = self->block_->sleep(sooner(until, recheck), recheck_interval,
                                  result == outcome::wait_for_exit ? w : nullptr, false);
    woken = co_await std::move(op);
  }
}

void lock_core::misuse(std::uint64_t owner) const {
  const std::string what = name_of(recursive_);
  const std::string me = std::to_string(identity_pid(self_identity()));
  if (owner == 0 || (owner & handoff_bit))
    throw std::logic_error(what + ": release by process " + me + " of a lock that is not held");
  throw std::logic_error(what + ": release by process " + me +
                         ", which does not hold it (process " +
                         std::to_string(identity_pid(owner)) + " does)");
}

void lock_core::release() {
  const auto me = self_identity();
  std::unique_lock<std::mutex> guard;
  if (recursive_) guard = std::unique_lock(local_);
  auto o = s_->owner.load(std::memory_order_relaxed);
  if (o != me) misuse(o);
  if (recursive_ && s_->count.fetch_sub(1, std::memory_order_relaxed) > 1) return;
  release_now();
}

void lock_core::release_now() {
  s_->abandoned.store(0, std::memory_order_relaxed);
  auto handoff = [&](std::uint64_t from) {
    s_->handoff_at.store(monotonic_ns(), std::memory_order_release);
    if (!s_->owner.compare_exchange_strong(from, handoff_bit | first_ticket(),
                                           std::memory_order_seq_cst))
      return;
    block_->wake();
  };
  if (block_->waiters() != 0) return handoff(self_identity());
  // Free it, then look once more: a sleeper that counted in meanwhile either finds it free
  // or is seen here (seq_cst on both sides), and then gets a hand-off.
  s_->owner.store(0, std::memory_order_seq_cst);
  if (block_->waiters() != 0) handoff(0);
}

bool lock_core::abandoned() const noexcept {
  return s_->abandoned.load(std::memory_order_relaxed) != 0 &&
         s_->owner.load(std::memory_order_relaxed) == self_identity();
}

bool lock_core::held_here() const noexcept {
  return s_->owner.load(std::memory_order_acquire) == self_identity();
}

unsigned lock_core::release_all(const char* who) {
  std::unique_lock<std::mutex> guard;
  if (recursive_) guard = std::unique_lock(local_);
  auto o = s_->owner.load(std::memory_order_relaxed);
  if (o != self_identity())
    throw std::logic_error(std::string(who) + " without its lock held by this process (" +
                           std::to_string(identity_pid(self_identity())) + ")");
  unsigned count = s_->count.load(std::memory_order_relaxed);
  release_now();
  return count;
}

void lock_core::restore(unsigned count) noexcept {
  s_->count.store(count, std::memory_order_relaxed);
}

} // namespace coproc::detail
