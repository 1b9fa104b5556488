#include <coproc/detail/queue_ring.hpp>
#include <coproc/errors.hpp>

#include "os.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/system/system_error.hpp>

#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace coproc::detail {

namespace {

// ---------------------------------------------------------------------------------------
// Descriptor waits: one registration per (io_context, fd), kept by an io_context service
// so that a sleeping consumer costs no epoll_ctl. The registered descriptor is the
// caller's own fd (never a dup: a dup would keep a socket open and hide the peer's EOF),
// so whoever closes the fd calls forget_fd first.

class fd_wait_service;

struct registry {
  std::mutex mutex;
  std::vector<fd_wait_service*> services;
};
registry& services() {
  static auto* r = [] {
    auto* made = new registry; // outlives every io_context, static destructors included
    // A forked child may close a connection: fork must not copy the lock held.
    ::pthread_atfork([] { services().mutex.lock(); }, [] { services().mutex.unlock(); },
                     [] { services().mutex.unlock(); });
    return made;
  }();
  return *r;
}

class fd_wait_service : public boost::asio::execution_context::service {
public:
  static boost::asio::execution_context::id id;
  using descriptor = boost::asio::posix::stream_descriptor;

  explicit fd_wait_service(boost::asio::execution_context& ctx)
      : service(ctx), owner_(::getpid()) {
    std::lock_guard lock(services().mutex);
    services().services.push_back(this);
  }
  ~fd_wait_service() override { unlink(); }

  descriptor& get(const boost::asio::any_io_executor& ex, int fd) {
    std::lock_guard lock(mutex_);
    auto& slot = descriptors_[fd];
    if (!slot) slot = std::make_unique<descriptor>(ex, fd);
    return *slot;
  }

  void forget(int fd) noexcept {
    if (owner_ != ::getpid()) return; // the parent's io_context, inherited by fork
    std::lock_guard lock(mutex_);
    auto it = descriptors_.find(fd);
    if (it == descriptors_.end()) return;
    it->second->release(); // deregisters, leaves the fd open
    descriptors_.erase(it);
  }

private:
  void shutdown() override {
    unlink(); // first, and not under mutex_: forget_fd locks the registry, then mutex_
    std::lock_guard lock(mutex_);
    if (owner_ == ::getpid())
      for (auto& [fd, d] : descriptors_) d->release();
    descriptors_.clear();
  }
  void unlink() noexcept {
    std::lock_guard lock(services().mutex);
    auto& v = services().services;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
  }

  int owner_;
  std::mutex mutex_;
  std::unordered_map<int, std::unique_ptr<descriptor>> descriptors_;
};
boost::asio::execution_context::id fd_wait_service::id;

// A cancellation of the awaiting coroutine aborts the wait too, and must not look like a
// wake-up: the caller would go on and move an item nobody receives. So the coroutine's
// own cancellation state tells the two apart (it also covers a wake-up that completed
// just before the cancellation arrived); a forget_fd abort is a spurious wake-up.
awaitable<bool> wait_fd(int fd, deadline until, boost::asio::posix::descriptor_base::wait_type w) {
  namespace asio = boost::asio;
  auto state = co_await asio::this_coro::cancellation_state;
  auto ex = co_await asio::this_coro::executor;
  auto& ctx = asio::query(ex, asio::execution::context);
  auto& d = asio::use_service<fd_wait_service>(ctx).get(ex, fd);
  bool ready = false;
  if (until.is_never()) {
    boost::system::error_code ec; // aborted: told apart below
    co_await d.async_wait(w, asio::redirect_error(asio::use_awaitable, ec));
    ready = true;
  } else if (!until.passed()) {
    asio::steady_timer timer(ex, until.when());
    auto group = asio::experimental::make_parallel_group(d.async_wait(w, asio::deferred),
                                                         timer.async_wait(asio::deferred));
    auto done = co_await group.async_wait(asio::experimental::wait_for_one(), asio::use_awaitable);
    ready = std::get<0>(done)[0] == 0; // the descriptor first (or forget_fd): look again
  }
  if (state.cancelled() != asio::cancellation_type::none)
    throw boost::system::system_error(asio::error::operation_aborted);
  co_return ready;
}

} // namespace

awaitable<bool> wait_readable(int fd, deadline until) {
  return wait_fd(fd, until, boost::asio::posix::descriptor_base::wait_read);
}
awaitable<bool> wait_writable(int fd, deadline until) {
  return wait_fd(fd, until, boost::asio::posix::descriptor_base::wait_write);
}

void forget_fd(int fd) noexcept {
  std::lock_guard lock(services().mutex);
  for (auto* s : services().services) s->forget(fd);
}

// ---------------------------------------------------------------------------------------
// The ring.

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
constexpr std::size_t default_capacity = std::size_t{1} << 20;

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

queue_ring::queue_ring(std::size_t maxsize, std::size_t capacity_bytes)
    : maxsize_(maxsize),
      capacity_(capacity_bytes == 0 ? default_capacity : (capacity_bytes + 7) & ~std::size_t{7}) {
  if (capacity_ < 16 || capacity_ > (std::size_t{1} << 40))
    throw std::invalid_argument("coproc::queue: capacity_bytes " + std::to_string(capacity_bytes) +
                                " is outside [16, 2^40]");
  map_size_ = sizeof(control) + capacity_;
  void* p = ::mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw_errno(errno, "coproc::queue: mmap of " + std::to_string(map_size_) + " bytes");
  control_ = new (p) control{};
  data_ = static_cast<unsigned char*>(p) + sizeof(control);
  try {
    init_robust_mutex(&control_->put_lock);
    init_robust_mutex(&control_->get_lock);
    for (int& fd : event_fd_) {
      fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
      if (fd < 0) throw_errno(errno, "coproc::queue: eventfd");
    }
  } catch (...) {
    for (int fd : event_fd_)
      if (fd >= 0) ::close(fd);
    ::munmap(p, map_size_);
    throw;
  }
}

queue_ring::~queue_ring() {
  for (int fd : event_fd_) {
    forget_fd(fd);
    ::close(fd);
  }
  // The mutexes stay: other processes may still use the mapping.
  ::munmap(control_, map_size_);
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
  signal(other, std::max<std::uint64_t>(1, c.waiters[other].load(std::memory_order_relaxed)));
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
    struct guard {
      queue_ring* r;
      ~guard() { r->unlock(putters); }
    };
    lock(putters);
    guard g{this};
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
    struct guard {
      queue_ring* r;
      ~guard() { r->unlock(getters); }
    };
    lock(getters);
    guard g{this};
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

// The eventfds count wake tokens (EFD_SEMAPHORE): a wake-up adds one per counted
// sleeper and each sleeper that wakes takes one, so sleepers in other processes still
// find theirs. Tokens left by sleepers that timed out or died cost a spurious wake-up
// each, then the count is back to zero and a wait sleeps again (Asio re-checks an fd's
// readiness when a wait starts, so an eventfd that stayed readable would never sleep).
void queue_ring::signal(side s, std::uint64_t tokens) noexcept {
  (void)!::write(event_fd_[s], &tokens, sizeof tokens);
}

void queue_ring::take_token(side s) noexcept {
  std::uint64_t token;
  (void)!::read(event_fd_[s], &token, sizeof token); // EAGAIN: another sleeper took it
}

void queue_ring::wake(side s) noexcept {
  auto& c = *control_;
  // Pairs with the waiter's count-in before it looks again: either it sees our commit or
  // we see it waiting.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint32_t sleepers = c.waiters[s].load(std::memory_order_relaxed);
  if (sleepers == 0) return;
  if (c.wake_pending[s].exchange(1, std::memory_order_seq_cst) != 0) return;
  signal(s, sleepers);
}

namespace {
std::atomic<bool> kill_after_commit{false};
}

void queue_ring::kill_after_next_commit() noexcept { kill_after_commit.store(true, std::memory_order_relaxed); }

void queue_ring::committed(side woken) noexcept {
  if (kill_after_commit.load(std::memory_order_relaxed)) [[unlikely]]
    ::raise(SIGKILL);
  wake(woken);
}

void queue_ring::wake_all() noexcept {
  // After close() nobody sleeps again: plenty of tokens for every current sleeper.
  signal(getters, std::uint64_t{1} << 32);
  signal(putters, std::uint64_t{1} << 32);
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

// A cancelled wait throws out of both loops before they take a token or try again, so a
// cancelled put or get has no effect. It leaves its token (if one was written for it) in
// the eventfd for the other sleepers.
awaitable<void> queue_ring::put(std::string_view bytes, deadline until) {
  for (;;) {
    auto s = try_put(bytes);
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: put on a closed queue");
    waiter_scope scope(control_->waiters[putters], control_->wake_pending[putters]);
    s = try_put(bytes);
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: put on a closed queue");
    if (co_await wait_readable(event_fd_[putters], recheck_at(until))) {
      take_token(putters);
      continue;
    }
    if (!until.passed()) continue; // a re-check
    s = try_put(bytes); // the deadline: one last look
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: put on a closed queue");
    throw queue_full("coproc::queue: still full at the put's deadline");
  }
}

awaitable<void> queue_ring::get(consumer f, void* context, deadline until) {
  for (;;) {
    auto s = try_get(f, context);
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: get on a closed, empty queue");
    waiter_scope scope(control_->waiters[getters], control_->wake_pending[getters]);
    s = try_get(f, context);
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: get on a closed, empty queue");
    if (co_await wait_readable(event_fd_[getters], recheck_at(until))) {
      take_token(getters);
      continue;
    }
    if (!until.passed()) continue; // a re-check
    s = try_get(f, context); // the deadline: one last look
    if (s == status::ok) co_return;
    if (s == status::closed) throw queue_closed("coproc::queue: get on a closed, empty queue");
    throw queue_empty("coproc::queue: still empty at the get's deadline");
  }
}

void queue_ring::close() {
  {
    // Under put_lock, so no put commits after it: a consumer that sees `closed` and then
    // an empty ring knows the queue is drained.
    lock(putters);
    control_->closed.store(1, std::memory_order_release);
    unlock(putters);
  }
  wake_all();
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

// ---------------------------------------------------------------------------------------
// Pipes.

namespace {
constexpr std::uint64_t continued = std::uint64_t{1} << 63; // a record that is not a first

// Until the fd waits throw on cancellation themselves: a cancelled wait must not be
// followed by a read (the message would be consumed and dropped by the canceller).
awaitable<void> throw_if_cancelled() {
  auto state = co_await boost::asio::this_coro::cancellation_state;
  if (state.cancelled() != boost::asio::cancellation_type::none)
    throw boost::system::system_error(boost::asio::error::operation_aborted);
}

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
  if (fd_ < 0) return;
  forget_fd(fd_);
  ::close(fd_);
  fd_ = -1;
  backlogged_ = false; // a cancelled send's rest goes no further
  backlog_.clear();
}

void pipe_end::check_open(const char* what) const {
  if (fd_ < 0) throw std::logic_error(std::string("coproc::connection::") + what + " on a closed connection");
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
      const bool gone = err == EPIPE || err == ECONNRESET || err == ECONNREFUSED || err == ENOTCONN;
      throw_errno(err, "coproc::connection::send " + pid_text() + (gone ? ": the other end is closed" : ""));
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
// so its rest is copied and sent by a coroutine of its own.
void pipe_end::hand_off(const outgoing& out, const boost::asio::any_io_executor& ex) {
  backlog_.assign(out.bytes.substr(out.sent));
  backlog_out_ = outgoing{backlog_, out.base + out.sent, 0, true};
  backlogged_ = true;
  if (flushing_) return;
  flushing_ = true;
  boost::asio::co_spawn(ex, flush(shared_from_this()), boost::asio::detached);
}

awaitable<void> pipe_end::flush(std::shared_ptr<pipe_end> self) {
  try {
    while (self->fd_ >= 0 && !self->drain_backlog())
      co_await wait_writable(self->fd_, deadline::never());
  } catch (...) {
    // The peer is gone or the io_context shuts down; a later send reports the former.
  }
  self->flushing_ = false;
}

awaitable<void> pipe_end::send(std::string_view payload) {
  check_open("send");
  if (!can_send_) throw std::logic_error("coproc::connection::send on the receive-only end of a one-way pipe");
  if (payload.size() > max_message)
    throw std::length_error("coproc::connection::send: a message of " + std::to_string(payload.size()) +
                            " bytes is larger than the limit of " + std::to_string(max_message) + " bytes");
  auto ex = co_await boost::asio::this_coro::executor;
  outgoing out{payload};
  while (!drain_backlog() || !write(out)) {
    try {
      co_await wait_writable(fd_, deadline::never());
      co_await throw_if_cancelled();
    } catch (...) {
      if (out.started) hand_off(out, ex);
      throw;
    }
    check_open("send");
  }
}

pipe_end::got pipe_end::read_record(std::uint64_t& word, std::size_t& n, std::size_t at) {
  // Room for a whole record, grown with what has arrived, never with what is announced.
  if (in_.size() < at + record_payload)
    in_.resize(std::max<std::size_t>(at + record_payload, std::min<std::uint64_t>(2 * in_.size(), length_)));
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
                        " bytes was cut short after " + std::to_string(had) + " bytes " + pid_text());
  }
  if (word > max_message)
    throw coproc::error("coproc::connection::recv: malformed frame announcing " + std::to_string(word) +
                        " bytes (the limit is " + std::to_string(max_message) + ") " + pid_text());
  if (n > word)
    throw coproc::error("coproc::connection::recv: malformed frame announcing " + std::to_string(word) +
                        " bytes with " + std::to_string(n) + " in its first record " + pid_text());
  length_ = word;
  got_ = n;
  partial_ = true;
  return got_ == length_;
}

awaitable<std::string_view> pipe_end::recv() {
  check_open("recv");
  if (!can_recv_) throw std::logic_error("coproc::connection::recv on the send-only end of a one-way pipe");
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
        throw coproc::error("coproc::connection::recv: the peer closed in the middle of a frame, after " +
                            std::to_string(got_) + " of " + std::to_string(length_) + " bytes " + pid_text());
      }
      throw eof_error();
    case got::nothing:
      co_await wait_readable(fd_, deadline::never());
      co_await throw_if_cancelled();
      check_open("recv");
      break;
    }
  }
}

awaitable<bool> pipe_end::poll(deadline until) {
  check_open("poll");
  if (!can_recv_) throw std::logic_error("coproc::connection::poll on the send-only end of a one-way pipe");
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
