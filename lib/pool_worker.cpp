// The worker side of coproc::pool: a worker reads frames, claims each item on the shared
// page before running it, and answers with records (coproc/detail/pool_protocol.hpp).
// A frame that does not add up, or names no code, makes the worker exit with
// pool_protocol_error_exit without calling anything. The worker counts toward
// maxtasksperchild the frames of which it ran an item: a chunk the parent took back whole
// is not a task. Coroutine tasks run on the worker's own io_context, up to
// pool_options::concurrency at once; answers still leave in item order (the parent
// matches them by order), so while one is running, later answers wait in line for it.
// A coroutine task with a timeout keeps its own clock here: at its timeout it is
// cancelled (terminal cancellation: it sees operation_aborted) and answers timed_out
// once it ended; a frame_cancel cancels one the same way. What must end by when is
// published on the shared page, where the parent finds it if this thread is blocked.
// A sync task cannot be stopped from inside: the parent kills the worker. Before it
// does, it sends worker_flush_signal, and the handler sends the answers batched so far
// (complete records only: the running task writes its own elsewhere), so none is lost.
#include "pool_worker.hpp"

#include "forkserver.hpp"
#include "fresh_image.hpp"
#include "image_map.hpp"
#include "os.hpp"

#include <coproc/errors.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/system_error.hpp>

#include <poll.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <deque>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <tuple>

namespace coproc::detail {

namespace {

using clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch())
      .count();
}

// keep: the capacity `out` keeps once written (a local worker's, whose large results
// leave through shared memory, keeps its pages for the next one).
void write_all(int fd, std::string& out, std::mutex* lock = nullptr,
               std::size_t keep = large_buffer_bytes) {
  std::unique_lock<std::mutex> held;
  if (lock) held = std::unique_lock(*lock);
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(0); // the parent is gone or terminated the pool
    done += static_cast<std::size_t>(n);
  }
  if (out.capacity() > keep) std::string().swap(out);
  else out.clear();
}

// The record begun at `at` becomes the error record of the exception being handled.
record_kind encode_current_error(std::string& out, std::size_t at) {
  out.resize(at + sizeof(record_header));
  try {
    throw;
  } catch (const std::exception& e) {
    encode_parts(out, exception_type_name(e), std::string(e.what()));
  } catch (...) {
    encode_parts(out, std::string("unknown exception"), std::string());
  }
  return record_kind::error;
}

// The pool kills a worker with its whole group on a timeout or a cancellation, so what
// the task started (a grandchild, a pipeline) goes too. (Not a session: a worker keeps
// the parent's controlling terminal, so a task may still open /dev/tty.)
void lead_process_group() { ::setpgid(0, 0); }

[[noreturn]] void worker_exit(int code) {
  flush_stdio();
  ::_exit(code);
}

// A frame that does not add up: nothing of it runs. Every item this worker was sent is
// marked claimed, so the parent fails them with worker_lost rather than handing the same
// frame to the next worker.
[[noreturn]] void protocol_error(worker_page* page, const char* what) {
  page->claimed.store(std::numeric_limits<std::uint64_t>::max());
  std::cerr << "coproc::pool worker " << ::getpid() << ": protocol error: " << what << std::endl;
  worker_exit(pool_protocol_error_exit);
}

// Frees the frame of the item being run once its arguments are decoded (pool_input).
struct frame_release {
  byte_buffer* in;
  std::size_t size;
  bool done = false;
  static void release(void* self) {
    auto& r = *static_cast<frame_release*>(self);
    r.in->consume(r.size);
    r.in->trim();
    r.done = true;
  }
};

// Once an item's arguments are decoded (or it is skipped): its frame if it was the large
// frame's last, and its shared bytes, which the parent may then reuse.
struct item_release {
  frame_release* frame = nullptr;
  worker_page* shared = nullptr;
  bool done = false;
  static void release(void* self) {
    auto& r = *static_cast<item_release*>(self);
    if (r.done) return;
    r.done = true;
    if (r.frame) frame_release::release(r.frame);
    if (r.shared) r.shared->arguments_released.fetch_add(1, std::memory_order_release);
  }
};

// The answers a flush request may send while a task runs (armed around the task's call).
struct flushable_answers {
  std::atomic<const char*> data{nullptr};
  std::atomic<std::size_t> size{0}, sent{0};
  std::atomic<bool> armed{false};
  int fd = -1;
};
flushable_answers flushable;

void on_flush_request(int) {
  if (!flushable.armed.load()) return;
  int saved = errno;
  const char* data = flushable.data.load();
  std::size_t size = flushable.size.load(), sent = flushable.sent.load();
  while (sent < size) {
    ssize_t n = ::send(flushable.fd, data + sent, size - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; // the parent is gone: it kills this worker anyway
    sent += static_cast<std::size_t>(n);
  }
  flushable.sent.store(sent);
  errno = saved;
}

void handle_flush_requests(int fd) {
  flushable.fd = fd;
  struct sigaction sa {};
  sa.sa_handler = on_flush_request;
  sa.sa_flags = SA_RESTART;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(worker_flush_signal, &sa, nullptr);
}

// The task loop of a started worker.
class worker_loop final : public pool_coroutine_host {
public:
  // write_lock: another thread writes on fd too (a remote worker's heartbeats); then the
  // worker also announces each frame's claims by a record before running it. local: the
  // payload regions follow the page (lib/pool_payload.hpp); a remote worker has none.
  worker_loop(int fd, worker_page* page, bool local, unsigned maxtasks, unsigned concurrency,
              code_map code, std::mutex* write_lock)
      : fd_(fd), page_(page), maxtasks_(maxtasks), concurrency_(std::max(concurrency, 1u)),
        code_(std::move(code)), write_lock_(write_lock) {
    if (!local) return;
    char* arguments = reinterpret_cast<char*>(page) + worker_page_size;
    // What the tasks start does not keep the regions' pages alive.
    ::madvise(arguments, 2 * payload_region_bytes, MADV_DONTFORK);
    regions_.emplace(
        worker_regions{arguments, payload_sender(arguments + payload_region_bytes,
                                                 payload_region_bytes, &page->results_released)});
  }

  [[noreturn]] void run() {
    for (;;) {
      while (auto frame = next_frame()) run_frame(*frame);
      if (running_ > 0) {
        await_progress();
        continue;
      }
      collect();
      if (!out_.empty()) flush();          // answers never wait behind a blocking read
      if (closing_ || !read_more(false)) { // close(): everything was sent; terminate() kills
        flush();
        worker_exit(0);
      }
    }
  }

  // ---- pool_coroutine_host ----
  std::string& begin_answer() override {
    auto& slot = *pending_.emplace_back(std::make_unique<answer_slot>());
    begin_record(slot.record);
    begun_ = &slot;
    return slot.record;
  }
  void start(awaitable<void> task) override {
    auto run = std::make_shared<coroutine_run>();
    run->slot = begun_;
    run->seq = seq_;
    begun_ = nullptr;
    ++running_;
    ++starts_;
    runs_.emplace(run->seq, run.get());
    if (item_timeout_ns_ != 0) {
      run->timer.emplace(io(), std::chrono::nanoseconds(item_timeout_ns_));
      run->timer->async_wait([this, run](boost::system::error_code ec) {
        if (!ec) stop(*run, coroutine_run::expired);
      });
      watch(run->seq, now_ns() + item_timeout_ns_ + coroutine_stop_grace_ns);
    }
    // The signal outlives the coroutine's thread, which still uses the slot as it unwinds
    // after this handler ran: the handler's copy of `run` goes in a later step.
    auto slot = run->cancel.slot();
    auto ended = [this, run](std::exception_ptr) mutable {
      boost::asio::post(io(), [run = std::move(run)] {});
    };
    boost::asio::co_spawn(io(), run_coroutine(run, std::move(task)),
                          boost::asio::bind_cancellation_slot(slot, std::move(ended)));
  }

private:
  // An answer that waits for a coroutine task ahead of it, or is one.
  struct answer_slot {
    std::string record;
    bool done = false;
  };
  // A running coroutine task.
  struct coroutine_run {
    enum outcome { running, expired, cancelled };
    answer_slot* slot = nullptr;
    std::uint64_t seq = 0;
    boost::asio::cancellation_signal cancel;
    std::optional<boost::asio::steady_timer> timer; // its timeout
    outcome why = running;
    bool ended = false; // (its timer's handler may still be queued)
  };

  awaitable<void> run_coroutine(std::shared_ptr<coroutine_run> run, awaitable<void> task) {
    answer_slot* slot = run->slot;
    record_kind kind = record_kind::value;
    try {
      // (Cancelled before its first step: a signal then had no operation to reach.)
      if (run->why != coroutine_run::running)
        throw boost::system::system_error(boost::asio::error::operation_aborted);
      co_await std::move(task);
    } catch (...) {
      kind = encode_current_error(slot->record, 0);
    }
    if (run->why == coroutine_run::expired) { // whatever it did once cancelled
      slot->record.resize(sizeof(record_header));
      kind = record_kind::timed_out;
    }
    end_answer(slot->record, 0, kind);
    run->ended = true;
    if (run->timer) run->timer->cancel();
    unwatch(run->seq);
    runs_.erase(run->seq);
    slot->done = true;
    --running_;
  }

  // Cancels a running coroutine task: it has coroutine_stop_grace_ns to end.
  void stop(coroutine_run& run, coroutine_run::outcome why) {
    if (run.why != coroutine_run::running || run.ended) return;
    run.why = why;
    watch(run.seq, now_ns() + coroutine_stop_grace_ns);
    run.cancel.emit(boost::asio::cancellation_type::terminal);
  }

  // A frame_cancel: the parent cancelled the result of item `seq`, a coroutine task that
  // may still run (one that has ended has its answer on the way).
  void cancel_item(const frame_view& frame) {
    std::uint64_t seq = 0;
    if (frame.header.count != 1 || load<std::uint64_t>(frame.items) != sizeof seq ||
        frame.header.length != 2 * sizeof seq)
      protocol_error(page_, "a cancel frame that names no item");
    seq = load<std::uint64_t>(frame.items + sizeof seq);
    in_.consume(frame.size);
    in_.trim();
    if (auto it = runs_.find(seq); it != runs_.end()) stop(*it->second, coroutine_run::cancelled);
  }

  // What must end by when, published as the soonest (worker_page::stop_due). The item
  // number goes first: a reader that sees a due also sees its item or a later pair.
  void watch(std::uint64_t seq, std::int64_t due) {
    auto [it, added] = watched_.emplace(seq, due);
    if (!added) it->second = std::min(it->second, due);
    publish_watched();
  }
  void unwatch(std::uint64_t seq) {
    if (watched_.erase(seq) != 0) publish_watched();
  }
  void publish_watched() {
    std::int64_t due = 0;
    std::uint64_t seq = 0;
    for (auto [s, d] : watched_)
      if (due == 0 || d < due) std::tie(seq, due) = std::pair(s, d);
    page_->stop_due.store(0, std::memory_order_release);
    page_->stop_seq.store(seq, std::memory_order_release);
    page_->stop_due.store(due, std::memory_order_release);
  }

  boost::asio::io_context& io() {
    if (!io_) io_.emplace(1);
    if (io_->stopped()) io_->restart();
    return *io_;
  }

  // Runs one step of the coroutine tasks, or reads what the parent sent meanwhile.
  void await_progress() {
    collect();
    if (!out_.empty()) flush();
    if (!closing_ && !read_armed_) {
      if (!socket_) socket_.emplace(io(), ::fcntl(fd_, F_DUPFD_CLOEXEC, 0)); // not for children
      read_armed_ = true;
      socket_->async_wait(boost::asio::posix::descriptor_base::wait_read,
                          [this](boost::system::error_code) {
                            read_armed_ = false;
                            readable_ = true;
                          });
    }
    io().run_one();
    if (readable_) {
      readable_ = false;
      if (!read_more(true)) closing_ = true; // finish the running tasks, then exit
    }
  }

  // Ends every running coroutine task (before the worker exits).
  void drain() {
    while (running_ > 0) io().run_one();
    collect();
  }

  // Answers that are done, in item order, go out.
  void collect() {
    while (!pending_.empty() && pending_.front()->done) {
      out_.append(pending_.front()->record);
      pending_.pop_front();
    }
  }

  // Runs one item: its record goes to out_, or in line behind a coroutine task's.
  void run_item(pool_trampoline fn, std::intptr_t target, pool_input& in) {
    while (running_ >= concurrency_) { // a slot frees when a running task ends
      io().run_one();
      collect();
      if (!out_.empty()) flush();
    }
    answer_slot* queued =
        pending_.empty() ? nullptr : pending_.emplace_back(std::make_unique<answer_slot>()).get();
    // Answers batched before it stay where a flush request finds them (not for a remote
    // worker, which another thread writes beside).
    bool flushable_now = !queued && !out_.empty() && !write_lock_;
    std::string& out = queued ? queued->record : flushable_now ? item_out_ : out_;
    if (flushable_now) {
      flushable.data = out_.data();
      flushable.size = out_.size();
      flushable.sent = 0;
      flushable.armed = true;
    }
    in.host = this;
    std::uint64_t starts = starts_;
    std::size_t at = begin_record(out);
    record_kind kind = record_kind::value;
    // A large result goes straight to the results region (a coroutine task's, which
    // ends later, from its own slot: end_answer).
    payload_spill spill(regions_ ? &regions_->results : nullptr, out);
    try {
      fn(target, in, spill.buffer());
    } catch (...) {
      spill.abandon();
      kind = encode_current_error(out, at);
    }
    if (begun_) { // a coroutine task that could not start: its error is in `out`
      begun_->record.clear();
      begun_->done = true;
      begun_ = nullptr;
    }
    if (starts_ != starts) out.resize(at); // a coroutine task started: its own slot answers
    else if (kind == record_kind::value && spill.finish())
      end_record(out, at, record_kind::shared_value);
    else end_answer(out, at, kind);
    if (queued) queued->done = true;
    if (flushable_now) {
      flushable.armed = false;
      out_.erase(0, flushable.sent.load());
      out_.append(item_out_);
      release_if_large(item_out_);
    }
  }

  // Ends the answer record begun at `at`; a large value moves to the results region.
  void end_answer(std::string& out, std::size_t at, record_kind kind) {
    if (kind == record_kind::value && regions_ &&
        share_tail(regions_->results, out, at + sizeof(record_header)))
      kind = record_kind::shared_value;
    end_record(out, at, kind);
  }

  // The complete frame at the front of the input, checked whole before any item runs.
  std::optional<frame_view> next_frame() {
    std::optional<frame_view> frame;
    try {
      frame = parse_frame(in_.data(), regions_ ? payload_region_bytes : 0);
    } catch (const pool_protocol_violation& e) {
      protocol_error(page_, e.what());
    }
    if (!frame || (frame->header.flags & frame_cancel) != 0) return frame;
    if (!code_.local(frame->header.trampoline))
      protocol_error(page_, "a trampoline offset that names no code");
    if (frame->header.target != 0 && !code_.local(frame->header.target))
      protocol_error(page_, "a target offset that names no code");
    return frame;
  }

  void run_frame(const frame_view& frame) {
    const auto& h = frame.header;
    if ((h.flags & frame_cancel) != 0) return cancel_item(frame);
    // A kill at a timeout loses no answer of an earlier frame either.
    if ((h.flags & frame_timed) != 0 && !out_.empty()) flush();
    if (h.trampoline != timed_.trampoline) {
      record_timing();
      timed_.trampoline = h.trampoline;
    }
    if (write_lock_ && (h.flags & frame_timed) == 0) announce_claims(h.count);
    auto t0 = now_ns();
    std::uint64_t ran = run_items(frame);
    auto t1 = now_ns();
    if (ran == 0) return; // taken back whole: not a task for maxtasksperchild
    timed_.items += ran;
    timed_.nanoseconds += static_cast<std::uint64_t>(t1 - t0);
    if (maxtasks_ != 0 && ++tasks_ >= maxtasks_) {
      drain();
      flush();
      worker_exit(0);
    }
    collect();
    if (out_.size() >= answer_flush_bytes || t1 - last_flush_ >= answer_flush_interval.count() ||
        !complete_frame_follows())
      flush();
  }

  // Runs the items of the frame that this worker claims; the parent took back the others.
  // The frame is consumed from the input, a large one before its last item runs.
  std::uint64_t run_items(const frame_view& frame) {
    const auto& h = frame.header;
    // This image's offsets, known since next_frame checked them; the header keeps the
    // sender's, which the timing records name.
    auto fn = reinterpret_cast<pool_trampoline>(*code_.local(h.trampoline) + pool_anchor_address());
    std::intptr_t target = h.target != 0 ? *code_.local(h.target) : 0;
    frame_release whole{&in_, frame.size};
    const char* p = frame.items;
    std::uint64_t ran = 0;
    bool timed = (h.flags & frame_timed) != 0;
    item_timeout_ns_ = timed ? std::max<std::int64_t>(h.timeout_ns, 0) : 0;
    for (std::uint64_t i = 0; i < h.count; ++i) {
      auto word = load<std::uint64_t>(p);
      auto n = static_cast<std::size_t>(word & ~item_shared);
      std::string_view bytes(p + sizeof(std::uint64_t), n);
      item_release release;
      if ((word & item_shared) != 0) { // checked by parse_frame
        bytes = *shared_bytes(regions_->arguments, payload_region_bytes, bytes);
        release.shared = page_;
      }
      if (i + 1 == h.count && whole.size > large_buffer_bytes)
        release.frame = &whole; // a large frame goes before its task runs
      pool_input input{bytes, &item_release::release, &release};
      p += sizeof(std::uint64_t) + n;
      // A remote pool times an item from its claim's arrival: one claim per timed item.
      if (timed && write_lock_) announce_claims(1);
      std::uint64_t expected = seq_++;
      // Fails when the parent took this item back: skip it without an answer.
      if (page_->claimed.compare_exchange_strong(expected, seq_)) {
        if (timed) page_->running_since.store(now_ns(), std::memory_order_relaxed);
        page_->running.store(seq_, std::memory_order_release);
        run_item(fn, target, input);
        ++ran;
        if (timed) flush();
      }
      if (release.shared) item_release::release(&release); // skipped, or its decoding threw
    }
    if (!whole.done) {
      in_.consume(whole.size);
      in_.trim();
    }
    return ran;
  }

  // A remote pool shares no page with this worker: it learns of the claims from a record,
  // which leaves before the first item runs (so a lost worker fails exactly its started
  // items). Nobody else claims on the page then, so the whole frame is claimed (a timed
  // frame item by item).
  void announce_claims(std::uint64_t count) {
    std::uint64_t last = seq_ + count;
    encode_record(out_, record_kind::claimed,
                  std::string_view(reinterpret_cast<const char*>(&last), sizeof last));
    flush();
  }

  bool complete_frame_follows() const {
    std::string_view in = in_.data();
    if (in.size() < sizeof(task_frame_header)) return false;
    return in.size() - sizeof(task_frame_header) >= load<task_frame_header>(in.data()).length;
  }

  // What the items run since the last timing record cost, for the parent's estimates.
  void record_timing() {
    if (timed_.items == 0) return;
    encode_timing(out_, timed_);
    timed_.items = 0;
    timed_.nanoseconds = 0;
  }

  void flush() {
    if (regions_) regions_->results.trim();
    record_timing();
    flush_stdio(); // what the tasks printed comes before their results
    write_all(fd_, out_, write_lock_, regions_ ? payload_sender::keep_bytes : large_buffer_bytes);
    last_flush_ = now_ns();
  }

  // False once the parent closed its end. Without `wait` it takes only what is there.
  bool read_more(bool nowait) {
    std::span<char> room;
    try {
      room = in_.room(bytes_wanted<task_frame_header>(in_.data()));
    } catch (const std::bad_alloc&) {
      protocol_error(page_, "no memory for a frame");
    }
    for (;;) {
      ssize_t n = ::recv(fd_, room.data(), room.size(), nowait ? MSG_DONTWAIT : 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (nowait) return true;
        pollfd p{fd_, POLLIN, 0};
        ::poll(&p, 1, -1);
        continue;
      }
      if (n <= 0) return false;
      in_.commit(static_cast<std::size_t>(n));
      return true;
    }
  }

  const int fd_;
  worker_page* const page_;
  const unsigned maxtasks_, concurrency_;
  code_map code_;
  // Coroutine tasks: their io_context (made at the first), the socket watched while they
  // run, the answers waiting in item order.
  std::optional<boost::asio::io_context> io_;
  std::optional<boost::asio::posix::stream_descriptor> socket_;
  std::deque<std::unique_ptr<answer_slot>> pending_;
  std::unordered_map<std::uint64_t, coroutine_run*> runs_; // by item number
  std::map<std::uint64_t, std::int64_t> watched_;          // item number -> must end by
  std::int64_t item_timeout_ns_ = 0;                       // of the item being started
  answer_slot* begun_ = nullptr; // begin_answer() was called, start() not yet
  unsigned running_ = 0;
  std::uint64_t starts_ = 0;
  bool read_armed_ = false, readable_ = false, closing_ = false;
  byte_buffer in_;
  std::string out_;
  std::string item_out_;  // a task's answer while out_ is flushable
  std::uint64_t seq_ = 0; // the number of the last item received
  unsigned tasks_ = 0;
  std::int64_t last_flush_ = now_ns();
  timing_record timed_{0, 0, 0};
  std::mutex* const write_lock_;
  std::optional<worker_regions> regions_; // a local worker's shared payloads
};

[[noreturn]] void run_initializer_then_work(const std::function<void()>& initializer, int fd,
                                            worker_page* page, bool local, unsigned maxtasks,
                                            unsigned concurrency, code_map code,
                                            std::mutex* write_lock = nullptr) {
  std::string out;
  auto failed = [&](const std::string& type, const std::string& message) {
    print_process_error(process_name(), type + ": " + message + " (in the pool initializer)");
    std::string parts;
    encode_parts(parts, type, message);
    encode_record(out, record_kind::start_failed, parts);
    write_all(fd, out, write_lock);
    worker_exit(1);
  };
  if (!write_lock) handle_flush_requests(fd);
  if (initializer) {
    try {
      initializer();
    } catch (const std::exception& e) {
      failed(exception_type_name(e), e.what());
    } catch (...) {
      failed("unknown exception", "");
    }
  }
  encode_record(out, record_kind::started);
  write_all(fd, out, write_lock);
  worker_loop(fd, page, local, maxtasks, concurrency, std::move(code), write_lock).run();
}

} // namespace

// ---- start_method::spawn and forkserver: a fresh image of this executable ------------
//
// The worker is /proc/self/exe started with posix_spawn (no copy of the parent's page
// tables, so the start cost does not grow with the parent's memory), or a child the fork
// server forks, which starts the same way; it becomes a worker in main_guard
// (lib/fresh_image.cpp), once the program's statics are constructed. Its
// body: maxtasksperchild, concurrency, the initializer (its trampoline's and target's
// offsets from the anchor, the trampoline 0 for none, and its state) and the parent's
// layout (lib/image_map.hpp); its descriptors: the socket and the memfd of the shared page.

namespace {
using spawned_worker_body =
    std::tuple<unsigned, unsigned, std::int64_t, std::int64_t, std::string, std::string>;
} // namespace

void run_spawned_worker(std::string_view body, int fd, int memfd) {
  spawned_worker_body parts;
  code_map code;
  try {
    parts = wire::decode<spawned_worker_body>(body);
    code = code_map(std::get<5>(parts));
  } catch (const std::exception& e) {
    std::cerr << "coproc::pool worker " << ::getpid() << ": " << e.what() << std::endl;
    ::_exit(pool_protocol_error_exit);
  }
  auto& [maxtasks, concurrency, init, init_target, init_state, layout] = parts;
  lead_process_group();
  void* mem = ::mmap(nullptr, worker_link_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) ::_exit(71);
  ::close(memfd);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  std::function<void()> initializer;
  if (init != 0) {
    // Checked by the parent too; a forged payload must not choose what this calls.
    auto fn = code.local(static_cast<std::intptr_t>(init));
    auto target = init_target != 0 ? code.local(static_cast<std::intptr_t>(init_target))
                                   : std::optional<std::intptr_t>(0);
    if (!fn || !target)
      protocol_error(static_cast<worker_page*>(mem), "an initializer offset that names no code");
    initializer = [fn = reinterpret_cast<pool_trampoline>(*fn + pool_anchor_address()),
                   target = *target, &state = init_state] {
      std::string ignored; // what it returns
      wire::output_buffer out(ignored);
      fn(target, pool_input{state}, out);
    };
  }
  run_initializer_then_work(initializer, fd, static_cast<worker_page*>(mem), true, maxtasks,
                            concurrency, std::move(code));
}

[[noreturn]] void run_forked_worker(int parent, int fd, worker_page* page, identity id,
                                    const std::function<void()>& initializer,
                                    unsigned maxtasksperchild, unsigned concurrency) {
  reset_signals();
  lead_process_group();
  // Workers are daemonic, as in Python: they die with the parent, even by SIGKILL.
  die_with_parent(parent);
  enter_child(std::move(id));
  run_initializer_then_work(initializer, fd, page, true, maxtasksperchild, concurrency, {});
}

void run_remote_work(int fd, std::intptr_t initializer_offset, unsigned maxtasksperchild,
                     code_map code, std::mutex& write_lock) {
  static worker_page page; // this worker's own: the pool learns of claims by records
  std::function<void()> initializer;
  if (initializer_offset != 0) {
    auto fn = code.local(initializer_offset);
    if (!fn) protocol_error(&page, "an initializer offset that names no code");
    initializer = reinterpret_cast<void (*)()>(*fn + pool_anchor_address());
  }
  // The one worker without shared payloads: it shares no memory with its pool.
  run_initializer_then_work(initializer, fd, &page, false, maxtasksperchild, 1, std::move(code),
                            &write_lock);
}

std::shared_ptr<process_child> start_worker_image(start_method method, int fd, int memfd,
                                                  unsigned maxtasksperchild, unsigned concurrency,
                                                  const pool_initializer::travel_form& initializer,
                                                  const identity& id) {
  fresh_image_spec spec{image_kind::pool_worker, id, true,
                        wire::encode(spawned_worker_body{
                            maxtasksperchild, concurrency, initializer.trampoline,
                            initializer.target, initializer.state, startup_image_layout()})};
  int fds[] = {fd, memfd};
  std::string who = "coproc::pool: worker " + id.name;
  if (method == start_method::forkserver) return start_served_child(spec, fds, who);
  return std::make_shared<direct_child>(spawn_fresh_image(spec, fds, who));
}

} // namespace coproc::detail
