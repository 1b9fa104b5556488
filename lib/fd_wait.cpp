#include <coproc/detail/fd_wait.hpp>
#include <coproc/detail/launch_guard.hpp>

#include <boost/asio/execution/context.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detail/reactor.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace coproc::detail {

namespace {

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
// Made at load time: a child forked while another thread made it on first use would wait
// on the static's guard forever.
[[maybe_unused]] const bool services_made = (services(), true);

// The executor a strand runs on (that of a strand of a strand, too); ex if it is none.
boost::asio::any_io_executor without_strand(const boost::asio::any_io_executor& ex) {
  if (auto* s = ex.target<boost::asio::strand<boost::asio::any_io_executor>>())
    return without_strand(s->get_inner_executor());
  if (auto* s = ex.target<boost::asio::strand<boost::asio::io_context::executor_type>>())
    return s->get_inner_executor();
  return ex;
}

// One registration. A wait on one thread and forget_fd on another (a connection closed
// while another thread waits on it) meet here: the wait starts under the entry's mutex,
// and on a forgotten entry it completes at once (a spurious wake-up, the caller looks
// again and finds the fd closed); forget releases the descriptor under the same mutex.
// A waiter keeps the entry alive, so the descriptor object outlives forget's erase.
struct fd_entry {
  using descriptor = boost::asio::posix::stream_descriptor;
  fd_entry(const boost::asio::any_io_executor& ex, int fd) : d(ex, fd) {}
  std::mutex mutex;
  descriptor d;
  bool forgotten = false;

  void forget() noexcept {
    std::lock_guard lock(mutex);
    forgotten = true;
    d.release(); // deregisters (pending waits end with operation_aborted), leaves the fd open
  }

  template <class Token>
  static auto async_wait(std::shared_ptr<fd_entry> e,
                         boost::asio::posix::descriptor_base::wait_type w, Token&& token) {
    return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
        [](auto handler, std::shared_ptr<fd_entry> e,
           boost::asio::posix::descriptor_base::wait_type w) {
          std::unique_lock lock(e->mutex);
          if (!e->forgotten) return e->d.async_wait(w, std::move(handler));
          lock.unlock();
          auto ex = boost::asio::get_associated_executor(handler, e->d.get_executor());
          boost::asio::post(ex, [handler = std::move(handler)]() mutable {
            std::move(handler)(boost::system::error_code(boost::asio::error::operation_aborted));
          });
        },
        token, std::move(e), w);
  }
};

class fd_wait_service : public boost::asio::execution_context::service {
public:
  static boost::asio::execution_context::id id;

  explicit fd_wait_service(boost::asio::execution_context& ctx) : service(ctx), owner_(::getpid()) {
    // The reactor first, so that it is shut down after this service (services shut down
    // newest first): a forget_fd on another thread releases a descriptor (which posts its
    // aborted wait, then frees the reactor's state for it) while holding the registry's
    // lock, and this service's shutdown takes that lock. Without this order, the aborted
    // wait could end the io_context's last work and the reactor's shutdown free the same
    // state at once (a double free, seen under ASan).
    (void)boost::asio::use_service<boost::asio::detail::reactor>(ctx);
    std::lock_guard lock(services().mutex);
    services().services.push_back(this);
  }
  ~fd_wait_service() override { unlink(); }

  // The descriptor serves every caller on this io_context, so it takes the context's own
  // executor, not the first caller's (a strand the descriptor would keep alive; its count,
  // then dropped on two threads, is ordered by a fence that TSan does not see).
  std::shared_ptr<fd_entry> get(const boost::asio::any_io_executor& ex, int fd) {
    std::lock_guard lock(mutex_);
    auto it = descriptors_.find(fd);
    if (it != descriptors_.end()) return it->second;
    auto made = std::make_shared<fd_entry>(without_strand(ex), fd); // may throw: a closed fd
    descriptors_.emplace(fd, made);
    return made;
  }

  // Under the registry's lock (forget_fd).
  void forget(int fd) noexcept {
    if (owner_ != ::getpid()) return; // the parent's io_context, inherited by fork
    std::shared_ptr<fd_entry> e;
    {
      std::lock_guard lock(mutex_);
      auto it = descriptors_.find(fd);
      if (it == descriptors_.end()) return;
      e = std::move(it->second);
      descriptors_.erase(it);
    }
    e->forget();
  }

private:
  void shutdown() override {
    unlink(); // first, and not under mutex_: forget_fd locks the registry, then mutex_
    if (owner_ != ::getpid()) {
      // The parent's io_context, inherited by fork: mutex_ may have been copied held by
      // a thread that is not here, and closing or deregistering the descriptors would
      // take them from the parent (the epoll instance is shared). Leave them.
      for (auto& [fd, e] : descriptors_) (void)new std::shared_ptr<fd_entry>(std::move(e));
      return;
    }
    std::lock_guard lock(mutex_);
    for (auto& [fd, e] : descriptors_) e->forget();
    descriptors_.clear();
  }
  void unlink() noexcept {
    std::lock_guard lock(services().mutex);
    auto& v = services().services;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
  }

  int owner_;
  std::mutex mutex_;
  std::unordered_map<int, std::shared_ptr<fd_entry>> descriptors_;
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
  std::shared_ptr<fd_entry> e;
  try {
    // A descriptor closed by another thread (-1, or not open any more): a spurious
    // wake-up, and the caller finds it closed.
    if (fd >= 0) e = asio::use_service<fd_wait_service>(ctx).get(ex, fd);
  } catch (const boost::system::system_error&) {
  }
  if (!e) co_return true;
  bool ready = false;
  if (until.is_never()) {
    boost::system::error_code ec; // aborted: told apart below
    co_await fd_entry::async_wait(e, w, asio::redirect_error(asio::use_awaitable, ec));
    ready = true;
  } else if (!until.passed()) {
    asio::steady_timer timer(ex, until.when());
    auto group = asio::experimental::make_parallel_group(fd_entry::async_wait(e, w, asio::deferred),
                                                         timer.async_wait(asio::deferred));
    auto done = co_await completed_after_launch(
        group.async_wait(asio::experimental::wait_for_one(), asio::deferred), asio::use_awaitable);
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

} // namespace coproc::detail
