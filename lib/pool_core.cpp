// The parent's side of coproc::pool: it starts the workers, sends the chunks the
// pool_scheduler hands out, reads the answers, and recovers from a worker's death (its
// lost items fail with worker_lost, its unstarted ones go elsewhere, a replacement
// starts). A record that does not add up makes the parent kill the worker.
#include "pool_core.hpp"

#include "fresh_image.hpp"
#include "image_map.hpp"
#include "os.hpp"
#include "pool_worker.hpp"

#include <boost/asio/async_result.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace coproc::detail {

namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr int large_socket_buffer = 4 << 20;

const char* fresh_method_name(start_method method) {
  return method == start_method::spawn ? "start_method::spawn" : "start_method::forkserver";
}

// start_method::spawn, forkserver: the initializer as a fresh image rebuilds it (no
// trampoline for none).
pool_initializer::travel_form spawn_initializer(const pool_initializer& initializer,
                                                start_method method) {
  if (!initializer) return {};
  std::string with = std::string("coproc::pool: with ") + fresh_method_name(method);
  if (!initializer.travel())
    throw std::invalid_argument(
        with + " the initializer must be a plain function or a coproc::partial of one (a "
               "fresh worker image has no copy of a lambda's captures or a std::function)");
  const auto& form = *initializer.travel();
  for (std::intptr_t offset : {form.trampoline, form.target})
    if (offset != 0) check_reaches_fresh_image(offset, with + " the initializer");
  return form;
}

} // namespace

std::shared_ptr<pool_core> pool_core::start(boost::asio::any_io_executor ex, pool_options options) {
  auto core = std::make_shared<pool_core>(std::move(ex), std::move(options));
  std::lock_guard lock(core->mutex_);
  try {
    for (unsigned i = 0; i < core->options_.processes; ++i) core->spawn_locked();
  } catch (...) {
    core->terminate_locked();
    throw;
  }
  return core;
}

pool_core::pool_core(boost::asio::any_io_executor ex, pool_options options)
    : ex_(std::move(ex)), options_(std::move(options)),
      scheduler_(options_.maxtasksperchild, options_.concurrency) {
  if (options_.task_timeout && *options_.task_timeout <= duration::zero())
    throw std::invalid_argument("coproc::pool: pool_options::task_timeout must be positive, not " +
                                std::to_string(options_.task_timeout->count()) + " ns");
  if (spawning()) {
    require_main_guard("coproc::pool");
    initializer_ = spawn_initializer(options_.initializer, *options_.method);
  }
}

void pool_core::stream_opened() {
  std::lock_guard lock(mutex_);
  if (closed_)
    throw std::logic_error(std::string("coproc::pool: cannot submit a task to a ") +
                           (terminated_ ? "terminated" : "closed") + " pool");
  ++open_streams_;
}

void pool_core::stream_closed() noexcept {
  std::lock_guard lock(mutex_);
  --open_streams_;
  if (closed_) dispatch_locked(); // the workers may be done now
}

void pool_core::submit(std::shared_ptr<pool_job> job, std::optional<duration> timeout,
                       bool from_stream) {
  if (timeout && *timeout <= duration::zero())
    throw std::invalid_argument("coproc::pool: a task timeout must be positive, not " +
                                std::to_string(timeout->count()) + " ns");
  if (!timeout) timeout = options_.task_timeout;
  if (timeout)
    job->timeout_ns = std::max<std::int64_t>(
        1, std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout).count());
  job->sink->canceller = shared_from_this();
  std::lock_guard lock(mutex_);
  if (closed_ && (terminated_ || !from_stream))
    throw std::logic_error(std::string("coproc::pool: cannot submit a task to a ") +
                           (terminated_ ? "terminated" : "closed") + " pool");
  if (spawning()) check_reaches_workers_locked(*job);
  if (failed_) {
    for (std::size_t i = 0; i < job->count; ++i) job->sink->fail(i, failed_);
    return;
  }
  // A lone task for an idle worker leaves at once (apply's round trip). Otherwise
  // submissions made in one go leave together: the dispatch runs once the submitting
  // code yields to the io_context.
  if (job->count == 0) return;
  if (scheduler_.submit(std::move(job))) {
    dispatch_locked();
    if (!scheduler_.has_work()) return;
  }
  schedule_dispatch_locked();
}

void pool_core::check_reaches_workers_locked(const pool_job& job) {
  for (std::intptr_t offset : {job.trampoline, job.target}) {
    if (offset == 0 || checked_offsets_.count(offset)) continue;
    check_reaches_fresh_image(offset, std::string("coproc::pool: with ") +
                                          fresh_method_name(*options_.method) + " the task");
    checked_offsets_.insert(offset);
  }
}

void pool_core::schedule_dispatch_locked() {
  if (dispatch_posted_) return;
  dispatch_posted_ = true;
  boost::asio::post(ex_, [self = shared_from_this()] {
    std::lock_guard lock(self->mutex_);
    self->dispatch_posted_ = false;
    self->dispatch_locked();
  });
}

void pool_core::close() {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  closed_ = true;
  dispatch_locked(); // idle workers learn now that no more work comes
}

void pool_core::terminate() noexcept {
  std::lock_guard lock(mutex_);
  terminate_locked();
}

awaitable<void> pool_core::join(std::shared_ptr<pool_core> self) {
  bool closed;
  {
    std::lock_guard lock(self->mutex_);
    closed = self->closed_;
  }
  if (!closed) throw std::logic_error("coproc::pool::join: call close() or terminate() first");
  auto* core = self.get();
  auto gone = wait_for_condition(
      core->mutex_, core->join_waiters_, [core] { return core->live_ == 0; }, deadline::never());
  co_await std::move(gone);
}

// ---- starting a worker ---------------------------------------------------------------

void pool_core::link::close_worker_side() noexcept {
  if (worker_fd >= 0) ::close(worker_fd);
  if (memfd >= 0) ::close(memfd);
  worker_fd = memfd = -1;
}

void pool_core::link::close_all() noexcept {
  close_worker_side();
  if (parent_fd >= 0) ::close(parent_fd);
  if (page) ::munmap(page, worker_link_bytes);
  parent_fd = -1;
  page = nullptr;
}

void pool_core::spawn_locked() {
  link l = make_link();
  std::shared_ptr<process_child> proc;
  try {
    proc = start_worker(l);
  } catch (...) {
    l.close_all();
    throw;
  }
  l.close_worker_side();
  // Children this process starts later do not inherit the regions (a forked worker has).
  ::madvise(reinterpret_cast<char*>(l.page) + worker_page_size, 2 * payload_region_bytes,
            MADV_DONTFORK);
  adopt_locked(l, std::move(proc));
}

// The socket and the shared memory: the page and the payload regions (lib/pool_payload.hpp),
// in one memfd. A spawned worker maps the memfd; a forked one inherits the mapping.
pool_core::link pool_core::make_link() const {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw std::system_error(errno, std::generic_category(),
                            "coproc::pool: socketpair for a worker");
  link l{sv[0], sv[1]};
  // Large arguments and results cross in fewer round trips with larger socket buffers
  // (the kernel caps them at net.core.wmem_max / rmem_max; it allocates only what is used).
  for (int fd : sv)
    for (int opt : {SO_SNDBUF, SO_RCVBUF})
      ::setsockopt(fd, SOL_SOCKET, opt, &large_socket_buffer, sizeof large_socket_buffer);
  // (A memfd for a forked worker too: its pages are charged when used, not reserved at
  // mmap as a shared anonymous mapping's would be.)
  l.memfd = ::memfd_create("coproc-pool-worker", MFD_CLOEXEC);
  if (l.memfd >= 0 && ::ftruncate(l.memfd, worker_link_bytes) != 0) {
    ::close(l.memfd);
    l.memfd = -1;
  }
  void* mem = l.memfd < 0 ? MAP_FAILED
                          : ::mmap(nullptr, worker_link_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                                   l.memfd, 0);
  if (!spawning() && l.memfd >= 0) {
    ::close(l.memfd);
    l.memfd = -1;
  }
  if (mem == MAP_FAILED) {
    int err = errno;
    l.close_all();
    throw std::system_error(err, std::generic_category(), "coproc::pool: shared page for a worker");
  }
  l.page = new (mem) worker_page;
  return l;
}

// Forks or spawns the worker process on the link, or has the fork server fork it.
std::shared_ptr<process_child> pool_core::start_worker(link& l) {
  const char* prefix = options_.method == start_method::spawn        ? "SpawnPoolWorker"
                       : options_.method == start_method::forkserver ? "ForkServerPoolWorker"
                                                                     : "ForkPoolWorker";
  auto id = next_child_identity(prefix);
  if (spawning())
    return start_worker_image(*options_.method, l.worker_fd, l.memfd, options_.maxtasksperchild,
                              options_.concurrency, initializer_, id);
  int parent = ::getpid();
  // A worker's death signal follows the thread that forks it.
  int pid = on_lasting_thread([&] {
    int pid = fork_flushed("coproc::pool: fork() of a worker failed");
    if (pid != 0) return pid;
    ::close(l.parent_fd);
    for (auto& other : workers_) ::close(other->socket.native_handle());
    run_forked_worker(parent, l.worker_fd, l.page, std::move(id), options_.initializer.function(),
                      options_.maxtasksperchild, options_.concurrency);
  });
  return std::make_shared<direct_child>(pid);
}

void pool_core::adopt_locked(const link& l, std::shared_ptr<process_child> proc) {
  auto w = std::make_shared<worker>(ex_, l.page);
  w->socket.assign(boost::asio::local::stream_protocol(), l.parent_fd);
  w->proc = std::move(proc);
  workers_.push_back(w);
  scheduler_.add(*w);
  ++live_;
  // Posted: co_spawn may start the reader at once on this thread, and it takes mutex_,
  // which the caller holds.
  boost::asio::post(ex_, [self = shared_from_this(), w] {
    boost::asio::co_spawn(self->ex_, read_loop(self, w), boost::asio::detached);
  });
}

// ---- answers -------------------------------------------------------------------------

awaitable<void> pool_core::read_loop(std::shared_ptr<pool_core> self, std::shared_ptr<worker> w) {
  byte_buffer in;
  for (;;) {
    // At most a plain read's worth of small records per step: the loop stays responsive.
    std::size_t want = bytes_wanted<record_header>(in.data());
    std::span<char> room;
    try {
      room = in.room(want).first(want);
    } catch (const std::bad_alloc&) {
      room = {}; // no memory for this record: end the link as for a bad one
    }
    bool ok = !room.empty();
    if (ok) {
      boost::system::error_code ec;
      // Started under the mutex: a write, close() or terminate() on another thread of the
      // io_context uses the socket too.
      auto start_read = [&](auto handler) {
        std::lock_guard lock(self->mutex_);
        w->socket.async_read_some(boost::asio::buffer(room.data(), room.size()),
                                  std::move(handler));
      };
      auto token = boost::asio::redirect_error(boost::asio::use_awaitable, ec);
      auto read =
          boost::asio::async_initiate<decltype(token), void(boost::system::error_code,
                                                            std::size_t)>(start_read, token);
      std::size_t n = co_await std::move(read);
      if (ec || n == 0) break;
      in.commit(n);
      std::lock_guard lock(self->mutex_);
      ok = self->take_results_locked(*w, in);
      self->dispatch_locked();
    }
    if (!ok) {
      // A record that does not add up: nothing more from this worker is believed.
      try {
        w->proc->signal(SIGKILL);
      } catch (...) {
      }
      break;
    }
    in.trim();
  }
  // The worker's end closed: it has exited or is exiting.
  auto wait = w->proc->wait();
  int code = co_await std::move(wait);
  bool replace, slow;
  {
    std::lock_guard lock(self->mutex_);
    slow = !w->started;
    replace = self->worker_gone_locked(*w, code);
  }
  if (!replace) co_return;
  auto replacement = replace_after(std::move(self), slow);
  co_await std::move(replacement);
}

awaitable<void> pool_core::replace_after(std::shared_ptr<pool_core> self, bool slow) {
  if (slow) {
    // A worker that fails before its first task (an initializer that throws) would
    // otherwise be replaced in a tight fork loop.
    boost::asio::steady_timer pause(self->ex_, std::chrono::milliseconds(100));
    boost::system::error_code ec;
    auto op = pause.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ec));
    co_await std::move(op);
  }
  std::lock_guard lock(self->mutex_);
  if (!self->needs_worker_locked()) co_return;
  try {
    self->spawn_locked();
    self->dispatch_locked();
  } catch (const std::exception& e) {
    // No replacement: the other workers go on; with none left, unfinished work fails.
    if (self->workers_.empty()) self->scheduler_.fail_all(std::make_exception_ptr(e));
  }
}

bool pool_core::needs_worker_locked() const {
  return !terminated_ && !failed_ && workers_.size() < options_.processes &&
         (!closed_ || scheduler_.has_work() || open_streams_ != 0);
}

// Consumes the complete records at the front of `in`. False on a record that does not
// add up (an unknown kind, a wrong length, an answer to nothing).
bool pool_core::take_results_locked(worker& w, byte_buffer& in) {
  bool answered = false;
  try {
    while (auto record = parse_record(in.data())) {
      switch (record->kind) {
      case record_kind::timing:
        scheduler_.measured(parse_timing(record->bytes));
        break;
      case record_kind::started:
        if (!record->bytes.empty() || w.started) return false;
        scheduler_.started(w);
        break;
      case record_kind::start_failed:
        try {
          auto [type, message] = decode_parts<std::pair<std::string, std::string>>(record->bytes);
          w.start_error = type + ": " + message;
        } catch (...) {
          return false;
        }
        break;
      case record_kind::value:
      case record_kind::error:
        if (w.held.empty()) return false;
        deliver_locked(w, record->kind == record_kind::error, record->bytes);
        answered = true;
        break;
      case record_kind::shared_value: {
        auto bytes = shared_bytes(w.results, payload_region_bytes, record->bytes);
        if (!bytes || w.held.empty()) return false;
        deliver_locked(w, false, *bytes); // decoded straight from the region
        w.page->results_released.fetch_add(1, std::memory_order_release);
        answered = true;
        break;
      }
      case record_kind::timed_out: { // a coroutine task, cancelled at its timeout
        if (w.held.empty() || !record->bytes.empty()) return false;
        const pool_job& job = *w.held.front().job;
        if (!job.coroutine || job.timeout_ns == 0) return false;
        auto error = timeout_error_of(w, job);
        auto answer = scheduler_.answered(w);
        answer.sink->fail(answer.index, error);
        answered = true;
        break;
      }
      default:
        return false;
      }
      in.consume(record->size);
    }
  } catch (const pool_protocol_violation&) {
    return false;
  }
  if (answered) {
    scheduler_.progressed(w, now_ns());
    stop_if_due_locked(w, 0);
  }
  w.arguments.trim(); // its shared arguments may all be done with now
  return true;
}

// The answer to w's next item.
void pool_core::deliver_locked(worker& w, bool failed, std::string_view bytes) {
  auto answer = scheduler_.answered(w);
  if (!failed) return answer.sink->deliver(answer.index, bytes);
  std::exception_ptr error;
  try {
    auto [type, message] = decode_parts<std::pair<std::string, std::string>>(bytes);
    error =
        std::make_exception_ptr(remote_error(std::move(type), std::move(message), w.proc->pid()));
  } catch (...) {
    error = std::current_exception();
  }
  answer.sink->fail(answer.index, error);
}

// ---- sending -------------------------------------------------------------------------

void pool_core::dispatch_locked() {
  if (terminated_ || failed_) return;
  std::int64_t now = now_ns();
  auto result = scheduler_.dispatch(now, [&](scheduled_worker& sw, const pool_chunk& c) {
    auto& w = static_cast<worker&>(sw);
    if (!encode_chunk(w, c)) return false;
    // The item cannot have started before now: its timeout is due at the earliest then
    // (a coroutine task's in the worker, and the grace after that here).
    if (c.job->timeout_ns != 0)
      arm_timeout_locked(w, now + c.job->timeout_ns +
                                (c.job->coroutine ? coroutine_stop_grace_ns : 0));
    return true;
  });
  if (result.more) schedule_dispatch_locked();
  if (result.look_again > 0 && !rebalance_armed_) {
    rebalance_armed_ = true;
    rebalance_timer_.expires_after(std::chrono::nanoseconds(result.look_again));
    rebalance_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      std::lock_guard lock(self->mutex_);
      self->rebalance_armed_ = false;
      if (!ec) self->dispatch_locked();
    });
  }
  bool all_claimed = scheduler_.all_claimed();
  for (auto& w : workers_) {
    if (w->gone || w->write_pending) continue;
    if (!w->out.empty()) start_write(w);
    else if (closed_ && !scheduler_.has_work() && all_claimed && open_streams_ == 0 && !w->shut) {
      // Everything is sent: the worker drains its socket, answers and exits.
      w->shut = true;
      boost::system::error_code ec;
      w->socket.shutdown(boost::asio::socket_base::shutdown_send, ec);
    }
  }
}

bool pool_core::encode_chunk(worker& w, const pool_chunk& c) {
  std::size_t at = w.out.size();
  try {
    encode_frame(
        w.out, c.job->trampoline, c.job->target, c.n, c.job->timeout_ns != 0 ? frame_timed : 0,
        [&](std::size_t i, wire::output_buffer& out) { c.job->encode_item(c.first + i, out); },
        &w.arguments);
  } catch (...) {
    for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, std::current_exception());
    return false;
  }
  if (c.job->coroutine && c.job->timeout_ns != 0) { // the worker keeps their clocks
    std::int64_t timeout = c.job->timeout_ns;
    std::memcpy(w.out.data() + at + offsetof(task_frame_header, timeout_ns), &timeout,
                sizeof timeout);
  }
  return true;
}

void pool_core::start_write(const std::shared_ptr<worker>& w) {
  // Most batches fit in the socket buffer: send them now, and leave only a rest (or a
  // full buffer) to an asynchronous write, from where the first send stopped.
  w->writing.swap(w->out);
  release_if_large(w->out);
  ssize_t sent;
  do
    sent = ::send(w->socket.native_handle(), w->writing.data(), w->writing.size(),
                  MSG_DONTWAIT | MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    sent = static_cast<ssize_t>(w->writing.size()); // the worker died: its reader handles that
  std::size_t done = sent > 0 ? static_cast<std::size_t>(sent) : 0;
  if (done == w->writing.size()) return release_if_large(w->writing);
  w->write_pending = true;
  boost::asio::async_write(
      w->socket, boost::asio::buffer(w->writing.data() + done, w->writing.size() - done),
      [self = shared_from_this(), w](boost::system::error_code ec, std::size_t) {
        std::lock_guard lock(self->mutex_);
        w->write_pending = false;
        release_if_large(w->writing);
        // A failed write means the worker died: its reader handles that.
        if (!ec) self->dispatch_locked();
      });
}

// ---- timeouts and cancellation ------------------------------------------------------------

// One timer per worker, armed for the soonest moment one of its timed items may expire;
// when it fires, the worker's page says which item runs and since when. An item that
// ended early leaves the timer armed (nothing is done per answer); it then finds nothing
// due and rearms for what is still held, if anything.
void pool_core::arm_timeout_locked(worker& w, std::int64_t due) {
  if (w.timer_due != 0 && w.timer_due <= due) return;
  if (!w.timeout_timer) w.timeout_timer = std::make_unique<boost::asio::steady_timer>(ex_);
  w.timer_due = due;
  w.timeout_timer->expires_at(std::chrono::steady_clock::time_point(std::chrono::nanoseconds(due)));
  w.timeout_timer->async_wait(
      [self = shared_from_this(), w = w.shared_from_this()](boost::system::error_code ec) {
        if (ec) return; // rearmed sooner, or the worker is gone
        std::lock_guard lock(self->mutex_);
        w->timer_due = 0;
        self->check_timeouts_locked(*w);
      });
}

std::string task_name(const pool_job& job) {
  if (job.target != 0) {
    Dl_info info{};
    auto* fn = reinterpret_cast<void*>(job.target + pool_anchor_address());
    if (::dladdr(fn, &info) != 0 && info.dli_sname) {
      int status = 0;
      std::unique_ptr<char, void (*)(void*)> name(
          abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status), std::free);
      return status == 0 && name ? name.get() : info.dli_sname;
    }
  }
  if (!job.callable_type) return "(unknown function)";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> type(
      abi::__cxa_demangle(job.callable_type->name(), nullptr, nullptr, &status), std::free);
  return std::string("of type ") + (status == 0 && type ? type.get() : job.callable_type->name());
}

std::exception_ptr pool_core::timeout_error_of(const worker& w, const pool_job& job) const {
  auto timeout = std::chrono::duration_cast<duration>(std::chrono::nanoseconds(job.timeout_ns));
  return std::make_exception_ptr(task_timeout(task_name(job), timeout, w.proc->pid()));
}

void pool_core::check_timeouts_locked(worker& w) {
  if (w.gone || w.killed || terminated_ || failed_) return;
  std::int64_t now = now_ns();
  stop_if_due_locked(w, now);
  if (w.killed) return;
  auto [overdue, look_again] = overdue_coroutine_locked(w, now);
  if (overdue != 0) {
    // It ignores its cancellation, or blocks the worker's thread: as for a late sync task.
    const pool_job* job = pool_scheduler::job_of(w, overdue);
    return kill_locked(w, overdue,
                       job && job->timeout_ns != 0 ? timeout_error_of(w, *job) : nullptr);
  }
  std::uint64_t running = w.page->running.load(std::memory_order_acquire);
  std::int64_t since = w.page->running_since.load(std::memory_order_relaxed);
  auto check = scheduler_.check_timeouts(w, now, running, since);
  if (check.expired) return kill_locked(w, check.seq, timeout_error_of(w, *check.job));
  for (std::int64_t due : {check.due, w.stopping ? w.stop_by : 0})
    if (due != 0 && (look_again == 0 || due < look_again)) look_again = due;
  if (look_again != 0) arm_timeout_locked(w, look_again);
}

std::pair<std::uint64_t, std::int64_t> pool_core::overdue_coroutine_locked(worker& w,
                                                                           std::int64_t now) {
  std::int64_t look_again = 0;
  auto consider = [&](std::int64_t due) {
    if (look_again == 0 || due < look_again) look_again = due;
  };
  // What the worker watches itself: a due read twice alike goes with the item between.
  std::int64_t due, again;
  std::uint64_t seq;
  do {
    due = w.page->stop_due.load(std::memory_order_acquire);
    seq = w.page->stop_seq.load(std::memory_order_acquire);
    again = w.page->stop_due.load(std::memory_order_acquire);
  } while (due != again);
  if (due != 0 && pool_scheduler::job_of(w, seq)) {
    if (due <= now) return {seq, 0};
    consider(due);
  }
  // Cancel frames sent that the worker may not have read.
  std::erase_if(w.cancels, [&](const auto& c) { return !pool_scheduler::job_of(w, c.first); });
  for (auto [item, kill_at] : w.cancels) {
    if (kill_at <= now) return {item, 0};
    consider(kill_at);
  }
  return {0, look_again};
}

bool pool_core::cancel(pool_sink& sink) {
  std::lock_guard lock(mutex_);
  if (!sink.abort()) return false;
  if (terminated_ || failed_) return true;
  for (auto& running : scheduler_.withdraw(sink)) {
    auto& w = static_cast<worker&>(*running.worker);
    if (running.coroutines.empty()) {
      stop_locked(w);
      continue;
    }
    // Coroutine tasks are cancelled in the worker, their siblings go on; one that does
    // not end within the grace (or a worker that does not read) is killed with it.
    std::int64_t kill_at = now_ns() + 2 * coroutine_stop_grace_ns;
    for (std::uint64_t seq : running.coroutines) {
      encode_frame(w.out, 0, 0, 1, frame_cancel,
                   [&](std::size_t, wire::output_buffer& out) { out.append(&seq, sizeof seq); });
      w.cancels.emplace_back(seq, kill_at);
    }
    arm_timeout_locked(w, kill_at);
  }
  schedule_dispatch_locked(); // the other workers' items taken back go out, cancels too
  return true;
}

// How long a worker asked for its batched answers has to send them.
constexpr std::int64_t flush_wait_ns = 500'000'000;

void pool_core::stop_locked(worker& w) noexcept {
  if (w.stopping || w.killed || w.gone) return;
  scheduler_.steal(w); // what is left is claimed: the last item runs
  // Only the cancelled task left: nothing of the worker's can be lost.
  if (w.held_items <= 1) return kill_locked(w, 0, nullptr);
  w.stopping = true;
  w.stop_by = now_ns() + flush_wait_ns;
  // Its main thread runs the tasks, and only there the handler may read the answers.
  ::syscall(SYS_tgkill, w.proc->pid(), w.proc->pid(), worker_flush_signal);
  arm_timeout_locked(w, w.stop_by);
}

void pool_core::stop_if_due_locked(worker& w, std::int64_t now) noexcept {
  if (!w.stopping || w.killed || w.gone) return;
  if (w.held_items == 0) { // the cancelled task had finished too: the worker goes on
    w.stopping = false;
    schedule_dispatch_locked();
  } else if (w.held_items == 1 || now >= w.stop_by) {
    kill_locked(w, 0, nullptr);
  }
}

void pool_core::kill_locked(worker& w, std::uint64_t seq, std::exception_ptr error) noexcept {
  if (w.killed || w.gone) return;
  scheduler_.steal(w); // it claims nothing more: the unstarted items are not lost with it
  w.killed = true;
  w.killed_seq = seq;
  w.kill_error = std::move(error);
  if (w.timeout_timer) w.timeout_timer->cancel();
  w.timer_due = 0;
  kill_group(w);
  // Its reader sees the socket close, reaps it, fails what it ran and starts a replacement.
  schedule_dispatch_locked();
}

// The worker leads its process group (lib/pool_worker.cpp), so what its tasks started
// goes with it. Until it has made the group (just after its start), only it is signalled.
void pool_core::kill_group(worker& w) noexcept {
  if (::killpg(w.proc->pid(), SIGKILL) == 0) return;
  try {
    w.proc->signal(SIGKILL);
  } catch (...) {
  }
}

// ---- a worker's end --------------------------------------------------------------------

// Returns whether a replacement should start.
bool pool_core::worker_gone_locked(worker& w, int code) {
  std::erase_if(workers_, [&](const auto& p) { return p.get() == &w; });
  if (w.timeout_timer) w.timeout_timer->cancel();
  w.timer_due = 0;
  boost::system::error_code ec;
  w.socket.close(ec);
  if (!terminated_ && !failed_) {
    bool start_failed =
        scheduler_.lost(w, std::make_exception_ptr(worker_lost(code, w.proc->pid())));
    if (start_failed) fail_pool_locked(start_failure(w, code));
  } else {
    scheduler_.forget(w);
  }
  ::munmap(w.page, worker_link_bytes);
  w.page = nullptr;
  w.claimed = nullptr;
  --live_;
  if (live_ == 0) join_waiters_.notify_all();
  bool replace = needs_worker_locked();
  if (!replace) dispatch_locked(); // with a worker fewer, others may take the retries
  return replace;
}

void pool_core::kill_workers_locked() noexcept {
  rebalance_timer_.cancel();
  for (auto& w : workers_) {
    kill_group(*w);
    if (w->timeout_timer) w->timeout_timer->cancel();
    w->timer_due = 0;
    boost::system::error_code ec;
    w->socket.close(ec); // the reader wakes, reaps the worker and lets it go
  }
}

void pool_core::terminate_locked() noexcept {
  if (terminated_) return;
  terminated_ = closed_ = true;
  kill_workers_locked();
  try {
    scheduler_.fail_all(std::make_exception_ptr(pool_closed()));
  } catch (...) {
  }
}

std::exception_ptr pool_core::start_failure(const worker& w, int code) const {
  std::string why = w.start_error.empty() ? "(a crash before its initializer returned?)"
                                          : "because its initializer threw " + w.start_error;
  return std::make_exception_ptr(
      error("coproc::pool: " + std::to_string(max_failed_starts) +
            " worker starts failed in a row, so the pool fails its tasks; the last "
            "worker, pid " +
            std::to_string(w.proc->pid()) + ", " + describe_exitcode(code) +
            " before taking tasks " + why));
}

// Workers cannot start: every unfinished and later task fails with `error`.
void pool_core::fail_pool_locked(std::exception_ptr error) noexcept {
  failed_ = error;
  kill_workers_locked();
  try {
    scheduler_.fail_all(error);
  } catch (...) {
  }
}

} // namespace coproc::detail
