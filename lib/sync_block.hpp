// lib/sync_block.hpp — what every synchronization object of coproc/sync.hpp stands on
// (private: not installed). Its home is lib/sync_block.cpp.
//
// A sync_block is a shared_block (coproc/detail/shared_block.hpp: one memfd, mapped
// MAP_SHARED, and here one eventfd): all the state of one lock, semaphore, event,
// condition, barrier, value or array lives in that mapping, so the two descriptors are all
// another process needs (a forked child inherits both, a fresh image gets them as a
// process argument).
//
// Processes are named by an identity, (start time << 22) | pid: a pid alone may be reused
// by a stranger once its process is gone; its start time (in clock ticks since boot, from
// /proc/<pid>/stat) tells the two apart.
//
// Sleepers: a waiter counts itself in (`sleeper`), then looks at the state again, then
// sleeps on the eventfd in its own io_context. Whoever changes the state calls wake()
// afterwards: a seq_cst fence, then one token per counted sleeper (EFD_SEMAPHORE), so
// either the waiter's second look sees the change or the changer sees the waiter — no lost
// wake-up — and sleepers of every process wake (Asio would never let a wait on an eventfd
// that stays readable sleep: each sleeper takes exactly one token). A sleeper killed while
// counted in would make every later wake() write a token nobody takes: so each process
// counts its sleepers in a slot of its own (`waiter_slot`, 15 of them), and
// reclaim_dead_waiters() takes back the counts of processes that died.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/deadline.hpp>
#include <coproc/detail/shared_block.hpp>

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace coproc::wire {
class output_archive;
class input_archive;
} // namespace coproc::wire

namespace coproc::detail {

class fd_departure;
class fd_arrival;

// This process's identity (cached; a forked child computes its own).
std::uint64_t self_identity() noexcept;
// Drops the cache: for a child forked without the atfork handlers (lib/forkserver.cpp).
void forget_self_identity() noexcept;
inline int identity_pid(std::uint64_t identity) noexcept {
  return static_cast<int>(identity & ((1u << 22) - 1));
}
// Whether the process with this identity still runs (a zombie does not).
bool identity_alive(std::uint64_t identity) noexcept;

// A pidfd on a process known by its identity, to sleep until it exits. fd is -1 when
// pidfds are refused (ENOSYS, EPERM): then the process is only polled.
class process_watch {
public:
  enum class result { watching, dead, unsupported };
  // dead when the process has exited (or its pid now names another process).
  static result open(std::uint64_t identity, std::shared_ptr<process_watch>& out);
  ~process_watch();
  process_watch(const process_watch&) = delete;
  process_watch& operator=(const process_watch&) = delete;
  int fd() const noexcept { return fd_; }
  // Non-blocking: has the process exited?
  bool exited() const noexcept;
  std::uint64_t identity() const noexcept { return identity_; }

private:
  process_watch(std::uint64_t identity, int fd) : identity_(identity), fd_(fd) {}
  std::uint64_t identity_;
  int fd_;
};

class sync_block {
public:
  // A block of `bytes` of zeroed shared state (after the block's own header); `what`
  // names the object in messages ("coproc::lock").
  sync_block(std::size_t bytes, std::size_t align, const char* what);
  sync_block(const sync_block&) = delete;
  sync_block& operator=(const sync_block&) = delete;

  void* state() const noexcept { return state_; }
  const char* what() const noexcept { return block_.what(); }

  // As a process argument (detail/travel.hpp). arrive rebuilds the block once per child
  // (a value and its lock share one) on the descriptors that came; coproc::error unless
  // they are a block of `what`'s kind with at least `bytes` of state.
  void travel(wire::output_archive& ar, fd_departure& fds) const;
  // `key` names the block in the arrival (its memfd's index), for the objects on it.
  static std::shared_ptr<sync_block> arrive(wire::input_archive& ar, fd_arrival& fds,
                                            std::size_t bytes, const char* what,
                                            std::uint32_t& key);

  // Counts one sleeper of this process in, for its lifetime.
  class sleeper {
  public:
    explicit sleeper(sync_block& block);
    ~sleeper();
    sleeper(const sleeper&) = delete;
    sleeper& operator=(const sleeper&) = delete;

  private:
    sync_block& block_;
    int slot_;
  };

  std::uint32_t waiters() const noexcept;
  // After a change sleepers may be waiting for: wakes every counted sleeper.
  void wake() noexcept;
  // Sleeps until woken, the deadline, or `recheck` (whichever is first), and also until
  // `watch`'s process exits if given. True if woken (maybe spuriously: look again).
  // With take_token false, a wake-up leaves its token for take_token(): the lock takes it
  // only when the wake-up was for it (see lib/sync_lock.cpp).
  // Cancelled: boost::system::system_error(operation_aborted).
  awaitable<bool> sleep(deadline until, std::chrono::milliseconds recheck,
                        std::shared_ptr<process_watch> watch = nullptr, bool take_token = true);
  // Sleeps on a timer only, leaving the tokens alone.
  awaitable<void> nap(deadline until);
  void take_token() noexcept;
  // Takes back the sleeper counts of processes that died counted in.
  void reclaim_dead_waiters() noexcept;

  // Adopts a block that arrived (arrive).
  sync_block(const shared_block::description& d, fd_arrival& fds, std::uint64_t state_offset,
             std::size_t bytes, const char* what);

private:
  struct header;
  int claim_slot(std::uint64_t me) noexcept;
  static std::size_t state_offset_for(std::size_t align) noexcept;

  std::size_t state_offset_;
  shared_block block_;
  header* header_;
  void* state_;
  std::mutex slots_mutex_; // this process's coroutines share its slot
};

// The point `recheck` from now, or until if that is sooner.
deadline sooner(deadline until, std::chrono::steady_clock::duration recheck);
// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
std::int64_t monotonic_ns() noexcept;

// A robust process-shared mutex in shared memory, held only across synchronous code (never
// across a co_await). lock() returns true when the previous holder died holding it.
void init_robust_mutex(pthread_mutex_t* m, const char* what);
bool lock_robust_mutex(pthread_mutex_t* m, const char* what);

} // namespace coproc::detail
