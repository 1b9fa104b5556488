// coproc/detail/queue_ring.hpp — the shared-memory ring behind coproc::queue.
//
// The ring is a shared_block (detail/shared_block.hpp: a memfd mapped MAP_SHARED and two
// eventfds) made by the process that creates the queue, inherited by every process forked
// afterwards and passed to fresh images as a process argument. A control block, then `capacity`
// bytes of records ([u64 length][payload, padded to 8]; a record may wrap around the end).
// Positions are monotonic byte counters, so head == tail means empty.
//
// Two robust, process-shared mutexes split the work: producers serialize on put_lock and
// own `tail`, consumers on get_lock and own `head`, so one producer and one consumer never
// contend. Each side changes its state with a commit protocol: the record is written (or
// read) first, the side's journal records the new position and count, and a single
// store of the position publishes it. A process killed at any instant therefore leaves
// either the old state (its in-flight item is simply not there, or still there) or the
// new one; the next process to take the lock gets EOWNERDEAD and finishes the count
// from the journal. Nothing is ever torn or duplicated and no lock stays held.
//
// Sleepers wait on an eventfd per direction, registered with the awaiting coroutine's
// io_context. Before it counts itself in, a waiter watches the other side's position for
// about a microsecond (only when this process may run on more than one CPU): a producer
// and a consumer at about the same pace then rarely sleep and wake each other. A waiter counts
// itself in and clears the direction's `wake_pending` flag before it looks again; the other side,
// after a commit and still under its lock, writes the eventfd only when someone waits and no
// wake-up is already on its way, so a busy queue makes no syscalls and a burst makes one. The
// eventfds count tokens (EFD_SEMAPHORE): one per sleeper, each woken sleeper takes one, so sleepers
// of every process are woken and none keeps waking up on a readable eventfd. A waiter whose
// coroutine is cancelled takes no token and tries nothing more: a cancelled put or get
// has no effect, and the token written for it stays for the other sleepers (one spare
// wake-up, never a missed one).
//
// A process killed between its commit and that write wakes nobody, and the other side
// may never lock again (it was the only producer): so no sleeper depends on it. Every
// wait also ends after `recheck_interval` (100 ms, lib/queue_ring.cpp): the waiter looks
// again, finding the committed item or room by itself; a sleeper costs one wake-up per
// interval, not a spin. The next process to lock the dead one's side still finds it
// (EOWNERDEAD), finishes its count and wakes the sleepers at once. A waiter killed while
// asleep leaves its count behind, which costs at most one spare write per burst.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/deadline.hpp>
#include <coproc/detail/shared_block.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace coproc::wire {
class output_archive;
class input_archive;
} // namespace coproc::wire

namespace coproc::detail {

class fd_departure;
class fd_arrival;

class queue_ring {
public:
  enum class status { ok, full, empty, closed };
  // Called under the consumers' lock with one item's bytes; it may throw (the item is
  // consumed all the same).
  using consumer = void (*)(void* context, std::string_view bytes);

  // capacity_bytes is rounded up to 8; std::invalid_argument outside [16, 2^40].
  queue_ring(std::size_t maxsize, std::size_t capacity_bytes);
  queue_ring(const queue_ring&) = delete;
  queue_ring& operator=(const queue_ring&) = delete;
  ~queue_ring();

  // std::length_error if the item can never fit.
  status try_put(std::string_view bytes);
  status try_get(consumer f, void* context);
  // Loop until done: queue_full at the deadline, queue_closed.
  awaitable<void> put(std::string_view bytes, deadline until);
  awaitable<void> get(consumer f, void* context, deadline until);

  // Closes it for every process; immediate: the items left are dropped too.
  void shutdown(bool immediate);
  bool closed() const noexcept;
  std::size_t qsize() const noexcept;
  bool full() const noexcept;
  std::size_t maxsize() const noexcept { return maxsize_; }
  std::size_t capacity_bytes() const noexcept { return capacity_; }
  // The ring space one item of this many bytes takes.
  static std::size_t record_size(std::size_t bytes) noexcept {
    return 8 + ((bytes + 7) & ~std::size_t{7});
  }

  // Test hook: this process raises SIGKILL right after its next commit (a put's or a
  // get's), before it wakes the other side's sleepers, as a process killed at that
  // instant would.
  static void kill_after_next_commit() noexcept;

  // As a process argument: the descriptors go into the departure, their indices and the
  // sizes into the archive; arrive rebuilds the ring on the descriptors that came.
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  static std::shared_ptr<queue_ring> arrive(wire::input_archive& ar, fd_arrival& fds);

  // Adopts the block of a ring made elsewhere (arrive).
  queue_ring(const shared_block::description& d, fd_arrival& fds, std::size_t maxsize,
             std::size_t capacity_bytes);

private:
  struct control;
  static std::size_t block_size(std::size_t capacity) noexcept;
  enum side { getters = 0, putters = 1 };
  class side_lock;
  void lock(side s);
  void unlock(side s) noexcept;
  // Tries `attempt` until it goes through, sleeping on side s's eventfd in between:
  // queue_closed once the queue is closed, at the deadline queue_full (putters) or
  // queue_empty (getters).
  template <class Attempt> awaitable<void> retry(side s, deadline until, Attempt attempt);
  // Whether an attempt went through; queue_closed if the queue is closed.
  static bool done(side s, status result);
  std::uint64_t progress(side s) const noexcept;
  void recover(side s) noexcept;
  void wake(side s) noexcept;
  void committed(side woken) noexcept;
  void wake_all() noexcept;
  void discard();

  std::size_t maxsize_;
  std::size_t capacity_;
  shared_block block_; // eventfd [getters]: not empty, [putters]: not full
  control* control_;
  unsigned char* data_;
  // Lower bounds of the other side's position, so a busy side rarely reads the other's
  // cache line. Only touched under this side's lock.
  std::uint64_t known_head_ = 0, known_tail_ = 0;
  std::string wrapped_; // a record that wraps around, made contiguous for the consumer
};

} // namespace coproc::detail
