// The worker side of coproc::pool: a worker reads frames, claims each item on the shared
// page before running it, and answers with records (coproc/detail/pool_protocol.hpp).
// A frame that does not add up, or names no code, makes the worker exit with
// pool_protocol_error_exit without calling anything. The worker counts toward
// maxtasksperchild the frames of which it ran an item: a chunk the parent took back whole
// is not a task.
#include "pool_worker.hpp"

#include "forkserver.hpp"
#include "fresh_image.hpp"
#include "os.hpp"

#include <coproc/errors.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <iostream>
#include <limits>
#include <system_error>
#include <unordered_set>
#include <tuple>

namespace coproc::detail {

namespace {

using clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch())
      .count();
}

void write_all(int fd, std::string& out) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(0); // the parent is gone or terminated the pool
    done += static_cast<std::size_t>(n);
  }
  release_if_large(out);
}

// Runs one item: appends its record to out.
void run_item(pool_trampoline fn, std::intptr_t target, const pool_input& in, std::string& out) {
  std::size_t at = begin_record(out);
  record_kind kind = record_kind::value;
  try {
    fn(target, in, out);
  } catch (const std::exception& e) {
    out.resize(at + sizeof(record_header));
    encode_parts(out, exception_type_name(e), std::string(e.what()));
    kind = record_kind::error;
  } catch (...) {
    out.resize(at + sizeof(record_header));
    encode_parts(out, std::string("unknown exception"), std::string());
    kind = record_kind::error;
  }
  end_record(out, at, kind);
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

// The code offsets a worker has checked, so each costs one walk of the loaded objects.
class code_checker {
public:
  explicit code_checker(bool same_object) : same_object_(same_object) {}
  bool callable(std::intptr_t offset) {
    if (checked_.count(offset)) return true;
    if (!callable_offset(offset, same_object_)) return false;
    checked_.insert(offset);
    return true;
  }

private:
  bool same_object_;
  std::unordered_set<std::intptr_t> checked_;
};

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

// The task loop of a started worker.
class worker_loop {
public:
  worker_loop(int fd, worker_page* page, unsigned maxtasks, bool same_object)
      : fd_(fd), page_(page), maxtasks_(maxtasks), code_(same_object) {}

  [[noreturn]] void run() {
    for (;;) {
      while (auto frame = next_frame()) run_frame(*frame);
      if (!out_.empty()) flush(); // answers never wait behind a blocking read
      if (!read_more()) {         // close(): everything was sent; terminate() kills instead
        flush();
        worker_exit(0);
      }
    }
  }

private:
  // The complete frame at the front of the input, checked whole before any item runs.
  std::optional<frame_view> next_frame() {
    std::optional<frame_view> frame;
    try {
      frame = parse_frame(in_.data());
    } catch (const pool_protocol_violation& e) {
      protocol_error(page_, e.what());
    }
    if (!frame) return frame;
    if (!code_.callable(frame->header.trampoline))
      protocol_error(page_, "a trampoline offset that names no code");
    if (frame->header.target != 0 && !code_.callable(frame->header.target))
      protocol_error(page_, "a target offset that names no code");
    return frame;
  }

  void run_frame(const frame_view& frame) {
    const auto& h = frame.header;
    // A kill at a timeout loses no answer of an earlier frame either.
    if ((h.flags & frame_timed) != 0 && !out_.empty()) flush();
    if (h.trampoline != timed_.trampoline) {
      record_timing();
      timed_.trampoline = h.trampoline;
    }
    auto t0 = now_ns();
    std::uint64_t ran = run_items(frame);
    auto t1 = now_ns();
    if (ran == 0) return; // taken back whole: not a task for maxtasksperchild
    timed_.items += ran;
    timed_.nanoseconds += static_cast<std::uint64_t>(t1 - t0);
    if (maxtasks_ != 0 && ++tasks_ >= maxtasks_) {
      flush();
      worker_exit(0);
    }
    if (out_.size() >= answer_flush_bytes || t1 - last_flush_ >= answer_flush_interval.count() ||
        !complete_frame_follows())
      flush();
  }

  // Runs the items of the frame that this worker claims; the parent took back the others.
  // The frame is consumed from the input, a large one before its last item runs.
  std::uint64_t run_items(const frame_view& frame) {
    const auto& h = frame.header;
    auto fn = reinterpret_cast<pool_trampoline>(h.trampoline + pool_anchor_address());
    frame_release whole{&in_, frame.size};
    const char* p = frame.items;
    std::uint64_t ran = 0;
    bool timed = (h.flags & frame_timed) != 0;
    for (std::uint64_t i = 0; i < h.count; ++i) {
      auto n = static_cast<std::size_t>(load<std::uint64_t>(p));
      pool_input input{std::string_view(p + sizeof(std::uint64_t), n)};
      if (i + 1 == h.count && whole.size > large_buffer_bytes) {
        input.on_consumed = &frame_release::release; // a large frame goes before its task runs
        input.context = &whole;
      }
      p += sizeof(std::uint64_t) + n;
      std::uint64_t expected = seq_++;
      // Fails when the parent took this item back: skip it without an answer.
      if (page_->claimed.compare_exchange_strong(expected, seq_)) {
        if (timed) page_->running_since.store(now_ns(), std::memory_order_relaxed);
        page_->running.store(seq_, std::memory_order_release);
        run_item(fn, static_cast<std::intptr_t>(h.target), input, out_);
        ++ran;
        if (timed) flush();
      }
    }
    if (!whole.done) {
      in_.consume(whole.size);
      in_.trim();
    }
    return ran;
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
    record_timing();
    flush_stdio(); // what the tasks printed comes before their results
    write_all(fd_, out_);
    last_flush_ = now_ns();
  }

  // False once the parent closed its end.
  bool read_more() {
    std::span<char> room;
    try {
      room = in_.room(bytes_wanted<task_frame_header>(in_.data()));
    } catch (const std::bad_alloc&) {
      protocol_error(page_, "no memory for a frame");
    }
    ssize_t n;
    do n = ::read(fd_, room.data(), room.size());
    while (n < 0 && errno == EINTR);
    if (n <= 0) return false;
    in_.commit(static_cast<std::size_t>(n));
    return true;
  }

  const int fd_;
  worker_page* const page_;
  const unsigned maxtasks_;
  code_checker code_;
  byte_buffer in_;
  std::string out_;
  std::uint64_t seq_ = 0; // the number of the last item received
  unsigned tasks_ = 0;
  std::int64_t last_flush_ = now_ns();
  timing_record timed_{0, 0, 0};
};

[[noreturn]] void run_initializer_then_work(const std::function<void()>& initializer, int fd,
                                            worker_page* page, unsigned maxtasks,
                                            bool same_object) {
  std::string out;
  auto failed = [&](const std::string& type, const std::string& message) {
    print_process_error(process_name(), type + ": " + message + " (in the pool initializer)");
    std::string parts;
    encode_parts(parts, type, message);
    encode_record(out, record_kind::start_failed, parts);
    write_all(fd, out);
    worker_exit(1);
  };
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
  write_all(fd, out);
  worker_loop(fd, page, maxtasks, same_object).run();
}

} // namespace

// ---- start_method::spawn and forkserver: a fresh image of this executable ------------
//
// The worker is /proc/self/exe started with posix_spawn (no copy of the parent's page
// tables, so the start cost does not grow with the parent's memory), or a child the fork
// server forks, which starts the same way; it becomes a worker in main_guard
// (lib/fresh_image.cpp), once the program's statics are constructed. Its
// body: maxtasksperchild and the initializer's offset from the anchor (0 for none); its
// descriptors: the socket and the memfd of the shared page.

namespace {
using spawned_worker_body = std::tuple<unsigned, std::int64_t>;
} // namespace

void run_spawned_worker(std::string_view body, int fd, int memfd) {
  spawned_worker_body parts;
  try {
    parts = wire::decode<spawned_worker_body>(body);
  } catch (const std::exception& e) {
    std::cerr << "coproc::pool worker " << ::getpid() << ": " << e.what() << std::endl;
    ::_exit(pool_protocol_error_exit);
  }
  auto [maxtasks, init] = parts;
  lead_process_group();
  void* mem = ::mmap(nullptr, worker_page_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) ::_exit(71);
  ::close(memfd);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  std::function<void()> initializer;
  if (init != 0) {
    // Checked by the parent too; a forged payload must not choose what this calls.
    if (!callable_offset(static_cast<std::intptr_t>(init), true))
      protocol_error(static_cast<worker_page*>(mem),
                     "an initializer offset outside libcoproc's image");
    initializer =
        reinterpret_cast<void (*)()>(static_cast<std::intptr_t>(init) + pool_anchor_address());
  }
  run_initializer_then_work(initializer, fd, static_cast<worker_page*>(mem), maxtasks, true);
}

[[noreturn]] void run_forked_worker(int parent, int fd, worker_page* page, identity id,
                                    const std::function<void()>& initializer,
                                    unsigned maxtasksperchild) {
  reset_signals();
  lead_process_group();
  // Workers are daemonic, as in Python: they die with the parent, even by SIGKILL.
  die_with_parent(parent);
  enter_child(std::move(id));
  run_initializer_then_work(initializer, fd, page, maxtasksperchild, false);
}

std::shared_ptr<process_child> start_worker_image(start_method method, int fd, int memfd,
                                                  unsigned maxtasksperchild,
                                                  std::intptr_t initializer_offset,
                                                  const identity& id) {
  fresh_image_spec spec{image_kind::pool_worker, id, true,
                        wire::encode(spawned_worker_body{maxtasksperchild, initializer_offset})};
  int fds[] = {fd, memfd};
  std::string who = "coproc::pool: worker " + id.name;
  if (method == start_method::forkserver) return start_served_child(spec, fds, who);
  return std::make_shared<direct_child>(spawn_fresh_image(spec, fds, who));
}

} // namespace coproc::detail
