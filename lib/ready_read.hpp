// A stream socket read that costs no failed read per message (the pool's answers): the
// parent of a request/answer loop otherwise pays an EAGAIN every round trip.
//
// Asio 1.81's async_read_some tries its read before it waits, and its reactor tries again
// after every event: its read op tells the reactor that the socket is empty only at the end
// of the stream. This op can say so after any short read (done_and_exhausted): the reactor
// then queues the next read without trying it, and tries it on the next event. Bytes are
// never missed, also on an io_context run by several threads (an event taken while no read
// is queued makes the reactor try the next read at once), but the peer's closing is: its
// event may come with the last bytes, and no event follows. It uses Asio's reactor
// interface (boost/asio/detail), which the epoll reactor of Boost 1.81 has.
#pragma once

#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/query.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <cstddef>
#include <memory>
#include <span>
#include <utility>

#if !defined(BOOST_ASIO_HAS_EPOLL) || defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT)
#error "coproc reads its pool workers' sockets through Asio's epoll reactor"
#endif

namespace coproc::detail {

class ready_read_socket : public boost::asio::local::stream_protocol::socket {
public:
  using boost::asio::local::stream_protocol::socket::socket;

  // Reads into `room` what the socket holds once it holds something, then calls
  // done(error_code, bytes) as the io_context runs (0 bytes: the peer closed its end).
  // A closed socket, close() or cancel() meanwhile completes with an error. One read at a
  // time. With `skip_after_short`, the caller must end the read itself once the peer has
  // closed: the event of its closing may have come with the last bytes.
  template <class Done>
  void async_read_ready(std::span<char> room, bool skip_after_short, Done done) {
    namespace asio = boost::asio;
    auto& reactor = asio::use_service<asio::detail::reactor>(
        asio::query(get_executor(), asio::execution::context));
    auto* op = new read_op<Done>(native_handle(), room, skip_after_short, std::move(done));
    reactor.start_op(asio::detail::reactor::read_op, native_handle(),
                     impl_.get_implementation().reactor_data_, op, false, true);
  }

private:
  template <class Done> struct read_op final : boost::asio::detail::reactor_op {
    read_op(int fd, std::span<char> room, bool skip_after_short, Done done)
        : reactor_op(boost::system::error_code(), &perform, &complete), fd(fd), room(room),
          skip_after_short(skip_after_short), handler(std::move(done)) {}

    static status perform(reactor_op* base) {
      auto* op = static_cast<read_op*>(base);
      ssize_t n;
      do n = ::recv(op->fd, op->room.data(), op->room.size(), MSG_DONTWAIT);
      while (n < 0 && errno == EINTR);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return not_done;
      if (n < 0) {
        op->ec_ = boost::system::error_code(errno, boost::system::system_category());
        return done;
      }
      op->bytes_transferred_ = static_cast<std::size_t>(n);
      bool empty = n == 0 || (op->skip_after_short && op->bytes_transferred_ < op->room.size());
      return empty ? done_and_exhausted : done;
    }

    // owner is null when the io_context is destroyed with the op queued.
    static void complete(void* owner, boost::asio::detail::scheduler_operation* base,
                         const boost::system::error_code&, std::size_t) {
      std::unique_ptr<read_op> op(static_cast<read_op*>(base));
      if (!owner) return;
      auto ec = op->ec_;
      std::size_t n = op->bytes_transferred_;
      Done handler = std::move(op->handler);
      op.reset();
      handler(ec, n);
    }

    int fd;
    std::span<char> room;
    bool skip_after_short;
    Done handler;
  };
};

} // namespace coproc::detail
