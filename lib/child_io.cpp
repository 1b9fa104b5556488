// Streams and waits for children (see child_io.hpp).
#include "child_io.hpp"

#include "os.hpp"
#include "spawn.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

namespace coproc::detail {

namespace asio = boost::asio;
using asio::use_awaitable;

namespace {

constexpr std::size_t default_pipe_size = 64 * 1024;

// Bulk transfers go through 1 MiB pipes (the unprivileged maximum by default): 16
// times fewer syscalls and wake-ups than the default 64 KiB. The kernel may refuse
// (a user over pipe-user-pages-soft); the pipe then keeps its size. Returns the size.
std::size_t enlarge(int fd) {
  int size = ::fcntl(fd, F_SETPIPE_SZ, 1024 * 1024);
  if (size < 0) size = ::fcntl(fd, F_GETPIPE_SZ);
  return size > 0 ? static_cast<std::size_t>(size) : default_pipe_size;
}

// write(2) with SIGPIPE blocked for this thread: a reader that went away is EPIPE, not
// the death of this process. A SIGPIPE the write raised is consumed before unblocking.
ssize_t write_without_sigpipe(int fd, const char* data, std::size_t size) {
  sigset_t pipe_only, old, pending;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  sigpending(&pending);
  bool was_pending = sigismember(&pending, SIGPIPE);
  ssize_t n = ::write(fd, data, size);
  int err = errno;
  if (n < 0 && err == EPIPE && !was_pending) {
    timespec zero{};
    while (::sigtimedwait(&pipe_only, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = err;
  return n;
}

// Large output buffers are backed by transparent huge pages where the system allows it
// (the default "madvise" mode): a bulk read faults in a 2 MiB page where it would fault
// 512 small ones, which otherwise costs as much as the reads themselves. Best effort:
// the whole 2 MiB pages inside the buffer.
void prefer_huge_pages(char* data, std::size_t size) {
  constexpr std::uintptr_t huge = 2 * 1024 * 1024;
  auto begin = (reinterpret_cast<std::uintptr_t>(data) + huge - 1) & ~(huge - 1);
  auto end = (reinterpret_cast<std::uintptr_t>(data) + size) & ~(huge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

} // namespace

// Writes data[offset..] and closes the pipe. offset survives a cancellation, so a
// later call goes on where this one stopped. A child that stops reading gets the
// rest dropped, as in Python.
awaitable<void> write_all(asio::writable_pipe& pipe, std::string_view data, std::size_t& offset,
                          int pid) {
  if (data.size() - offset > default_pipe_size) enlarge(pipe.native_handle());
  // A writable_pipe can only wait for room through its writes, which would raise SIGPIPE:
  // a duplicate of the descriptor waits instead. It lives only as long as this call (an
  // open duplicate would keep the child from seeing the end of its input).
  std::optional<asio::posix::stream_descriptor> room;
  while (offset < data.size()) {
    ssize_t n =
        write_without_sigpipe(pipe.native_handle(), data.data() + offset, data.size() - offset);
    if (n >= 0) {
      offset += static_cast<std::size_t>(n);
    } else if (errno == EAGAIN) {
      if (!room) {
        unique_fd fd(::fcntl(pipe.native_handle(), F_DUPFD_CLOEXEC, 0));
        if (fd.fd < 0)
          throw_errno(errno, "coproc: waiting to write to the stdin of pid " + std::to_string(pid));
        room.emplace(pipe.get_executor(), fd.fd);
        fd.release();
      }
      co_await room->async_wait(asio::posix::descriptor_base::wait_write, use_awaitable);
    } else if (errno == EPIPE) {
      offset = data.size();
    } else if (errno != EINTR) {
      throw_errno(errno, "coproc: writing to the stdin of pid " + std::to_string(pid));
    }
  }
  room.reset();
  pipe.close();
}

// Appends everything up to EOF to into, then closes the pipe. What was read stays in
// into if the read is cancelled.
awaitable<void> read_all(asio::readable_pipe& pipe, std::string& into, int pid) {
  std::size_t min_free = default_pipe_size;
  bool enlarged = false;
  std::size_t filled = into.size();
  // Read in place. The capacity grows fourfold (fewer reallocations, each copying and
  // faulting in everything read so far: the cost that dominates bulk output), while
  // only the next read's room is zero-filled, so untouched capacity costs address
  // space rather than memory. The unfilled tail is cut off however this ends.
  struct trim {
    std::string& s;
    std::size_t& n;
    ~trim() { s.resize(n); }
  } trim_tail{into, filled};
  for (;;) {
    if (into.size() - filled < min_free) {
      if (into.capacity() < filled + min_free) {
        into.reserve(std::max(into.capacity() * 4, filled + min_free));
        if (enlarged) prefer_huge_pages(into.data(), into.capacity());
      }
      into.resize(filled + min_free);
    }
    auto buffer = asio::buffer(into.data() + filled, into.size() - filled);
    auto [ec, n] = co_await pipe.async_read_some(buffer, asio::as_tuple(use_awaitable));
    filled += n;
    if (!enlarged && n >= default_pipe_size) {
      // A full pipe: a bulk writer, worth fewer and larger reads.
      enlarged = true;
      min_free = std::max(min_free, enlarge(pipe.native_handle()));
    }
    if (ec == asio::error::eof) break;
    if (ec == asio::error::operation_aborted) throw boost::system::system_error(ec);
    if (ec)
      throw std::system_error(ec.value(), std::generic_category(),
                              "coproc: reading from pid " + std::to_string(pid));
  }
  pipe.close();
}

// Runs the stream operations concurrently; the first failure cancels the rest and is
// rethrown once all have ended. One runs inline, with no coroutine spawned. (A
// parallel_group behind the launch guard, not `&&`, which is not safe on an io_context run
// by several threads: detail/launch_guard.hpp.)
awaitable<void> all_of(std::vector<awaitable<void>> ops) {
  if (ops.empty()) co_return;
  if (ops.size() == 1) {
    co_await std::move(ops[0]);
    co_return;
  }
  auto ex = co_await asio::this_coro::executor;
  std::vector<decltype(asio::co_spawn(ex, std::move(ops[0]), asio::deferred))> spawned;
  for (auto& op : ops) spawned.push_back(asio::co_spawn(ex, std::move(op), asio::deferred));
  auto group = asio::experimental::make_parallel_group(std::move(spawned));
  auto wait = detail::completed_after_launch(
      group.async_wait(asio::experimental::wait_for_one_error(), asio::deferred), use_awaitable);
  auto [order, failures] = co_await std::move(wait);
  for (auto i : order)
    if (failures[i]) std::rethrow_exception(failures[i]);
}

// After a kill: waits for the child; if that wait cannot complete (the io_context is
// going away), the child's destructor leaves it to the background reaper. The caller
// has turned throw_if_cancelled off, or a cancelled caller could not wait at all.
awaitable<void> reap(child& c) {
  try {
    co_await c.wait();
  } catch (...) {
  }
}

} // namespace coproc::detail
