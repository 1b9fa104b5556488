// coproc/queue.hpp — multiprocessing.Queue and Pipe, awaitable.
//
//   coproc::queue<std::string> q;                 // before the children start
//   coproc::process writer([](coproc::queue<std::string> q) -> coproc::awaitable<void> {
//     co_await q.put("A");
//   }, q);
//   writer.start();
//   std::string item = co_await q.get();
//
// A queue is a ring of variable-size items in shared memory (a memfd mapped MAP_SHARED,
// made by the constructor) that every process forked afterwards inherits, and that a spawn
// child given the queue as an argument maps too: any number of producers and
// consumers, each awaiting on its own io_context. No byte goes through the kernel on the
// fast path; a waiter sleeps in its io_context on an eventfd, and a busy queue makes no
// syscalls at all. Items are FIFO per producer and cross as the wire format
// (coproc/wire.hpp).
//
// Safe against kill -9: a process killed at any instant inside put or get loses at most
// its own in-flight item; nothing is duplicated or torn and no lock stays held (robust
// process-shared mutexes and a commit protocol, see detail/queue_ring.hpp). A waiter
// never depends on a killed process's wake-up: it looks again every 100 ms on its own.
//
// Cancellation: a put or get whose coroutine is cancelled while it waits (as the loser
// of `co_await (q.get() || timer)`) moves nothing and throws
// boost::system::system_error(operation_aborted). An item is in the queue exactly when
// its put returned; a timed-out put (queue_full) or a cancelled one may be retried.
//
// queue<T> and connection<T> are cheap copyable handles to one shared object: pass them
// by value to process targets. Coroutines of one process may share a handle. A fork child
// inherits them; a spawn (or forkserver) child gets them as arguments of its process
// (not inside another argument): their descriptors travel with the child, which works on
// the same shared memory, eventfds and socket, exactly as a fork child's copies do. They
// travel no other way: encoding one (to put it in a queue, send it on a connection or
// pass it to a pool task) does not compile (coproc/detail/travel.hpp).
//
// put takes const T&, not T: the item is encoded when put is
// called, so a temporary may be passed and the awaitable awaited later, and a large item
// is copied once, not twice.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/detail/pipe_end.hpp>
#include <coproc/detail/queue_ring.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace coproc {

// The shared ring's size when queue_options::capacity_bytes is 0: 1 MiB.
inline constexpr std::size_t default_queue_capacity = std::size_t{1} << 20;

struct queue_options {
  std::size_t maxsize = 0;        // items; 0: unbounded count (only the bytes bound it)
  std::size_t capacity_bytes = 0; // the ring's bytes (rounded up to 8); 0: default_queue_capacity
};

template <class T> class queue;
template <class T> class connection;

namespace wire::detail {
template <class T> inline constexpr bool process_argument_only<queue<T>> = true;
template <class T> inline constexpr bool process_argument_only<connection<T>> = true;
} // namespace wire::detail

namespace detail {
inline std::string& encode_scratch() {
  thread_local std::string scratch;
  return scratch;
}
// The item's bytes: its own for trivially copyable types, else encoded into scratch.
template <class T> std::string_view encode_item(const T& item, std::string& scratch) {
  if constexpr (wire::trivially_encoded<T>) {
    return {reinterpret_cast<const char*>(&item), sizeof(T)};
  } else {
    scratch.clear();
    wire::encode_into(scratch, item);
    return scratch;
  }
}
template <class T> void decode_item(void* out, std::string_view bytes) {
  static_cast<std::optional<T>*>(out)->emplace(wire::decode<T>(bytes));
}
} // namespace detail

template <class T> class queue {
public:
  // maxsize: at most that many items (0: no count limit), default capacity.
  explicit queue(std::size_t maxsize = 0) : queue(queue_options{maxsize, 0}) {}
  // std::invalid_argument if capacity_bytes is below 16 or above 2^40; std::system_error
  // if the shared memory or the eventfds cannot be made.
  explicit queue(queue_options options)
      : ring_(std::make_shared<detail::queue_ring>(options.maxsize, options.capacity_bytes == 0
                                                                        ? default_queue_capacity
                                                                        : options.capacity_bytes)) {
  }

  // Waits for room. The item is encoded before the call returns (it may be a temporary).
  // queue_closed if the queue is (or becomes) closed; std::length_error, naming both
  // sizes, if the item can never fit the capacity.
  awaitable<void> put(const T& item) {
    return put_until(ring_, pack(item), detail::deadline::never());
  }
  // queue_full if there is still no room after timeout.
  awaitable<void> put(const T& item, duration timeout) {
    return put_until(ring_, pack(item), detail::deadline::after(timeout));
  }
  // Waits for an item. Once the queue is closed, the items left are still returned, then
  // queue_closed. A malformed item is a coproc::error (and is consumed).
  awaitable<T> get() { return get_until(ring_, detail::deadline::never()); }
  // queue_empty if there is still no item after timeout.
  awaitable<T> get(duration timeout) { return get_until(ring_, detail::deadline::after(timeout)); }

  // queue_full / queue_empty instead of waiting.
  void put_nowait(const T& item) {
    auto s = ring_->try_put(detail::encode_item(item, detail::encode_scratch()));
    if (s == detail::queue_ring::status::closed)
      throw queue_closed("coproc::queue: put_nowait on a closed queue");
    if (s == detail::queue_ring::status::full)
      throw queue_full("coproc::queue: put_nowait on a full queue");
  }
  T get_nowait() {
    std::optional<T> out;
    auto s = ring_->try_get(&detail::decode_item<T>, &out);
    if (s == detail::queue_ring::status::closed)
      throw queue_closed("coproc::queue: get_nowait on a closed, empty queue");
    if (s == detail::queue_ring::status::empty)
      throw queue_empty("coproc::queue: get_nowait on an empty queue");
    return std::move(*out);
  }

  // Snapshots: other processes may change them at once.
  std::size_t qsize() const noexcept { return ring_->qsize(); }
  bool empty() const noexcept { return qsize() == 0; }
  // maxsize items are queued, or not even an empty item would fit the ring.
  bool full() const noexcept { return ring_->full(); }
  std::size_t maxsize() const noexcept { return ring_->maxsize(); }
  std::size_t capacity_bytes() const noexcept { return ring_->capacity_bytes(); }

  // Python 3.13's Queue.shutdown, for every process: puts fail with queue_closed from now
  // on, waiting puts too; gets drain what is left, then fail with queue_closed.
  // immediate: the items left are dropped as well, so every get fails at once, waiting
  // gets in every process too. Irreversible.
  void shutdown(bool immediate = false) { ring_->shutdown(immediate); }
  // shutdown(false).
  void close() { ring_->shutdown(false); }
  bool closed() const noexcept { return ring_->closed(); }

private:
  using ring_ptr = std::shared_ptr<detail::queue_ring>;

  friend struct detail::travel_access;
  explicit queue(ring_ptr ring) noexcept : ring_(std::move(ring)) {}
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { ring_->travel(ar, fds); }
  static queue arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return queue(detail::queue_ring::arrive(ar, fds));
  }

  // What a put carries until it is awaited: the value itself when its bytes are its
  // encoding, else the encoding.
  using packed = std::conditional_t<wire::trivially_encoded<T>, T, std::string>;
  static packed pack(const T& item) {
    if constexpr (wire::trivially_encoded<T>) return item;
    else return wire::encode(item);
  }

  static awaitable<void> put_until(ring_ptr ring, packed item, detail::deadline until) {
    std::string_view bytes;
    if constexpr (wire::trivially_encoded<T>)
      bytes = {reinterpret_cast<const char*>(&item), sizeof(T)};
    else bytes = item;
    auto s = ring->try_put(bytes);
    if (s == detail::queue_ring::status::ok) co_return;
    if (s == detail::queue_ring::status::closed)
      throw queue_closed("coproc::queue: put on a closed queue");
    co_await ring->put(bytes, until);
  }

  static awaitable<T> get_until(ring_ptr ring, detail::deadline until) {
    std::optional<T> out;
    if (ring->try_get(&detail::decode_item<T>, &out) != detail::queue_ring::status::ok)
      co_await ring->get(&detail::decode_item<T>, &out, until);
    co_return std::move(*out);
  }

  ring_ptr ring_;
};

// The largest message (its encoded bytes) a connection carries: 4 GiB. A receiver takes
// memory as a message's bytes arrive, never on the word of its header.
inline constexpr std::size_t max_message_bytes = detail::pipe_end::max_message;

// One end of a pipe (multiprocessing.connection.Connection): messages are whole T values.
// Both ends live in every process forked after pipe(), and in a spawn child that gets one
// as an argument; as with Python, recv reports EOF only once every copy of the other end
// is closed, so a process closes the ends it does not use (the parent, after starting a
// child with one end, closes that end). A peer
// killed by SIGKILL counts as closed: the kernel closes its descriptors.
//
// Processes sharing an end: poll reads nothing and recv reads only the records of its own
// message, so a process that polls, receives or exits never takes another's message. A
// message of up to 64 KiB - 8 encoded bytes is one record, atomic in the kernel: with
// several processes receiving from one end at once (or sending on it), each such message
// goes whole to exactly one receiver. A larger message is several records and needs one
// sender and one receiver per end at a time; a receiver that gets a piece without its
// start, or a start cut short, reports a coproc::error, not a wrong message. Within a
// process: one sender and one receiver per end at a time.
//
// Cancellation: a send cancelled before its first record went out has no effect; once the
// receiver may hold part of it, the rest is sent in the background, on the send's
// executor, before any later send on this end in this process (close() drops it;
// block_on does not return before it is out). A cancelled recv consumes nothing it does not return:
// what had arrived of its message goes to the next recv.
template <class T> class connection {
public:
  // std::logic_error on a receive-only end or after close(); std::system_error (EPIPE)
  // if the other end is closed everywhere; std::length_error above max_message_bytes.
  awaitable<void> send(T item) { return send_on(end_, std::move(item)); }
  // eof_error once the other end is closed everywhere and every message was read; a
  // malformed, truncated, torn or oversized message is a coproc::error.
  awaitable<T> recv() { return recv_on(end_); }
  // Whether a message has begun to arrive (or the other end is closed everywhere),
  // waiting up to timeout. Reads nothing.
  awaitable<bool> poll(duration timeout = duration::zero()) {
    return end_->poll(detail::deadline::after(timeout));
  }
  // Closes this end in this process, for every handle to it here. Idempotent.
  void close() noexcept { end_->close(); }

private:
  template <class U> friend std::pair<connection<U>, connection<U>> pipe(bool);
  friend struct detail::travel_access;
  explicit connection(std::shared_ptr<detail::pipe_end> end) : end_(std::move(end)) {}
  void travel(wire::output_archive& ar, detail::fd_departure& fds) const { end_->travel(ar, fds); }
  static connection arrive(wire::input_archive& ar, detail::fd_arrival& fds) {
    return connection(detail::pipe_end::arrive(ar, fds));
  }

  static awaitable<void> send_on(std::shared_ptr<detail::pipe_end> end, T item) {
    if constexpr (wire::trivially_encoded<T>) {
      std::string_view bytes(reinterpret_cast<const char*>(&item), sizeof(T));
      co_await end->send(bytes);
    } else {
      std::string payload = wire::encode(item);
      co_await end->send(payload);
    }
  }
  static awaitable<T> recv_on(std::shared_ptr<detail::pipe_end> end) {
    auto frame = co_await end->recv();
    co_return wire::decode<T>(frame);
  }

  std::shared_ptr<detail::pipe_end> end_;
};

// multiprocessing.Pipe: duplex, both ends send and receive; one-way (duplex = false), the
// first end receives and the second sends. std::system_error if the socketpair fails.
template <class T> std::pair<connection<T>, connection<T>> pipe(bool duplex = true) {
  int fds[2];
  detail::make_pipe_fds(fds, duplex);
  auto first = std::make_shared<detail::pipe_end>(fds[0], duplex, true);
  auto second = std::make_shared<detail::pipe_end>(fds[1], true, duplex);
  return {connection<T>(std::move(first)), connection<T>(std::move(second))};
}

} // namespace coproc
