#include <coproc/detail/fd_wait.hpp>
#include <coproc/detail/queue_ring.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include "os.hpp"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>
#include <system_error>

namespace coproc::detail {

struct alignas(64) queue_ring::control {
  // Producers' line: written under put_lock.
  pthread_mutex_t put_lock;
  std::atomic<std::uint64_t> tail;
  std::atomic<std::uint64_t> put_count;
  std::uint64_t put_journal_tail, put_journal_count; // the commit being made
  // Consumers' line: written under get_lock.
  alignas(64) pthread_mutex_t get_lock;
  std::atomic<std::uint64_t> head;
  std::atomic<std::uint64_t> get_count;
  std::uint64_t get_journal_head, get_journal_count;
  // Sleepers, per side: [getters] wait for an item, [putters] for room.
  alignas(64) std::atomic<std::uint32_t> waiters[2];
  std::atomic<std::uint32_t> wake_pending[2];
  std::atomic<std::uint32_t> closed;
};

namespace {
void init_robust_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int r = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (r != 0) throw_errno(r, "coproc::queue: pthread_mutex_init");
}
} // namespace

namespace {
// The ring's bytes for capacity_bytes asked: rounded up to 8, within [16, 2^40].
std::size_t checked_capacity(std::size_t asked) {
  const std::size_t capacity = (asked + 7) & ~std::size_t{7};
  if (capacity < 16 || capacity > (std::size_t{1} << 40))
    throw std::invalid_argument("coproc::queue: capacity_bytes " + std::to_string(asked) +
                                " is outside [16, 2^40]");
  return capacity;
}
// A capacity that came with a fresh image's argument is one checked_capacity made.
std::size_t arrived_capacity(std::uint64_t capacity) {
  if (capacity % 8 != 0 || capacity < 16 || capacity > (std::uint64_t{1} << 40))
    throw coproc::error("coproc::queue: a queue of " + std::to_string(capacity) +
                        " bytes arrived with this child");
  return static_cast<std::size_t>(capacity);
}
} // namespace

std::size_t queue_ring::block_size(std::size_t capacity) noexcept {
  return sizeof(control) + capacity;
}

queue_ring::queue_ring(std::size_t maxsize, std::size_t capacity_bytes)
    : maxsize_(maxsize), capacity_(checked_capacity(capacity_bytes)),
      block_(block_size(capacity_), 2, "coproc::queue"), control_(new(block_.base()) control{}),
      data_(static_cast<unsigned char*>(block_.base()) + sizeof(control)) {
  init_robust_mutex(&control_->put_lock);
  init_robust_mutex(&control_->get_lock);
}

queue_ring::queue_ring(const shared_block::description& d, fd_arrival& fds, std::size_t maxsize,
                       std::size_t capacity_bytes)
    : maxsize_(maxsize), capacity_(arrived_capacity(capacity_bytes)),
      block_(d, fds, block_size(capacity_), 2, "coproc::queue"),
      control_(static_cast<control*>(block_.base())),
      data_(static_cast<unsigned char*>(block_.base()) + sizeof(control)) {}

queue_ring::~queue_ring() = default;

void queue_ring::travel(wire::output_archive& ar, fd_departure& fds) const {
  block_.travel(ar, fds);
  const std::uint64_t maxsize = maxsize_, capacity = capacity_;
  ar(maxsize, capacity);
}

std::shared_ptr<queue_ring> queue_ring::arrive(wire::input_archive& ar, fd_arrival& fds) {
  const auto d = shared_block::read(ar);
  std::uint64_t maxsize = 0, capacity = 0;
  ar(maxsize, capacity);
  // A queue passed twice arrives once: both handles share the ring, as a fork child's do.
  return fds.object<queue_ring>(d.memfd, [&] {
    return std::make_shared<queue_ring>(d, fds, static_cast<std::size_t>(maxsize),
                                        static_cast<std::size_t>(capacity));
  });
}

void queue_ring::lock(side s) {
  auto* m = s == putters ? &control_->put_lock : &control_->get_lock;
  int r = pthread_mutex_lock(m);
  if (r == EOWNERDEAD) {
    recover(s);
    pthread_mutex_consistent(m);
  } else if (r != 0) {
    throw_errno(r, "coproc::queue: pthread_mutex_lock");
  }
}

void queue_ring::unlock(side s) noexcept {
  pthread_mutex_unlock(s == putters ? &control_->put_lock : &control_->get_lock);
}

// Holds one side's lock for its scope.
class queue_ring::side_lock {
public:
  side_lock(queue_ring& ring, side s) : ring_(ring), side_(s) { ring_.lock(side_); }
  side_lock(const side_lock&) = delete;
  side_lock& operator=(const side_lock&) = delete;
  ~side_lock() { ring_.unlock(side_); }

private:
  queue_ring& ring_;
  side side_;
};

// The previous holder died. If it had published its position, its count must match the
// journal; if not, its half-written record lies beyond the position and is ignored.
// Either way it may have died before waking the other side's sleepers: wake them.
void queue_ring::recover(side s) noexcept {
  auto& c = *control_;
  if (s == putters) {
    if (c.tail.load(std::memory_order_relaxed) == c.put_journal_tail)
      c.put_count.store(c.put_journal_count, std::memory_order_relaxed);
  } else {
    if (c.head.load(std::memory_order_relaxed) == c.get_journal_head)
      c.get_count.store(c.get_journal_count, std::memory_order_relaxed);
  }
  const side other = s == putters ? getters : putters;
  block_.signal(other,
                std::max<std::uint64_t>(1, c.waiters[other].load(std::memory_order_relaxed)));
}

queue_ring::status queue_ring::try_put(std::string_view bytes) {
  const std::size_t need = record_size(bytes.size());
  if (need > capacity_ || bytes.size() > capacity_)
    throw std::length_error("coproc::queue: an item of " + std::to_string(bytes.size()) +
                            " bytes (" + std::to_string(need) +
                            " with its header) does not fit the queue's capacity of " +
                            std::to_string(capacity_) + " bytes");
  auto& c = *control_;
  {
    side_lock held(*this, putters);
    if (c.closed.load(std::memory_order_relaxed)) return status::closed;
    const std::uint64_t count = c.put_count.load(std::memory_order_relaxed);
    // seq_cst loads: after a waiter's count-in, these must see the commit whose wake(),
    // fenced, did not see the waiter.
    if (maxsize_ != 0 && count - c.get_count.load(std::memory_order_seq_cst) >= maxsize_)
      return status::full;
    const std::uint64_t tail = c.tail.load(std::memory_order_relaxed);
    if (tail + need - known_head_ > capacity_) {
      known_head_ = c.head.load(std::memory_order_seq_cst);
      if (tail + need - known_head_ > capacity_) return status::full;
    }
    const std::size_t at = tail % capacity_;
    const std::uint64_t length = bytes.size();
    std::memcpy(data_ + at, &length, 8); // 8-aligned: never split
    const std::size_t body = (at + 8) % capacity_;
    const std::size_t first = std::min(bytes.size(), capacity_ - body);
    if (first != 0) std::memcpy(data_ + body, bytes.data(), first);
    if (first != bytes.size()) std::memcpy(data_, bytes.data() + first, bytes.size() - first);
    c.put_journal_tail = tail + need;
    c.put_journal_count = count + 1;
    c.tail.store(tail + need, std::memory_order_release); // the commit
    c.put_count.store(count + 1, std::memory_order_relaxed);
    // Still under the lock: a producer killed between its commit and this wake-up is
    // found by the next one to lock, which wakes the consumers in its place (and the
    // consumers look again on their own, recheck_interval).
    committed(getters);
  }
  return status::ok;
}

queue_ring::status queue_ring::try_get(consumer f, void* context) {
  auto& c = *control_;
  {
    side_lock held(*this, getters);
    const std::uint64_t head = c.head.load(std::memory_order_relaxed);
    if (static_cast<std::int64_t>(known_tail_ - head) <= 0) {
      // Closed is read before tail: close() publishes it after the last commit.
      bool closed = c.closed.load(std::memory_order_seq_cst) != 0;
      known_tail_ = c.tail.load(std::memory_order_seq_cst); // seq_cst: as in try_put
      if (known_tail_ == head) return closed ? status::closed : status::empty;
    }
    std::uint64_t length;
    std::memcpy(&length, data_ + head % capacity_, 8);
    if (length > capacity_ || record_size(length) > known_tail_ - head)
      throw coproc::error("coproc::queue: corrupt record of " + std::to_string(length) +
                          " bytes in shared memory");
    const std::size_t need = record_size(length);
    const std::size_t body = (head + 8) % capacity_;
    std::string_view bytes;
    if (body + length <= capacity_) {
      bytes = {reinterpret_cast<const char*>(data_ + body), length};
    } else {
      const std::size_t first = capacity_ - body;
      wrapped_.assign(reinterpret_cast<const char*>(data_ + body), first);
      wrapped_.append(reinterpret_cast<const char*>(data_), length - first);
      bytes = wrapped_;
    }
    auto commit = [&] {
      const std::uint64_t count = c.get_count.load(std::memory_order_relaxed) + 1;
      c.get_journal_head = head + need;
      c.get_journal_count = count;
      c.head.store(head + need, std::memory_order_release); // the commit
      c.get_count.store(count, std::memory_order_release);
    };
    try {
      f(context, bytes);
    } catch (...) {
      commit(); // a frame that does not decode is consumed, not retried forever
      committed(putters);
      throw;
    }
    commit();
    committed(putters); // under the lock, as in try_put
  }
  return status::ok;
}

// Tokens left by sleepers that timed out or died cost a spurious wake-up each, then the
// count is back to zero and a wait sleeps again.
void queue_ring::wake(side s) noexcept {
  auto& c = *control_;
  // Pairs with the waiter's count-in before it looks again: either it sees our commit or
  // we see it waiting.
  full_fence();
  const std::uint32_t sleepers = c.waiters[s].load(std::memory_order_relaxed);
  if (sleepers == 0) return;
  if (c.wake_pending[s].exchange(1, std::memory_order_seq_cst) != 0) return;
  block_.signal(s, sleepers);
}

namespace {
std::atomic<bool> kill_after_commit{false};
}

void queue_ring::kill_after_next_commit() noexcept {
  kill_after_commit.store(true, std::memory_order_relaxed);
}

void queue_ring::committed(side woken) noexcept {
  if (kill_after_commit.load(std::memory_order_relaxed)) [[unlikely]]
    ::raise(SIGKILL);
  wake(woken);
}

void queue_ring::wake_all() noexcept {
  // After close() nobody sleeps again: plenty of tokens for every current sleeper.
  block_.signal(getters, std::uint64_t{1} << 32);
  block_.signal(putters, std::uint64_t{1} << 32);
}

namespace {
// Counts a coroutine in as a sleeper of one side for as long as it lives.
struct waiter_scope {
  std::atomic<std::uint32_t>& waiters;
  waiter_scope(std::atomic<std::uint32_t>& w, std::atomic<std::uint32_t>& pending) : waiters(w) {
    waiters.fetch_add(1, std::memory_order_seq_cst);
    pending.store(0, std::memory_order_seq_cst);
  }
  ~waiter_scope() { waiters.fetch_sub(1, std::memory_order_relaxed); }
};
} // namespace

namespace {
// A waiter whose waker died between its commit and its eventfd write is woken by nobody:
// every wait looks again after this long at most (a sleeping waiter costs one wake-up
// per interval, not a spin).
constexpr std::chrono::milliseconds recheck_interval{100};

deadline recheck_at(deadline until) {
  const auto now = deadline::clock::now();
  return until.when() - now > recheck_interval ? deadline::at(now + recheck_interval) : until;
}
} // namespace

namespace {
// Whether looking a moment before sleeping can pay: only when another CPU may be running
// the other side (pinned to one CPU, it cannot commit while this one looks). Not inlined
// into a coroutine: clang may keep a thread_local's address across a suspension.
[[gnu::noinline]] bool may_spin() noexcept {
  thread_local const int cpus = [] {
    cpu_set_t set;
    return ::sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  }();
  return cpus > 1;
}

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// About a microsecond of looks at one shared cache line, without the lock.
constexpr int spin_looks = 256;
} // namespace

// The other side's position: what a waiter of side s waits for to move.
std::uint64_t queue_ring::progress(side s) const noexcept {
  return (s == getters ? control_->tail : control_->head).load(std::memory_order_acquire);
}

bool queue_ring::done(side s, status result) {
  if (result == status::ok) return true;
  if (result == status::closed)
    throw queue_closed(s == putters ? "coproc::queue: put on a closed queue"
                                    : "coproc::queue: get on a closed, empty queue");
  return false;
}

// A cancelled wait throws out of the loop before it takes a token or tries again, so a
// cancelled put or get has no effect. It leaves its token (if one was written for it) in
// the eventfd for the other sleepers.
template <class Attempt>
awaitable<void> queue_ring::retry(side s, deadline until, Attempt attempt) {
  for (;;) {
    if (done(s, attempt())) co_return;
    if (may_spin()) {
      // The other side is usually about to commit: a few looks save a sleep, its wake-up
      // (an eventfd write on the other side) and a trip through the io_context.
      const auto seen = progress(s);
      for (int i = 0; i < spin_looks && progress(s) == seen && !closed(); ++i) cpu_relax();
      if (done(s, attempt())) co_return;
    }
    waiter_scope scope(control_->waiters[s], control_->wake_pending[s]);
    if (done(s, attempt())) co_return;
    if (co_await wait_readable(block_.event_fd(s), recheck_at(until))) {
      block_.take_token(s);
      continue;
    }
    if (!until.passed()) continue;     // a re-check
    if (done(s, attempt())) co_return; // the deadline: one last look
    if (s == putters) throw queue_full("coproc::queue: still full at the put's deadline");
    throw queue_empty("coproc::queue: still empty at the get's deadline");
  }
}

awaitable<void> queue_ring::put(std::string_view bytes, deadline until) {
  return retry(putters, until, [this, bytes] { return try_put(bytes); });
}

awaitable<void> queue_ring::get(consumer f, void* context, deadline until) {
  return retry(getters, until, [this, f, context] { return try_get(f, context); });
}

void queue_ring::shutdown(bool immediate) {
  {
    // Under put_lock, so no put commits after it: a consumer that sees `closed` and then
    // an empty ring knows the queue is drained.
    side_lock held(*this, putters);
    control_->closed.store(1, std::memory_order_release);
  }
  if (immediate) discard();
  wake_all();
}

// Consumes every item as one get would, with the same commit (a process killed half-way
// leaves the old head or the new one, and the next getter finishes the count). The
// queue is closed already, so the tail read here is the last one.
void queue_ring::discard() {
  auto& c = *control_;
  side_lock held(*this, getters);
  const std::uint64_t tail = c.tail.load(std::memory_order_seq_cst);
  const std::uint64_t count = c.put_count.load(std::memory_order_seq_cst);
  c.get_journal_head = tail;
  c.get_journal_count = count;
  c.head.store(tail, std::memory_order_release); // the commit
  c.get_count.store(count, std::memory_order_release);
  known_tail_ = tail;
}

bool queue_ring::closed() const noexcept {
  return control_->closed.load(std::memory_order_acquire) != 0;
}

std::size_t queue_ring::qsize() const noexcept {
  // get_count first: it never passes put_count, so the difference is never negative.
  auto got = control_->get_count.load(std::memory_order_acquire);
  auto put = control_->put_count.load(std::memory_order_acquire);
  return put > got ? static_cast<std::size_t>(put - got) : 0;
}

bool queue_ring::full() const noexcept {
  if (maxsize_ != 0 && qsize() >= maxsize_) return true;
  auto head = control_->head.load(std::memory_order_acquire);
  auto tail = control_->tail.load(std::memory_order_acquire);
  return tail - head + record_size(0) > capacity_;
}

} // namespace coproc::detail
