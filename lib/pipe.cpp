#include <coproc/detail/fd_wait.hpp>
#include <coproc/detail/pipe_end.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include "os.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace coproc::detail {

namespace {

constexpr std::uint64_t continued = std::uint64_t{1} << 63; // a record that is not a first

std::string pid_text() { return "(pid " + std::to_string(::getpid()) + ")"; }
} // namespace

void make_pipe_fds(int fds[2], bool duplex) {
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0)
    throw_errno(errno, "coproc::pipe: socketpair");
  if (!duplex) {
    ::shutdown(fds[0], SHUT_WR);
    ::shutdown(fds[1], SHUT_RD);
  }
}

pipe_end::~pipe_end() { close(); }

void pipe_end::close() noexcept {
  std::lock_guard lock(send_mutex_); // the background flusher may be writing
  const int fd = fd_.exchange(-1);
  if (fd < 0) return;
  forget_fd(fd);
  ::close(fd);
  // A wait on another thread that read the descriptor before the exchange may have
  // registered it again between the two calls: a registration of a closed file, which the
  // next file with that number would inherit and never be woken through.
  forget_fd(fd);
  backlogged_ = false; // a cancelled send's rest goes no further
  backlog_.clear();
}

void pipe_end::travel(wire::output_archive& ar, fd_departure& fds) {
  std::uint32_t index;
  {
    std::lock_guard lock(send_mutex_); // close() may run on another thread
    if (fd_ < 0)
      throw std::invalid_argument("a closed coproc::connection cannot be passed to a child");
    index = fds.add(fd_);
  }
  ar(index, can_send_, can_recv_);
}

std::shared_ptr<pipe_end> pipe_end::arrive(wire::input_archive& ar, fd_arrival& fds) {
  std::uint32_t index = 0;
  bool can_send = false, can_recv = false;
  ar(index, can_send, can_recv);
  return fds.object<pipe_end>(
      index, [&] { return std::make_shared<pipe_end>(fds.fd(index), can_send, can_recv); });
}

void pipe_end::check_open(const char* what) const {
  if (fd_ < 0)
    throw std::logic_error(std::string("coproc::connection::") + what + " on a closed connection");
}

bool pipe_end::write(outgoing& out) {
  do {
    const std::size_t chunk = std::min(out.bytes.size() - out.sent, record_payload);
    const std::uint64_t word = out.started ? continued | (out.base + out.sent) : out.bytes.size();
    iovec iov[2] = {{const_cast<std::uint64_t*>(&word), 8},
                    {const_cast<char*>(out.bytes.data() + out.sent), chunk}};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return false;
      if (err == EBADF) check_open("send"); // closed by another thread meanwhile
      const bool gone = err == EPIPE || err == ECONNRESET || err == ECONNREFUSED || err == ENOTCONN;
      throw_errno(err, "coproc::connection::send " + pid_text() +
                           (gone ? ": the other end is closed" : ""));
    }
    out.started = true; // a record is written whole or not at all
    out.sent += chunk;
  } while (out.sent < out.bytes.size());
  return true;
}

bool pipe_end::drain_backlog() {
  if (!backlogged_) return true;
  try {
    if (!write(backlog_out_)) return false;
  } catch (...) {
    backlogged_ = false; // the peer is gone: the caller reports it, the rest is moot
    backlog_.clear();
    throw;
  }
  backlogged_ = false;
  backlog_.clear();
  return true;
}

// The receiver has the message's first records: cutting it short would tear the stream,
// so its rest is copied and sent by a coroutine of its own. Caller holds send_mutex_.
void pipe_end::hand_off(const outgoing& out, const boost::asio::any_io_executor& ex) {
  backlog_.assign(out.bytes.substr(out.sent));
  backlog_out_ = outgoing{backlog_, out.base + out.sent, 0, true};
  backlogged_ = true;
  if (flushing_) return;
  flushing_ = true;
  // Posted: co_spawn may start the flusher at once on this thread, and it takes
  // send_mutex_, which the caller holds.
  boost::asio::post(ex, [self = shared_from_this(), ex] {
    boost::asio::co_spawn(ex, flush(self), boost::asio::detached);
  });
}

// It may run on another thread than the next send (an io_context run by several
// threads): send_mutex_ orders its writes with theirs, and it stops being the flusher in
// the same step in which it finds nothing left, so a rest handed off meanwhile is not
// left without one.
awaitable<void> pipe_end::flush(std::shared_ptr<pipe_end> self) {
  try {
    for (;;) {
      int fd;
      {
        std::lock_guard lock(self->send_mutex_);
        fd = self->fd_;
        if (fd < 0 || self->drain_backlog()) {
          self->flushing_ = false;
          fd = -1;
        }
      }
      if (fd < 0) break;
      co_await wait_writable(fd, deadline::never());
    }
  } catch (...) {
    // The peer is gone or the io_context shuts down; a later send reports the former.
    std::lock_guard lock(self->send_mutex_);
    self->flushing_ = false;
  }
}

awaitable<void> pipe_end::send(std::string_view payload) {
  check_open("send");
  if (!can_send_)
    throw std::logic_error("coproc::connection::send on the receive-only end of a one-way pipe");
  if (payload.size() > max_message)
    throw std::length_error("coproc::connection::send: a message of " +
                            std::to_string(payload.size()) + " bytes is larger than the limit of " +
                            std::to_string(max_message) + " bytes");
  auto ex = co_await boost::asio::this_coro::executor;
  outgoing out{payload};
  for (;;) {
    bool sent;
    {
      std::lock_guard lock(send_mutex_); // (no co_return in a lock's scope: g++ 12)
      check_open("send");
      sent = drain_backlog() && write(out);
    }
    if (sent) break;
    try {
      // Throws operation_aborted when this coroutine is cancelled: nothing more is written.
      co_await wait_writable(fd_, deadline::never());
    } catch (...) {
      std::lock_guard lock(send_mutex_);
      if (out.started && fd_ >= 0) hand_off(out, ex);
      throw;
    }
  }
}

pipe_end::got pipe_end::read_record(std::uint64_t& word, std::size_t& n, std::size_t at) {
  // Room for a whole record, grown with what has arrived, never with what is announced.
  if (in_.size() < at + record_payload)
    in_.resize(std::max<std::size_t>(at + record_payload,
                                     std::min<std::uint64_t>(2 * in_.size(), length_)));
  iovec iov[2] = {{&word, 8}, {in_.data() + at, record_payload}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  for (;;) {
    ssize_t r = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (r > 0) {
      if (r < 8 || (msg.msg_flags & MSG_TRUNC) != 0)
        throw coproc::error("coproc::connection::recv: malformed record of " + std::to_string(r) +
                            " bytes " + pid_text());
      n = static_cast<std::size_t>(r) - 8;
      return got::record;
    }
    if (r == 0) return got::end;
    int err = errno;
    // ECONNRESET: the peer died with unread records; it is reported once, before the
    // records still queued here.
    if (err == EINTR || err == ECONNRESET) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) return got::nothing;
    if (err == EBADF) check_open("recv"); // closed by another thread meanwhile
    throw_errno(err, "coproc::connection::recv " + pid_text());
  }
}

bool pipe_end::take(std::uint64_t word, std::size_t n) {
  if ((word & continued) != 0) {
    const std::uint64_t offset = word & ~continued;
    if (skipping_) return false;
    if (!partial_ || offset != got_ || n > length_ - got_) {
      const bool had = partial_;
      partial_ = false;
      skipping_ = true;
      throw coproc::error("coproc::connection::recv: a piece at offset " + std::to_string(offset) +
                          " of a message whose start " +
                          (had ? "was a different message" : "this end did not receive") +
                          " (several processes receiving large messages at once?) " + pid_text());
    }
    got_ += n;
    return got_ == length_;
  }
  skipping_ = false;
  if (partial_) {
    // The sender of the message being assembled stopped half-way; this record starts the
    // next message, kept for the next recv.
    const std::uint64_t had = got_, of = length_;
    std::memmove(in_.data(), in_.data() + got_, n);
    partial_ = false;
    got_ = 0;
    (void)take(word, n); // if already complete, the next recv returns it at once
    throw coproc::error("coproc::connection::recv: a message of " + std::to_string(of) +
                        " bytes was cut short after " + std::to_string(had) + " bytes " +
                        pid_text());
  }
  if (word > max_message)
    throw coproc::error("coproc::connection::recv: malformed frame announcing " +
                        std::to_string(word) + " bytes (the limit is " +
                        std::to_string(max_message) + ") " + pid_text());
  if (n > word)
    throw coproc::error("coproc::connection::recv: malformed frame announcing " +
                        std::to_string(word) + " bytes with " + std::to_string(n) +
                        " in its first record " + pid_text());
  length_ = word;
  got_ = n;
  partial_ = true;
  return got_ == length_;
}

awaitable<std::string_view> pipe_end::recv() {
  check_open("recv");
  if (!can_recv_)
    throw std::logic_error("coproc::connection::recv on the send-only end of a one-way pipe");
  if (partial_ && got_ == length_) { // completed by the record that cut the previous one short
    partial_ = false;
    co_return std::string_view(in_.data(), length_);
  }
  for (;;) {
    std::uint64_t word = 0;
    std::size_t n = 0;
    switch (read_record(word, n, partial_ ? got_ : 0)) {
    case got::record:
      if (take(word, n)) {
        partial_ = false;
        co_return std::string_view(in_.data(), length_);
      }
      break;
    case got::end:
      if (partial_) {
        partial_ = false; // a later recv looks again (and finds the end again)
        throw coproc::error(
            "coproc::connection::recv: the peer closed in the middle of a frame, after " +
            std::to_string(got_) + " of " + std::to_string(length_) + " bytes " + pid_text());
      }
      throw eof_error();
    case got::nothing:
      // Throws operation_aborted when this coroutine is cancelled, so no record is read
      // for a canceller that would drop it.
      co_await wait_readable(fd_, deadline::never());
      check_open("recv");
      break;
    }
  }
}

awaitable<bool> pipe_end::poll(deadline until) {
  check_open("poll");
  if (!can_recv_)
    throw std::logic_error("coproc::connection::poll on the send-only end of a one-way pipe");
  auto ready = [this] {
    char byte;
    for (;;) {
      ssize_t r = ::recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (r >= 0) return true; // a record, or the end
      if (errno != EINTR && errno != ECONNRESET) return false;
    }
  };
  if (partial_ && got_ == length_) co_return true;
  for (;;) {
    if (ready()) co_return true;
    if (until.passed()) co_return false;
    bool woke = co_await wait_readable(fd_, until);
    check_open("poll");
    if (!woke) co_return ready(); // one last look at the deadline
  }
}

} // namespace coproc::detail
