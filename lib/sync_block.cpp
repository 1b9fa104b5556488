#include "sync_block.hpp"

#include <coproc/detail/fd_wait.hpp>
#include <coproc/detail/launch_guard.hpp>
#include <coproc/detail/travel.hpp>
#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include "os.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

namespace coproc::detail {

// ---- identities

namespace {

// (state letter, start time) of a process from /proc/<pid>/stat; false if it is gone.
bool read_stat(int pid, char& state, std::uint64_t& start) noexcept {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  // pid (comm) state ppid ...: comm may hold spaces and parentheses. starttime is field 22,
  // the 20th after the comm.
  char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return false;
  p += 2;
  state = *p;
  for (int field = 1; field < 20; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return false;
    ++p;
  }
  start = std::strtoull(p, nullptr, 10);
  return true;
}

std::uint64_t make_identity(int pid, std::uint64_t start) noexcept {
  return (start << 22) | static_cast<std::uint64_t>(pid);
}

std::atomic<std::uint64_t> cached_identity{0};
// A forked child is another process: it computes its own identity.
[[maybe_unused]] const bool identity_hook =
    (::pthread_atfork(nullptr, nullptr, [] { forget_self_identity(); }), true);

} // namespace

void forget_self_identity() noexcept { cached_identity.store(0, std::memory_order_relaxed); }

std::uint64_t self_identity() noexcept {
  auto id = cached_identity.load(std::memory_order_relaxed);
  if (id != 0) [[likely]]
    return id;
  int pid = ::getpid();
  char state;
  std::uint64_t start = 0;
  if (!read_stat(pid, state, start)) start = 0; // no /proc: the pid alone
  id = make_identity(pid, start);
  cached_identity.store(id, std::memory_order_relaxed);
  return id;
}

bool identity_alive(std::uint64_t identity) noexcept {
  char state;
  std::uint64_t start;
  int pid = identity_pid(identity);
  if (!read_stat(pid, state, start)) {
    // No /proc entry: gone, unless /proc itself is missing (then only kill(0) can tell).
    if (::access("/proc/self/stat", F_OK) == 0) return false;
    return ::kill(pid, 0) == 0 || errno == EPERM;
  }
  if (state == 'Z' || state == 'X' || state == 'x') return false;
  return make_identity(pid, start) == identity;
}

process_watch::result process_watch::open(std::uint64_t identity,
                                          std::shared_ptr<process_watch>& out) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, identity_pid(identity), 0));
  if (fd < 0) {
    if (errno == ESRCH) return result::dead;
    return identity_alive(identity) ? result::unsupported : result::dead;
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  // The pidfd names whoever has the pid now: it is the holder only if the holder still
  // runs with that pid (read after the open, so a reuse in between shows as a stranger).
  if (!identity_alive(identity)) {
    ::close(fd);
    return result::dead;
  }
  out.reset(new process_watch(identity, fd));
  return result::watching;
}

process_watch::~process_watch() {
  forget_fd(fd_);
  ::close(fd_);
}

bool process_watch::exited() const noexcept {
  pollfd p{fd_, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

// ---- robust mutexes

void init_robust_mutex(pthread_mutex_t* m, const char* what) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int r = pthread_mutex_init(m, &attr);
  pthread_mutexattr_destroy(&attr);
  if (r != 0) throw_errno(r, std::string(what) + ": pthread_mutex_init");
}

bool lock_robust_mutex(pthread_mutex_t* m, const char* what) {
  int r = pthread_mutex_lock(m);
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(m);
    return true;
  }
  if (r != 0) throw_errno(r, std::string(what) + ": pthread_mutex_lock");
  return false;
}

// ---- the block

namespace {
constexpr int slot_count = 15;
constexpr std::uint64_t reclaiming = ~std::uint64_t{0};
} // namespace

struct sync_block::header {
  struct slot {
    std::atomic<std::uint64_t> who; // identity, 0 free, `reclaiming`
    std::atomic<std::uint32_t> count;
    std::uint32_t unused;
  };
  std::atomic<std::uint32_t> waiters; // every counted sleeper, in a slot or not
  std::uint32_t unused[3];
  slot slots[slot_count];
};
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 &&
              std::atomic<std::uint64_t>::is_always_lock_free);

std::size_t sync_block::state_offset_for(std::size_t align) noexcept {
  if (align < alignof(header)) align = alignof(header);
  return (sizeof(header) + align - 1) / align * align;
}

sync_block::sync_block(std::size_t bytes, std::size_t align, const char* what)
    : state_offset_(state_offset_for(align)), block_(state_offset_ + bytes, 1, what),
      // The memfd is zeroed: this only begins the objects' lifetimes.
      header_(new(block_.base()) header{}),
      state_(static_cast<unsigned char*>(block_.base()) + state_offset_) {}

sync_block::sync_block(const shared_block::description& d, fd_arrival& fds,
                       std::uint64_t state_offset, std::size_t bytes, const char* what)
    : state_offset_(static_cast<std::size_t>(state_offset)), block_(d, fds, 0, 1, what),
      header_(static_cast<header*>(block_.base())),
      state_(static_cast<unsigned char*>(block_.base()) + state_offset_) {
  if (state_offset < sizeof(header) || state_offset > block_.size() ||
      block_.size() - state_offset < bytes)
    throw coproc::error(std::string(what) + ": the shared memory that arrived with this child (" +
                        std::to_string(block_.size()) + " bytes, state at " +
                        std::to_string(state_offset) + ") is not one of its kind");
}

void sync_block::travel(wire::output_archive& ar, fd_departure& fds) const {
  block_.travel(ar, fds);
  const std::uint64_t offset = state_offset_;
  ar(offset);
}

std::shared_ptr<sync_block> sync_block::arrive(wire::input_archive& ar, fd_arrival& fds,
                                               std::size_t bytes, const char* what,
                                               std::uint32_t& key) {
  const auto d = shared_block::read(ar);
  std::uint64_t offset = 0;
  ar(offset);
  key = d.memfd;
  auto block = fds.object<sync_block>(
      key, [&] { return std::make_shared<sync_block>(d, fds, offset, bytes, what); });
  // Made by an earlier argument on the same block (a value, then its lock): still large
  // enough for this one.
  if (block->block_.size() - block->state_offset_ < bytes)
    throw coproc::error(std::string(what) + ": the shared memory that arrived with this child " +
                        "is too small for it");
  return block;
}

int sync_block::claim_slot(std::uint64_t me) noexcept {
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < slot_count; ++i)
      if (header_->slots[i].who.load(std::memory_order_acquire) == me) return i;
    for (int i = 0; i < slot_count; ++i) {
      std::uint64_t expected = 0;
      if (header_->slots[i].who.compare_exchange_strong(expected, me, std::memory_order_acq_rel))
        return i;
    }
    reclaim_dead_waiters(); // full: free the slots of dead processes, then try once more
  }
  return -1; // counted only in `waiters`: not reclaimable if this process dies waiting
}

sync_block::sleeper::sleeper(sync_block& block) : block_(block) {
  {
    std::lock_guard lock(block_.slots_mutex_);
    slot_ = block_.claim_slot(self_identity());
    if (slot_ >= 0) block_.header_->slots[slot_].count.fetch_add(1, std::memory_order_relaxed);
  }
  // seq_cst: pairs with wake()'s fence (see the header comment).
  block_.header_->waiters.fetch_add(1, std::memory_order_seq_cst);
}

sync_block::sleeper::~sleeper() {
  std::lock_guard lock(block_.slots_mutex_);
  if (slot_ >= 0) block_.header_->slots[slot_].count.fetch_sub(1, std::memory_order_relaxed);
  block_.header_->waiters.fetch_sub(1, std::memory_order_relaxed);
}

void sync_block::reclaim_dead_waiters() noexcept {
  const auto me = self_identity();
  for (auto& s : header_->slots) {
    auto who = s.who.load(std::memory_order_acquire);
    if (who == 0 || who == reclaiming || who == me || identity_alive(who)) continue;
    // The one that swaps in `reclaiming` takes the count: no new owner can have counted
    // in meanwhile (the slot is not free until `who` is 0 again).
    if (!s.who.compare_exchange_strong(who, reclaiming, std::memory_order_acq_rel)) continue;
    auto count = s.count.exchange(0, std::memory_order_acq_rel);
    header_->waiters.fetch_sub(count, std::memory_order_seq_cst);
    s.who.store(0, std::memory_order_release);
  }
}

std::uint32_t sync_block::waiters() const noexcept {
  return header_->waiters.load(std::memory_order_seq_cst);
}

void sync_block::wake() noexcept {
  full_fence();
  std::uint64_t tokens = header_->waiters.load(std::memory_order_relaxed);
  if (tokens != 0) block_.signal(0, tokens);
}

awaitable<bool> sync_block::sleep(deadline until, std::chrono::milliseconds recheck,
                                  std::shared_ptr<process_watch> watch, bool take) {
  namespace asio = boost::asio;
  const deadline wake_at = sooner(until, recheck);
  bool woken = false, token = false;
  if (!watch || watch->fd() < 0) {
    auto wait = wait_readable(block_.event_fd(0), wake_at);
    token = woken = co_await std::move(wait);
  } else {
    auto state = co_await asio::this_coro::cancellation_state;
    auto ex = co_await asio::this_coro::executor;
    auto group = asio::experimental::make_parallel_group(
        asio::co_spawn(ex, wait_readable(block_.event_fd(0), wake_at), asio::deferred),
        asio::co_spawn(ex, wait_readable(watch->fd(), wake_at), asio::deferred));
    auto [order, token_error, token_ready, exit_error, exited] = co_await completed_after_launch(
        group.async_wait(asio::experimental::wait_for_one(), asio::deferred), asio::use_awaitable);
    if (state.cancelled() != asio::cancellation_type::none)
      throw boost::system::system_error(asio::error::operation_aborted);
    token = !token_error && token_ready;
    woken = token || (!exit_error && exited);
  }
  if (token && take) take_token();
  co_return woken;
}

void sync_block::take_token() noexcept { block_.take_token(0); }

awaitable<void> sync_block::nap(deadline until) {
  namespace asio = boost::asio;
  auto state = co_await asio::this_coro::cancellation_state;
  asio::steady_timer timer(co_await asio::this_coro::executor, until.when());
  boost::system::error_code ec; // aborted: told apart below
  co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  if (state.cancelled() != asio::cancellation_type::none)
    throw boost::system::system_error(asio::error::operation_aborted);
}

deadline sooner(deadline until, std::chrono::steady_clock::duration recheck) {
  const auto now = deadline::clock::now();
  return until.when() - now > recheck ? deadline::at(now + recheck) : until;
}

std::int64_t monotonic_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

} // namespace coproc::detail
