// The parent's side of a pool with remote workers (lib/pool_remote.hpp), once its launcher
// runs (lib/pool_remote_launch.cpp): it checks each connection's proof of the secret, then
// serves tasks to it as pool_core serves a local worker, with the same scheduler and
// frames. A worker's claims arrive as records, and its heartbeats too: one silent for
// remote_missed_heartbeats intervals is dropped (its connection reset) and lost.
#include "pool_remote.hpp"

#include "fresh_image.hpp"
#include "image_map.hpp"
#include "pool_core.hpp"
#include "pool_protocol.hpp"

#include <coproc/errors.hpp>
#include <coproc/wire.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace coproc::detail {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace

std::string format_endpoint(const asio::ip::address& a, unsigned short port) {
  return a.is_v6() ? "[" + a.to_string() + "]:" + std::to_string(port)
                   : a.to_string() + ":" + std::to_string(port);
}

sha256_digest remote_proof_of(std::string_view secret, std::string_view label,
                              const unsigned char (&first)[16], const unsigned char (&second)[16]) {
  std::string message(label);
  message.append(reinterpret_cast<const char*>(first), 16);
  message.append(reinterpret_cast<const char*>(second), 16);
  return hmac_sha256(secret, message);
}

void random_bytes(unsigned char* out, std::size_t n) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t got = ::getrandom(out + done, n - done, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw std::system_error(errno, std::generic_category(), "coproc: getrandom");
    done += static_cast<std::size_t>(got);
  }
}

// ---- connections -----------------------------------------------------------------------

awaitable<void> remote_core::accept_loop(std::shared_ptr<remote_core> self) {
  for (;;) {
    boost::system::error_code ec;
    auto accept = self->acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    tcp::socket socket = co_await std::move(accept);
    if (ec) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) co_return;
      continue; // EMFILE and the like: the next one may do
    }
    {
      std::lock_guard lock(self->mutex_);
      if (self->terminated_ || self->failed_) continue; // closed by its destructor
      ++self->handshakes_;
    }
    asio::co_spawn(self->ex_, handshake(self, std::move(socket)), asio::detached);
  }
}

awaitable<void> remote_core::handshake(std::shared_ptr<remote_core> self, tcp::socket socket) {
  boost::system::error_code ec;
  std::string peer = "?";
  {
    auto ep = socket.remote_endpoint(ec);
    if (!ec) peer = format_endpoint(ep.address(), ep.port());
  }
  // A peer that says nothing is dropped after this long.
  asio::steady_timer limit(self->ex_);
  limit.expires_after(std::max<duration>(std::chrono::seconds(5), 5 * self->remote_.heartbeat));
  limit.async_wait([&socket](boost::system::error_code e) {
    if (!e) {
      boost::system::error_code ignored;
      socket.cancel(ignored);
    }
  });
  std::string why;
  remote_hello hello{};
  remote_challenge challenge{};
  remote_proof answer{};
  auto token = asio::redirect_error(asio::use_awaitable, ec);
  auto read_hello = asio::async_read(socket, asio::buffer(&hello, sizeof hello), token);
  co_await std::move(read_hello);
  if (ec) why = "no greeting (" + ec.message() + ")";
  else if (std::memcmp(hello.magic, remote_magic, sizeof remote_magic) != 0)
    why = "it does not speak coproc's remote protocol";
  if (why.empty()) {
    std::memcpy(challenge.magic, remote_magic, sizeof remote_magic);
    random_bytes(challenge.nonce, sizeof challenge.nonce);
    challenge.proof = remote_proof_of(self->secret_, "coproc pool", hello.nonce, challenge.nonce);
    auto send = asio::async_write(socket, asio::buffer(&challenge, sizeof challenge), token);
    co_await std::move(send);
    if (!ec) {
      auto read_answer = asio::async_read(socket, asio::buffer(&answer, sizeof answer), token);
      co_await std::move(read_answer);
    }
    if (ec) why = "no proof of the secret (" + ec.message() + ")";
    else if (!equal_digests(answer.proof, remote_proof_of(self->secret_, "coproc worker",
                                                          challenge.nonce, hello.nonce)))
      why = "a wrong proof of the secret";
  }
  limit.cancel();
  std::unique_lock lock(self->mutex_);
  --self->handshakes_;
  if (!why.empty() || self->terminated_ || self->failed_) {
    if (!why.empty())
      std::cerr << "coproc::pool: refused a remote worker connection from " << peer << ": " << why
                << std::endl;
    socket.close(ec);
    self->settle_locked();
    co_return;
  }
  auto w = std::make_shared<worker>(self->ex_);
  w->socket = std::move(socket);
  w->socket.set_option(tcp::no_delay(true), ec);
  w->peer = peer;
  w->pid = static_cast<int>(hello.pid);
  w->run = hello.run;
  w->host.assign(hello.host, strnlen(hello.host, sizeof hello.host));
  w->name = next_child_identity("RemotePoolWorker").name;
  w->last_heard = now_ns();
  std::string welcome = wire::encode(remote_welcome{
      w->name, self->options_.maxtasksperchild, self->initializer_offset_,
      std::chrono::duration_cast<std::chrono::nanoseconds>(self->remote_.heartbeat).count(),
      pool_image_offset(&run_remote_worker), startup_image_layout()});
  std::uint64_t length = welcome.size();
  w->out.append(reinterpret_cast<const char*>(&length), sizeof length);
  w->out += welcome;
  for (auto& l : self->launches_)
    if (l->run == w->run) l->connected = true;
  self->workers_.push_back(w);
  self->scheduler_.add(*w);
  ++self->ever_connected_;
  self->most_connected_ = std::max(self->most_connected_, self->workers_.size());
  self->connect_timer_.cancel();
  self->dispatch_locked();
  lock.unlock();
  auto reader = read_loop(self, w);
  co_await std::move(reader);
}

awaitable<void> remote_core::read_loop(std::shared_ptr<remote_core> self,
                                       std::shared_ptr<worker> w) {
  byte_buffer in;
  std::string why;
  for (;;) {
    std::size_t want = bytes_wanted<record_header>(in.data());
    std::span<char> room;
    try {
      room = in.room(want).first(want);
    } catch (const std::bad_alloc&) {
      why = "no memory for its answer";
      break;
    }
    boost::system::error_code ec;
    auto start_read = [&](auto handler) {
      std::lock_guard lock(self->mutex_);
      w->socket.async_read_some(asio::buffer(room.data(), room.size()), std::move(handler));
    };
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    auto read = asio::async_initiate<decltype(token), void(boost::system::error_code, std::size_t)>(
        start_read, token);
    std::size_t n = co_await std::move(read);
    if (ec || n == 0) {
      why = ec && ec != asio::error::eof ? "its connection failed (" + ec.message() + ")"
                                         : std::string("its connection closed");
      break;
    }
    in.commit(n);
    std::lock_guard lock(self->mutex_);
    w->last_heard = now_ns();
    if (!self->take_results_locked(*w, in)) {
      why = "it sent a record that does not add up";
      break;
    }
    self->dispatch_locked();
    in.trim();
  }
  std::lock_guard lock(self->mutex_);
  self->worker_gone_locked(*w, w->lost_why.empty() ? why : w->lost_why);
}

bool remote_core::take_results_locked(worker& w, byte_buffer& in) {
  bool answered = false;
  try {
    while (auto record = parse_record(in.data())) {
      switch (record->kind) {
      case record_kind::heartbeat:
        if (!record->bytes.empty()) return false;
        break;
      case record_kind::claimed: {
        if (record->bytes.size() != sizeof(std::uint64_t)) return false;
        auto seq = load<std::uint64_t>(record->bytes.data());
        if (seq > w.sent_seq || seq < w.claimed_counter.load()) return false;
        w.claimed_counter.store(seq);
        w.claim_heard = now_ns();
        break;
      }
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
      default:
        return false;
      }
      in.consume(record->size);
    }
  } catch (const pool_protocol_violation&) {
    return false;
  }
  if (answered) scheduler_.progressed(w, now_ns());
  return true;
}

void remote_core::deliver_locked(worker& w, bool failed, std::string_view bytes) {
  auto answer = scheduler_.answered(w);
  if (!failed) return answer.sink->deliver(answer.index, bytes);
  std::exception_ptr e;
  try {
    auto [type, message] = decode_parts<std::pair<std::string, std::string>>(bytes);
    e = std::make_exception_ptr(remote_error(std::move(type), std::move(message), w.pid));
  } catch (...) {
    e = std::current_exception();
  }
  answer.sink->fail(answer.index, e);
}

// ---- tasks -----------------------------------------------------------------------------

void remote_core::stream_opened() {
  std::lock_guard lock(mutex_);
  if (closed_)
    throw std::logic_error(std::string("coproc::pool: cannot submit a task to a ") +
                           (terminated_ ? "terminated" : "closed") + " pool");
  ++open_streams_;
}

void remote_core::stream_closed() noexcept {
  std::lock_guard lock(mutex_);
  --open_streams_;
  if (closed_) dispatch_locked(); // the workers may be done now
}

void remote_core::submit(std::shared_ptr<pool_job> job, std::optional<duration> timeout,
                         bool from_stream) {
  if (timeout && *timeout <= duration::zero())
    throw std::invalid_argument("coproc::pool: a task timeout must be positive, not " +
                                std::to_string(timeout->count()) + " ns");
  if (!timeout) timeout = options_.task_timeout;
  if (timeout && job->coroutine)
    throw std::invalid_argument("coproc::pool: a timeout for coroutine tasks is not available "
                                "yet; bound the wait inside the task instead");
  if (timeout)
    job->timeout_ns = std::max<std::int64_t>(
        1, std::chrono::duration_cast<std::chrono::nanoseconds>(*timeout).count());
  job->sink->canceller = shared_from_this();
  std::lock_guard lock(mutex_);
  if (closed_ && (terminated_ || !from_stream))
    throw std::logic_error(std::string("coproc::pool: cannot submit a task to a ") +
                           (terminated_ ? "terminated" : "closed") + " pool");
  check_reaches_workers_locked(*job);
  if (failed_) {
    for (std::size_t i = 0; i < job->count; ++i) job->sink->fail(i, failed_);
    return;
  }
  if (job->count == 0) return;
  if (scheduler_.submit(std::move(job))) {
    dispatch_locked();
    if (!scheduler_.has_work()) return;
  }
  schedule_dispatch_locked();
}

void remote_core::check_reaches_workers_locked(const pool_job& job) {
  for (std::intptr_t offset : {job.trampoline, job.target}) {
    if (offset == 0 || checked_offsets_.count(offset)) continue;
    check_reaches_fresh_image(offset, "coproc::pool: with remote workers the task");
    checked_offsets_.insert(offset);
  }
}

void remote_core::schedule_dispatch_locked() {
  if (dispatch_posted_) return;
  dispatch_posted_ = true;
  asio::post(ex_, [self = shared_from_this()] {
    std::lock_guard lock(self->mutex_);
    self->dispatch_posted_ = false;
    self->dispatch_locked();
  });
}

void remote_core::dispatch_locked() {
  if (terminated_ || failed_) return;
  std::int64_t now = now_ns();
  auto result = scheduler_.dispatch(now, [&](scheduled_worker& sw, const pool_chunk& c) {
    auto& w = static_cast<worker&>(sw);
    if (!encode_chunk(w, c)) return false;
    // The item cannot have started before now: its timeout is due at the earliest then.
    if (c.job->timeout_ns != 0) arm_timeout_locked(w.shared_from_this(), now + c.job->timeout_ns);
    return true;
  });
  if (result.more) schedule_dispatch_locked();
  // Closed, nothing left to send or running unclaimed, no lazy stream that may submit more:
  // each worker's connection is shut once its writes are done.
  bool finished = closed_ && !scheduler_.has_work() && open_streams_ == 0;
  bool all_claimed = scheduler_.all_claimed();
  for (auto& w : workers_) {
    if (w->gone || w->write_pending) continue;
    if (!w->out.empty()) start_write(w);
    else if (finished && all_claimed && !w->shut) {
      w->shut = true;
      boost::system::error_code ec;
      w->socket.shutdown(asio::socket_base::shutdown_send, ec);
    }
  }
  if (finished && workers_.empty()) kill_launches_later_locked();
}

bool remote_core::encode_chunk(worker& w, const pool_chunk& c) {
  try {
    // A timed frame's items are claimed one by one: a claim's arrival is its item's start.
    encode_frame(
        w.out, c.job->trampoline, c.job->target, c.n, c.job->timeout_ns != 0 ? frame_timed : 0,
        [&](std::size_t i, wire::output_buffer& out) { c.job->encode_item(c.first + i, out); });
  } catch (...) {
    for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, std::current_exception());
    return false;
  }
  return true;
}

void remote_core::start_write(const std::shared_ptr<worker>& w) {
  w->writing.swap(w->out);
  release_if_large(w->out);
  ssize_t sent;
  do
    sent = ::send(w->socket.native_handle(), w->writing.data(), w->writing.size(),
                  MSG_DONTWAIT | MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
    sent = static_cast<ssize_t>(w->writing.size()); // the link failed: its reader sees it
  std::size_t done = sent > 0 ? static_cast<std::size_t>(sent) : 0;
  if (done == w->writing.size()) return release_if_large(w->writing);
  w->write_pending = true;
  asio::async_write(w->socket, asio::buffer(w->writing.data() + done, w->writing.size() - done),
                    [self = shared_from_this(), w](boost::system::error_code ec, std::size_t) {
                      std::lock_guard lock(self->mutex_);
                      w->write_pending = false;
                      release_if_large(w->writing);
                      if (!ec) self->dispatch_locked();
                    });
}

// ---- timeouts and cancellation ---------------------------------------------------------
//
// As for local workers (lib/pool_core.cpp), one timer per worker, armed for the soonest
// moment one of its timed items may expire. The running item is the one claimed last (a
// timed frame is claimed item by item), started when its claim came: the clock runs from
// the pool's view of the start, later than the worker's by the link's latency.

void remote_core::arm_timeout_locked(const std::shared_ptr<worker>& w, std::int64_t due) {
  if (w->timer_due != 0 && w->timer_due <= due) return;
  if (!w->timeout_timer) w->timeout_timer = std::make_unique<asio::steady_timer>(ex_);
  w->timer_due = due;
  w->timeout_timer->expires_at(
      std::chrono::steady_clock::time_point(std::chrono::nanoseconds(due)));
  w->timeout_timer->async_wait([self = shared_from_this(), w](boost::system::error_code ec) {
    if (ec) return; // rearmed sooner, or the worker is gone
    std::lock_guard lock(self->mutex_);
    w->timer_due = 0;
    self->check_timeouts_locked(*w);
  });
}

void remote_core::check_timeouts_locked(worker& w) {
  if (w.gone || w.killed || terminated_ || failed_) return;
  auto check = scheduler_.check_timeouts(w, now_ns(), w.claimed_counter.load(), w.claim_heard);
  if (check.expired) {
    auto timeout =
        std::chrono::duration_cast<duration>(std::chrono::nanoseconds(check.job->timeout_ns));
    stop_locked(w, check.seq,
                std::make_exception_ptr(
                    task_timeout(task_name(*check.job) + " on host " + w.host, timeout, w.pid)));
  } else if (check.due != 0) {
    arm_timeout_locked(w.shared_from_this(), check.due);
  }
}

bool remote_core::cancel(pool_sink& sink) {
  std::lock_guard lock(mutex_);
  if (!sink.abort()) return false;
  if (terminated_ || failed_) return true;
  for (auto& running : scheduler_.withdraw(sink))
    stop_locked(static_cast<worker&>(*running.worker), 0, nullptr);
  schedule_dispatch_locked();
  return true;
}

// The pool cannot signal another host: a byte of urgent data tells the worker's supervisor
// (lib/pool_remote_worker.cpp) to kill the runner's process group. The connection then
// ends from the worker's side after every record the runner sent, so the items it had
// claimed fail (the stopped one with `error`) and the rest go to other workers. If even
// that byte cannot be sent, the connection is reset: the supervisor kills the runner too.
void remote_core::stop_locked(worker& w, std::uint64_t seq, std::exception_ptr error) noexcept {
  if (w.killed || w.gone) return;
  w.killed = true;
  w.killed_seq = seq;
  w.kill_error = std::move(error);
  if (w.timeout_timer) w.timeout_timer->cancel();
  w.timer_due = 0;
  w.stop_sent = now_ns();
  const char stop = '!';
  ssize_t sent;
  do sent = ::send(w.socket.native_handle(), &stop, 1, MSG_OOB | MSG_DONTWAIT | MSG_NOSIGNAL);
  while (sent < 0 && errno == EINTR);
  if (sent != 1) drop_locked(w, "it could not be told to stop its task");
  schedule_dispatch_locked();
}

// ---- heartbeats, losses ----------------------------------------------------------------

void remote_core::arm_tick_locked() {
  if (tick_armed_ || terminated_) return;
  tick_armed_ = true;
  tick_timer_.expires_after(remote_.heartbeat);
  tick_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    std::lock_guard lock(self->mutex_);
    self->tick_armed_ = false;
    if (ec || self->terminated_) return;
    self->tick_locked();
    if (!self->done_locked()) self->arm_tick_locked();
  });
}

void remote_core::tick_locked() {
  auto limit = remote_missed_heartbeats *
               std::chrono::duration_cast<std::chrono::nanoseconds>(remote_.heartbeat).count();
  auto now = now_ns();
  for (auto& w : workers_) {
    // An idle runner's read can pass the urgent mark before its supervisor polls (the
    // kernel then clears it): a stop unheeded for as long as a heartbeat loss is a reset.
    if (w->killed && w->lost_why.empty() && now - w->stop_sent > limit)
      drop_locked(*w, "it did not stop its task when told");
    if (w->lost_why.empty() && now - w->last_heard > limit) {
      std::ostringstream why;
      why << "no heartbeat for " << double(now - w->last_heard) / 1e9 << " s";
      drop_locked(*w, why.str());
    }
  }
}

// Resets the connection (a live worker exits when it learns); its reader ends it.
void remote_core::drop_locked(worker& w, std::string why) noexcept {
  if (w.lost_why.empty()) w.lost_why = std::move(why);
  boost::system::error_code ec;
  w.socket.set_option(asio::socket_base::linger(true, 0), ec);
  w.socket.close(ec);
}

void remote_core::worker_gone_locked(worker& w, const std::string& why) {
  std::erase_if(workers_, [&](const auto& p) { return p.get() == &w; });
  if (w.timeout_timer) w.timeout_timer->cancel();
  w.timer_due = 0;
  boost::system::error_code ec;
  w.socket.set_option(asio::socket_base::linger(true, 0), ec);
  w.socket.close(ec);
  // One the pool stopped (a timeout, a cancellation) did not fail to start.
  if (w.killed) w.started = true;
  if (!terminated_ && !failed_) {
    std::string text = "coproc::pool: remote worker " + w.name + " (pid " + std::to_string(w.pid) +
                       " on " + w.host + ", " + w.peer +
                       ") was lost while running the task: " + why;
    bool start_failed = scheduler_.lost(
        w, std::make_exception_ptr(worker_lost(remote_lost_exitcode, w.pid, std::move(text))));
    if (start_failed)
      fail_pool_locked(std::make_exception_ptr(error(
          "coproc::pool: " + std::to_string(max_failed_starts) +
          " remote workers in a row ended before taking tasks" +
          (w.start_error.empty() ? std::string()
                                 : ", the last because its initializer threw " + w.start_error))));
  } else {
    scheduler_.forget(w);
  }
  // Its supervisor connects a new runner if it lives; with per_worker, a run that ends is
  // started again (watch_launch).
  dispatch_locked();
  settle_locked();
}

// ---- the end ---------------------------------------------------------------------------

void remote_core::close() {
  std::lock_guard lock(mutex_);
  if (closed_) return;
  closed_ = true;
  dispatch_locked();
}

void remote_core::terminate() noexcept {
  std::lock_guard lock(mutex_);
  terminate_locked();
}

void remote_core::terminate_locked() noexcept {
  if (terminated_) return;
  terminated_ = closed_ = true;
  for (auto& w : workers_) drop_locked(*w, "the pool was terminated");
  try {
    scheduler_.fail_all(std::make_exception_ptr(pool_closed()));
  } catch (...) {
  }
  end_launches_locked();
}

void remote_core::fail_pool_locked(std::exception_ptr e) noexcept {
  failed_ = e;
  for (auto& w : workers_) drop_locked(*w, "the pool failed");
  try {
    scheduler_.fail_all(e);
  } catch (...) {
  }
  end_launches_locked();
}

// Nothing left that could answer: joiners wake, timers and the listener stop (so an
// io_context that ran only this pool ends), and if the pool was not closed, its
// unfinished and later tasks fail: no worker remains and none can start.
void remote_core::settle_locked() {
  if (!done_locked()) return;
  boost::system::error_code ec;
  acceptor_.close(ec);
  tick_timer_.cancel();
  connect_timer_.cancel();
  kill_timer_.cancel();
  // (Closed with a lazy stream still open: its later items must fail, not wait.)
  if ((!closed_ || open_streams_ != 0) && !failed_)
    fail_pool_locked(std::make_exception_ptr(
        error("coproc::pool: every remote worker was lost and the launcher ended; " +
              launcher_report_locked())));
  join_waiters_.notify_all();
}

bool remote_core::done_locked() const {
  return workers_.empty() && launches_.empty() && handshakes_ == 0;
}

awaitable<void> remote_core::join(std::shared_ptr<remote_core> self) {
  {
    std::lock_guard lock(self->mutex_);
    if (!self->closed_)
      throw std::logic_error("coproc::pool::join: call close() or terminate() first");
    self->dispatch_locked();
  }
  auto* core = self.get();
  auto gone = wait_for_condition(
      core->mutex_, core->join_waiters_, [core] { return core->done_locked(); }, deadline::never());
  co_await std::move(gone);
  std::lock_guard lock(self->mutex_);
  boost::system::error_code ec;
  self->acceptor_.close(ec);
  self->kill_timer_.cancel();
  self->tick_timer_.cancel();
  self->connect_timer_.cancel();
}

std::size_t remote_core::size() const {
  std::lock_guard lock(mutex_);
  return workers_.size();
}

std::size_t remote_core::expected_workers() const {
  std::lock_guard lock(mutex_);
  if (remote_.processes > 0) return remote_.processes;
  return std::max<std::size_t>(1, most_connected_);
}

} // namespace coproc::detail
