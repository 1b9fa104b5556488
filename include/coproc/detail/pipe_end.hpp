// coproc/detail/pipe_end.hpp — one end of a pipe, behind coproc::connection.
#pragma once

#include <coproc/detail/deadline.hpp>
#include <coproc/awaitable.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace coproc::wire {
class output_archive;
class input_archive;
} // namespace coproc::wire

namespace coproc::detail {

class fd_departure;
class fd_arrival;

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

  // As a process argument (detail/travel.hpp): the socket goes into the departure, its
  // index and directions into the archive; std::invalid_argument once closed. arrive
  // rebuilds the end on the socket that came: the same socket, so the peer sees EOF only
  // once this copy too is closed.
  void travel(wire::output_archive& ar, fd_departure& fds);
  static std::shared_ptr<pipe_end> arrive(wire::input_archive& ar, fd_arrival& fds);

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

  // Atomic: close() may run on another thread than a waiting send or recv, which then
  // finds it -1 (std::logic_error) rather than a closed or reused descriptor's error.
  std::atomic<int> fd_;
  bool can_send_, can_recv_;
  // Receiving: in_[0, got_) holds the first bytes of a message of length_ bytes.
  std::string in_;
  std::uint64_t length_ = 0, got_ = 0;
  bool partial_ = false;  // a message is being assembled
  bool skipping_ = false; // dropping the pieces of a message whose start went elsewhere
  // Sending, under send_mutex_ (the background flusher may run on another thread than
  // the next send; close() drops the rest): the rest of a cancelled send, written before
  // any later message.
  std::mutex send_mutex_;
  std::string backlog_;
  outgoing backlog_out_;
  bool backlogged_ = false, flushing_ = false;
};

// Two connected ends: [0] and [1]; one-way: [0] receives, [1] sends.
void make_pipe_fds(int fds[2], bool duplex);

} // namespace coproc::detail
