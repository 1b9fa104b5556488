// coproc/detail/queue_ring.hpp — the shared-memory ring behind coproc::queue, and the
// descriptor waits behind queue and connection.
//
// The ring is one MAP_SHARED mapping made by the process that creates the queue and
// inherited by every process forked afterwards: a control block, then `capacity` bytes
// of records ([u64 length][payload, padded to 8]; a record may wrap around the end).
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
// io_context. A waiter counts itself in and clears the direction's `wake_pending` flag
// before it looks again; the other side, after a commit and still under its lock, writes
// the eventfd only when someone waits and no wake-up is already on its way, so a busy
// queue makes no syscalls and a burst makes one. The eventfds count tokens
// (EFD_SEMAPHORE): one per sleeper, each woken sleeper takes one, so sleepers of every
// process are woken and none keeps waking up on a readable eventfd. A waiter whose
// coroutine is cancelled takes no token and tries nothing more: a cancelled put or get
// has no effect, and the token written for it stays for the other sleepers (one spare
// wake-up, never a missed one).
//
// A process killed between its commit and that write wakes nobody, and the other side
// may never lock again (it was the only producer): so no sleeper depends on it. Every
// wait also ends after `recheck_interval` (100 ms, lib/queue.cpp) and the waiter looks
// again, finding the committed item or room by itself; a sleeper costs one wake-up per
// interval, not a spin. The next process to lock the dead one's side still finds it
// (EOWNERDEAD), finishes its count and wakes the sleepers at once. A waiter killed while
// asleep leaves its count behind, which costs at most one spare write per burst.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/deadline.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace coproc::detail {

// Sleeps on the awaiting coroutine's io_context until fd becomes readable (writable), or
// the deadline passes (false). The fd stays registered with that io_context until it
// ends or forget_fd(fd); a wake-up may be spurious, callers look again. A cancelled wait
// (the awaiting coroutine's cancellation state is cancelled when it ends, however it
// ended) throws boost::system::system_error(operation_aborted), so the caller does
// nothing more.
awaitable<bool> wait_readable(int fd, deadline until);
awaitable<bool> wait_writable(int fd, deadline until);
// Before closing an fd that may have been waited on: drops this process's registrations.
void forget_fd(int fd) noexcept;

class queue_ring {
public:
  enum class status { ok, full, empty, closed };
  // Called under the consumers' lock with one item's bytes; it may throw (the item is
  // consumed all the same).
  using consumer = void (*)(void* context, std::string_view bytes);

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

  void close();
  bool closed() const noexcept;
  std::size_t qsize() const noexcept;
  bool full() const noexcept;
  std::size_t maxsize() const noexcept { return maxsize_; }
  std::size_t capacity_bytes() const noexcept { return capacity_; }
  // The ring space one item of this many bytes takes.
  static std::size_t record_size(std::size_t bytes) noexcept { return 8 + ((bytes + 7) & ~std::size_t{7}); }

  // Test hook: this process raises SIGKILL right after its next commit (a put's or a
  // get's), before it wakes the other side's sleepers, as a process killed at that
  // instant would.
  static void kill_after_next_commit() noexcept;

private:
  struct control;
  enum side { getters = 0, putters = 1 };
  void lock(side s);
  void unlock(side s) noexcept;
  void recover(side s) noexcept;
  void signal(side s, std::uint64_t tokens) noexcept;
  void take_token(side s) noexcept;
  void wake(side s) noexcept;
  void committed(side woken) noexcept;
  void wake_all() noexcept;

  control* control_ = nullptr;
  unsigned char* data_ = nullptr;
  std::size_t map_size_ = 0;
  std::size_t maxsize_;
  std::size_t capacity_;
  int event_fd_[2] = {-1, -1}; // [getters]: not empty, [putters]: not full
  // Lower bounds of the other side's position, so a busy side rarely reads the other's
  // cache line. Only touched under this side's lock.
  std::uint64_t known_head_ = 0, known_tail_ = 0;
  std::string wrapped_; // a record that wraps around, made contiguous for the consumer
};

// One end of a pipe in this process: a non-blocking AF_UNIX SOCK_SEQPACKET socket. A
// message is one or more records, each at most record_bytes long: the first is
// [u64 length][the first bytes], each further one [u64 continued | offset][the next bytes].
// A record is atomic in the kernel: it is written whole or not at all, and one receiver
// reads it whole, so nothing of the next message is ever read ahead of its recv, and a
// message that fits one record goes whole to exactly one receiver even when several
// processes send or receive on the end at once.
class pipe_end : public std::enable_shared_from_this<pipe_end> {
public:
  static constexpr std::size_t record_bytes = 64 * 1024;
  static constexpr std::size_t record_payload = record_bytes - 8;
  static constexpr std::uint64_t max_message = std::uint64_t{1} << 32;

  pipe_end(int fd, bool can_send, bool can_recv) noexcept
      : fd_(fd), can_send_(can_send), can_recv_(can_recv) {}
  pipe_end(const pipe_end&) = delete;
  pipe_end& operator=(const pipe_end&) = delete;
  ~pipe_end();

  // Sends one message; std::system_error (EPIPE) if the peer is gone, std::length_error
  // above max_message. Cancelled before its first record, it has no effect; cancelled
  // later, the rest is sent in the background, before anything sent after it.
  awaitable<void> send(std::string_view payload);
  // Waits for a whole message; the view stays valid until the next call on this end.
  // eof_error when the peer closed, coproc::error for a truncated, torn or oversized one.
  // Cancelled, it keeps what arrived of its message for the next recv.
  awaitable<std::string_view> recv();
  // Whether a record (or the end) is there; reads nothing.
  awaitable<bool> poll(deadline until);
  void close() noexcept;
  bool can_send() const noexcept { return can_send_; }
  bool can_recv() const noexcept { return can_recv_; }

private:
  // A message on its way out: bytes [sent, size) are still to go; `base` is the offset of
  // bytes[0] in the message (a rest handed to the background starts past 0).
  struct outgoing {
    std::string_view bytes;
    std::uint64_t base = 0;
    std::size_t sent = 0;
    bool started = false;
  };
  // Sends records until the message is out (true) or the socket is full (false).
  bool write(outgoing& out);
  // Writes what a cancelled send left; true once nothing is left.
  bool drain_backlog();
  void hand_off(const outgoing& out, const boost::asio::any_io_executor& ex);
  static awaitable<void> flush(std::shared_ptr<pipe_end> self);
  enum class got { record, nothing, end };
  // Reads one record without waiting: its payload goes to in_ at `at`.
  got read_record(std::uint64_t& word, std::size_t& n, std::size_t at);
  // Takes one record into the message being assembled; true when it is complete.
  bool take(std::uint64_t word, std::size_t n);
  void check_open(const char* what) const;

  int fd_;
  bool can_send_, can_recv_;
  // Receiving: in_[0, got_) holds the first bytes of a message of length_ bytes.
  std::string in_;
  std::uint64_t length_ = 0, got_ = 0;
  bool partial_ = false; // a message is being assembled
  bool skipping_ = false; // dropping the pieces of a message whose start went elsewhere
  // Sending: the rest of a cancelled send, written before any later message.
  std::string backlog_;
  outgoing backlog_out_;
  bool backlogged_ = false, flushing_ = false;
};

// Two connected ends: [0] and [1]; one-way: [0] receives, [1] sends.
void make_pipe_fds(int fds[2], bool duplex);

} // namespace coproc::detail
