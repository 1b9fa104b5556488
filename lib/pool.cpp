// The pool's core: worker processes, their transport, dispatch and crash recovery.
//
// Each worker has one Unix stream socket to the parent. The parent sends one frame per
// chunk (task_frame_header in coproc/detail/pool_task.hpp, then the items), and the
// worker answers with records: once `started` when its initializer returned (or
// `start_failed` with the initializer's error), then one value or error record per item,
// in order, and, before each batch of answers leaves and whenever the function changes,
// a timing record. Every length is 64 bits and checked against the bytes received: a
// frame that does not add up, or names no code, makes the worker exit with
// pool_protocol_error_exit without calling anything; a bad record makes the parent kill
// the worker. Many frames go out in one write and many records come back in one, so
// small tasks do not cost a syscall each.
//
// Items are numbered per worker in the order sent, and a worker claims each one before
// running it by advancing a counter in a page shared with the parent (a compare-and-
// swap, no syscall). The parent may claim a worker's unstarted items the same way and
// send them elsewhere: a worker stuck in a slow task loses what was queued behind it to
// idle workers, and a worker that dies fails exactly the items it had claimed and not
// answered (worker_lost); the rest go to other workers. A chunk taken back whole does not
// count toward maxtasksperchild, on either side (the worker counts the frames of which it
// ran an item).
//
// How many items a worker may hold is adaptive: about 2 ms of work by the measured cost
// of the task's function, and one chunk at a time while that cost is unknown (so slow
// tasks spread over the workers as Python's shared queue spreads them).
#include <coproc/pool.hpp>
#include <coproc/this_process.hpp>

#include <coproc/detail/child.hpp>

#include "os.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <fcntl.h>
#include <link.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <system_error>
#include <unordered_map>
#include <unordered_set>

namespace coproc::detail {

void pool_image_anchor() noexcept {
  // Distinct code, so identical-code folding never merges the anchor with another function.
  asm volatile("" ::: "memory");
}

namespace {

using clock = std::chrono::steady_clock;
// A larger chunk travels as several frames (each one task for maxtasksperchild), so no
// single step of the parent's loop encodes or decodes more than about 0.2 ms of items.
constexpr std::size_t max_frame_items = 16384;
// No frame or record is believed beyond this (64 TiB): a length above it is corrupt.
constexpr std::uint64_t max_message_bytes = std::uint64_t(1) << 46;
// This many worker starts failing in a row (the process ended before its initializer
// returned) fail the pool's tasks instead of starting workers forever.
constexpr unsigned max_failed_starts = 3;
// Buffers above this are given back once what they held is used.
constexpr std::size_t large_buffer = 1 << 20;

// What a worker tells its parent without a syscall.
struct worker_page {
  // The last item number claimed, by the worker (to run it) or by the parent (to take
  // it back). Both only ever advance it.
  std::atomic<std::uint64_t> claimed{0};
};
constexpr std::size_t page_size = 4096;
static_assert(sizeof(worker_page) <= page_size);

template <class T> T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <class T> void store(std::string& s, std::size_t at, T v) { std::memcpy(s.data() + at, &v, sizeof v); }
template <class T> void append(std::string& s, T v) { s.append(reinterpret_cast<const char*>(&v), sizeof v); }

void append_record(std::string& out, record_kind kind, std::string_view bytes = {}) {
  append(out, record_header{bytes.size(), kind});
  out.append(bytes);
}

void release_if_large(std::string& s) {
  if (s.capacity() > large_buffer) std::string().swap(s);
  else s.clear();
}

// Received bytes: read straight into, consumed from the front. A message announced as
// large gets exactly its size in one allocation (no doubling, no zero-filling), and the
// memory goes back once it is consumed.
class byte_buffer {
public:
  std::string_view data() const { return {buf_.get() + begin_, end_ - begin_}; }
  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Room for n more bytes at the end (std::bad_alloc when there is no memory for it).
  std::span<char> room(std::size_t n) {
    std::size_t size = end_ - begin_;
    if (cap_ - end_ < n) {
      if (cap_ - size >= n && size <= large_buffer) {
        std::memmove(buf_.get(), buf_.get() + begin_, size);
      } else {
        std::size_t cap = std::max(size + n, base_size);
        std::unique_ptr<char[]> bigger(new char[cap]);
        if (size != 0) std::memcpy(bigger.get(), buf_.get() + begin_, size); // buf_ may be null
        buf_ = std::move(bigger);
        cap_ = cap;
      }
      begin_ = 0;
      end_ = size;
    }
    return {buf_.get() + end_, cap_ - end_};
  }
  void commit(std::size_t n) { end_ += n; }
  // Gives a large allocation back when what is left of it is small.
  void trim() {
    std::size_t size = end_ - begin_;
    if (cap_ <= large_buffer || size > base_size) return;
    std::unique_ptr<char[]> smaller(new char[base_size]);
    std::memcpy(smaller.get(), buf_.get() + begin_, size);
    buf_ = std::move(smaller);
    cap_ = base_size;
    begin_ = 0;
    end_ = size;
  }
  static constexpr std::size_t base_size = 256 * 1024;

private:
  std::unique_ptr<char[]> buf_;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
};

// How many more bytes complete the message at the front of `in` whose header is H, or a
// plain read's worth while the header itself is incomplete or the message is complete.
template <class H> std::size_t bytes_wanted(std::string_view in) {
  constexpr std::size_t plain = 64 * 1024;
  if (in.size() < sizeof(H)) return plain;
  auto length = load<H>(in.data()).length;
  if (length > max_message_bytes) return plain; // refused when parsed
  std::size_t total = sizeof(H) + static_cast<std::size_t>(length);
  return in.size() < total ? total - in.size() : plain;
}

// Whether the code at this offset from the anchor may be called: it lies in an executable
// segment of a loaded object and, for a fresh image (spawn), in the anchor's own object,
// the only one placed at the same offset from the anchor there.
bool callable_offset(std::intptr_t offset, bool same_object) {
  struct query {
    std::uintptr_t addr;
    const void* object = nullptr;
    bool found = false;
  };
  auto find = [](std::uintptr_t addr) {
    query q{addr};
    ::dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) -> int {
          auto& q = *static_cast<query*>(data);
          for (int i = 0; i < info->dlpi_phnum; ++i) {
            const auto& ph = info->dlpi_phdr[i];
            if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
            std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
            if (q.addr >= start && q.addr - start < ph.p_memsz) {
              q.found = true;
              q.object = info->dlpi_phdr; // one per object
              return 1;
            }
          }
          return 0;
        },
        &q);
    return q;
  };
  auto anchor = static_cast<std::uintptr_t>(pool_anchor_address());
  auto code = find(static_cast<std::uintptr_t>(offset) + anchor); // wraps, never overflows
  if (!code.found) return false;
  return !same_object || code.object == find(anchor).object;
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

// ---- the worker side -------------------------------------------------------------

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
  std::size_t at = out.size();
  out.append(sizeof(record_header), '\0');
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
  record_header header{out.size() - at - sizeof header, kind};
  std::memcpy(out.data() + at, &header, sizeof header);
}

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

bool has_complete_frame(std::string_view in) {
  if (in.size() < sizeof(task_frame_header)) return false;
  return in.size() - sizeof(task_frame_header) >= load<task_frame_header>(in.data()).length;
}

struct task_frame {
  task_frame_header header;
  const char* items; // header.length bytes
};

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

// The complete frame at the front of `in`, nullopt while it is incomplete. Every length
// must add up to exactly what the header announced and the offsets must name code,
// before any item runs.
std::optional<task_frame> next_frame(std::string_view in, worker_page* page, code_checker& code) {
  if (in.size() < sizeof(task_frame_header)) return std::nullopt;
  auto header = load<task_frame_header>(in.data());
  if (header.length > max_message_bytes) protocol_error(page, "a frame longer than 64 TiB");
  if (in.size() - sizeof header < header.length) return std::nullopt;
  if (header.count == 0 || header.count > max_frame_items) protocol_error(page, "a frame item count out of range");
  const char* items = in.data() + sizeof header;
  std::uint64_t left = header.length;
  for (std::uint64_t i = 0; i < header.count; ++i) {
    if (left < sizeof(std::uint64_t)) protocol_error(page, "a frame shorter than its items");
    auto n = load<std::uint64_t>(items + (header.length - left));
    left -= sizeof n;
    if (n > left) protocol_error(page, "an item longer than its frame");
    left -= n;
  }
  if (left != 0) protocol_error(page, "bytes after a frame's last item");
  if (!code.callable(header.trampoline)) protocol_error(page, "a trampoline offset that names no code");
  if (header.target != 0 && !code.callable(header.target)) protocol_error(page, "a target offset that names no code");
  return task_frame{header, items};
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

[[noreturn]] void worker_main(int fd, worker_page* page, unsigned maxtasks, bool same_object) {
  byte_buffer in;
  std::string out;
  code_checker code(same_object);
  std::uint64_t seq = 0;
  unsigned tasks = 0;
  auto last_flush = now_ns();
  // What the items run since the last timing record cost, for the parent's estimates.
  timing_record timed{0, 0, 0};
  auto record_timing = [&] {
    if (timed.items == 0) return;
    append_record(out, record_kind::timing, std::string_view(reinterpret_cast<const char*>(&timed), sizeof timed));
    timed.items = 0;
    timed.nanoseconds = 0;
  };
  auto flush = [&] {
    record_timing();
    flush_stdio(); // what the tasks printed comes before their results
    write_all(fd, out);
    last_flush = now_ns();
  };
  for (;;) {
    while (auto frame = next_frame(in.data(), page, code)) {
      auto& h = frame->header;
      auto fn = reinterpret_cast<pool_trampoline>(h.trampoline + pool_anchor_address());
      if (h.trampoline != timed.trampoline) {
        record_timing();
        timed.trampoline = h.trampoline;
      }
      frame_release whole{&in, sizeof h + static_cast<std::size_t>(h.length)};
      const char* p = frame->items;
      auto t0 = now_ns();
      std::uint64_t ran = 0;
      for (std::uint64_t i = 0; i < h.count; ++i) {
        auto n = static_cast<std::size_t>(load<std::uint64_t>(p));
        pool_input input{std::string_view(p + sizeof(std::uint64_t), n)};
        if (i + 1 == h.count && whole.size > large_buffer) {
          input.on_consumed = &frame_release::release; // a large frame goes before its task runs
          input.context = &whole;
        }
        p += sizeof(std::uint64_t) + n;
        std::uint64_t expected = seq++;
        // Fails when the parent took this item back: skip it without an answer.
        if (page->claimed.compare_exchange_strong(expected, seq)) {
          run_item(fn, static_cast<std::intptr_t>(h.target), input, out);
          ++ran;
        }
      }
      auto t1 = now_ns();
      if (!whole.done) {
        in.consume(whole.size);
        in.trim();
      }
      if (ran == 0) continue; // taken back whole: not a task for maxtasksperchild
      timed.items += ran;
      timed.nanoseconds += static_cast<std::uint64_t>(t1 - t0);
      if (maxtasks != 0 && ++tasks >= maxtasks) {
        flush();
        worker_exit(0);
      }
      if (out.size() >= 64 * 1024 || t1 - last_flush >= 1'000'000 || !has_complete_frame(in.data())) flush();
    }
    if (!out.empty()) flush(); // answers never wait behind a blocking read
    std::span<char> room;
    try {
      room = in.room(bytes_wanted<task_frame_header>(in.data()));
    } catch (const std::bad_alloc&) {
      protocol_error(page, "no memory for a frame");
    }
    ssize_t n;
    do n = ::read(fd, room.data(), room.size());
    while (n < 0 && errno == EINTR);
    if (n <= 0) { // close(): everything was sent; terminate() kills instead
      flush();
      worker_exit(0);
    }
    in.commit(static_cast<std::size_t>(n));
  }
}

} // namespace

[[noreturn]] void run_initializer_then_work(const std::function<void()>& initializer, int fd, worker_page* page,
                                            unsigned maxtasks, bool same_object) {
  std::string out;
  auto failed = [&](const std::string& type, const std::string& message) {
    print_process_error(process_name(), type + ": " + message + " (in the pool initializer)");
    std::string parts;
    encode_parts(parts, type, message);
    append_record(out, record_kind::start_failed, parts);
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
  append_record(out, record_kind::started);
  write_all(fd, out);
  worker_main(fd, page, maxtasks, same_object);
}

// ---- start_method::spawn: a fresh image of this executable ---------------------------
//
// The worker is /proc/self/exe started with posix_spawn (no copy of the parent's page
// tables, so the start cost does not grow with the parent's memory) and told in
// COPROC_POOL_WORKER which descriptors to use. It becomes a worker during static
// initialization, before main: the program's own globals are constructed by then when
// libcoproc is linked after the program's objects (the usual order of a static link).

constexpr const char* worker_env = "COPROC_POOL_WORKER";

[[noreturn]] void run_spawned_worker(const char* spec) {
  int fd = -1, memfd = -1, parent = 0;
  unsigned maxtasks = 0;
  long long init = 0;
  char name[128] = {};
  char path[256] = {};
  if (std::sscanf(spec, "%d,%d,%u,%lld,%d,%127[^,],%255s", &fd, &memfd, &maxtasks, &init, &parent, name,
                  path) != 7)
    ::_exit(70);
  ::unsetenv(worker_env);
  die_with_parent(parent);
  void* mem = ::mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) ::_exit(71);
  ::close(memfd);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  identity id{{}, name};
  std::istringstream parts(path);
  for (unsigned n; parts >> n; parts.ignore(1)) id.path.push_back(n);
  enter_child(std::move(id));
  std::function<void()> initializer;
  if (init != 0) {
    // Checked by the parent too; a forged environment must not choose what this calls.
    if (!callable_offset(static_cast<std::intptr_t>(init), true))
      protocol_error(static_cast<worker_page*>(mem), "an initializer offset outside libcoproc's image");
    initializer = reinterpret_cast<void (*)()>(static_cast<std::intptr_t>(init) + pool_anchor_address());
  }
  run_initializer_then_work(initializer, fd, static_cast<worker_page*>(mem), maxtasks, true);
}

[[maybe_unused]] const bool spawned_worker = [] {
  if (const char* spec = std::getenv(worker_env)) run_spawned_worker(spec);
  return false;
}();

// Starts a fresh image on the worker's end of the socket and the shared page.
int spawn_image(int fd, int memfd, const pool_config& config, const identity& id) {
  // The new image keeps these two (copies without FD_CLOEXEC, closed again here).
  int child_fd = ::fcntl(fd, F_DUPFD, 3);
  int child_mem = child_fd < 0 ? -1 : ::fcntl(memfd, F_DUPFD, 3);
  if (child_mem < 0) {
    int err = errno;
    if (child_fd >= 0) ::close(child_fd);
    throw std::system_error(err, std::generic_category(), "coproc::pool: dup for a spawned worker");
  }
  std::string path;
  for (unsigned n : id.path) path += (path.empty() ? "" : ".") + std::to_string(n);
  std::string spec = std::string(worker_env) + "=" + std::to_string(child_fd) + "," + std::to_string(child_mem) +
                     "," + std::to_string(config.maxtasksperchild) + "," +
                     std::to_string(static_cast<long long>(config.initializer_offset)) + "," +
                     std::to_string(::getpid()) + "," + id.name + "," + path;
  std::vector<char*> envp;
  std::string prefix = std::string(worker_env) + "=";
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, prefix.c_str(), prefix.size()) != 0) envp.push_back(*e);
  envp.push_back(spec.data());
  envp.push_back(nullptr);
  char* argv[] = {program_invocation_name, nullptr};
  posix_spawnattr_t attr;
  ::posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  ::posix_spawnattr_setsigmask(&attr, &none);
  ::posix_spawnattr_setsigdefault(&attr, &all);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  int pid = 0;
  int rc = ::posix_spawn(&pid, "/proc/self/exe", nullptr, &attr, argv, envp.data());
  ::posix_spawnattr_destroy(&attr);
  ::close(child_fd);
  ::close(child_mem);
  if (rc != 0) throw std::system_error(rc, std::generic_category(), "coproc::pool: posix_spawn of /proc/self/exe for a worker");
  return pid;
}

// ---- the parent side ---------------------------------------------------------------

class pool_core : public std::enable_shared_from_this<pool_core> {
public:
  pool_core(boost::asio::any_io_executor ex, pool_config config)
      : ex_(std::move(ex)), config_(std::move(config)) {}

  void start() {
    std::lock_guard lock(mutex_);
    try {
      for (unsigned i = 0; i < config_.processes; ++i) spawn_locked();
    } catch (...) {
      terminate_locked();
      throw;
    }
  }

  void submit(std::shared_ptr<pool_job> job) {
    std::lock_guard lock(mutex_);
    if (closed_)
      throw std::logic_error(std::string("coproc::pool: cannot submit a task to a ") +
                             (terminated_ ? "terminated" : "closed") + " pool");
    if (config_.spawn) check_same_image_locked(*job);
    if (failed_) {
      for (std::size_t i = 0; i < job->count; ++i) job->sink->fail(i, failed_);
      return;
    }
    if (job->count == 0) return;
    queue_.push_back(std::move(job));
    // A lone task for an idle worker leaves at once (apply's round trip). Otherwise
    // submissions made in one go leave together: the dispatch runs once the submitting
    // code yields to the io_context.
    bool idle = queue_.size() == 1 && retry_.empty() &&
                std::any_of(workers_.begin(), workers_.end(), [](const auto& w) {
                  return !w->gone && !w->shut && !w->retiring && w->held.empty() && !w->write_pending;
                });
    if (idle) {
      dispatch_locked();
      if (!has_work()) return;
    }
    schedule_dispatch_locked();
  }

  // Offsets are only the same in a fresh image for code in the anchor's own module (a
  // shared libcoproc and the program are placed independently).
  void check_same_image_locked(const pool_job& job) {
    for (std::intptr_t offset : {job.trampoline, job.target}) {
      if (offset == 0 || checked_offsets_.count(offset)) continue;
      if (!callable_offset(offset, true))
        throw std::invalid_argument("coproc::pool: with start_method::spawn the task must be in the same "
                                    "image as libcoproc (link coproc statically), or use start_method::fork");
      checked_offsets_.insert(offset);
    }
  }

  void schedule_dispatch_locked() {
    if (dispatch_posted_) return;
    dispatch_posted_ = true;
    boost::asio::post(ex_, [self = shared_from_this()] {
      std::lock_guard lock(self->mutex_);
      self->dispatch_posted_ = false;
      self->dispatch_locked();
    });
  }

  void close() {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    dispatch_locked(); // idle workers learn now that no more work comes
  }

  void terminate() noexcept {
    std::lock_guard lock(mutex_);
    terminate_locked();
  }

  awaitable<void> join() {
    bool closed;
    {
      std::lock_guard lock(mutex_);
      closed = closed_;
    }
    if (!closed) throw std::logic_error("coproc::pool::join: call close() or terminate() first");
    auto gone = wait_for_condition(mutex_, join_waiters_, [this] { return live_ == 0; }, deadline::never());
    co_await std::move(gone);
  }

  std::size_t size() const noexcept { return config_.processes; }

private:
  struct chunk {
    std::shared_ptr<pool_job> job;
    std::size_t first, n;
    std::uint64_t seq = 0; // the worker's number for item `first`
  };

  struct worker {
    explicit worker(const boost::asio::any_io_executor& ex) : socket(ex) {}
    boost::asio::local::stream_protocol::socket socket;
    std::shared_ptr<child> proc;
    worker_page* page = nullptr;
    std::deque<chunk> held;        // sent, not all answered, in order
    std::size_t held_items = 0;
    std::size_t front_answered = 0; // answered items of held.front()
    std::uint64_t answered = 0;     // items answered since the worker started
    std::uint64_t sent_seq = 0;     // the number of the last item sent
    std::string out, writing;       // frames to send, frames being sent
    bool write_pending = false;
    bool shut = false;              // told no more work comes
    bool retiring = false;          // maxtasksperchild chunks were sent
    bool gone = false;
    bool started = false;           // its initializer returned
    std::string start_error;        // or what it threw
    unsigned chunks_sent = 0;
    std::int64_t last_progress = 0; // when it last answered, or got work while idle
  };

  bool has_work() const { return !retry_.empty() || !queue_.empty(); }

  void spawn_locked() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      throw std::system_error(errno, std::generic_category(), "coproc::pool: socketpair for a worker");
    // A spawned worker maps the page from a memfd; a forked one inherits the mapping.
    int memfd = -1;
    if (config_.spawn) {
      memfd = ::memfd_create("coproc-pool-worker", MFD_CLOEXEC);
      if (memfd >= 0 && ::ftruncate(memfd, page_size) != 0) {
        ::close(memfd);
        memfd = -1;
      }
    }
    void* mem = config_.spawn && memfd < 0
                    ? MAP_FAILED
                    : ::mmap(nullptr, page_size, PROT_READ | PROT_WRITE,
                             memfd >= 0 ? MAP_SHARED : MAP_SHARED | MAP_ANONYMOUS, memfd, 0);
    if (mem == MAP_FAILED) {
      int err = errno;
      ::close(sv[0]);
      ::close(sv[1]);
      if (memfd >= 0) ::close(memfd);
      throw std::system_error(err, std::generic_category(), "coproc::pool: shared page for a worker");
    }
    auto* page = new (mem) worker_page;
    auto id = next_child_identity(config_.spawn ? "SpawnPoolWorker" : "ForkPoolWorker");
    int parent = ::getpid();
    int pid;
    try {
      pid = config_.spawn ? spawn_image(sv[1], memfd, config_, id)
                          : fork_flushed("coproc::pool: fork() of a worker failed");
    } catch (...) {
      ::munmap(mem, page_size);
      ::close(sv[0]);
      ::close(sv[1]);
      if (memfd >= 0) ::close(memfd);
      throw;
    }
    if (memfd >= 0) ::close(memfd);
    if (pid == 0) {
      reset_signals();
      // Workers are daemonic, as in Python: they die with the parent, even by SIGKILL.
      die_with_parent(parent);
      ::close(sv[0]);
      for (auto& other : workers_) ::close(other->socket.native_handle());
      enter_child(std::move(id));
      run_initializer_then_work(config_.initializer, sv[1], page, config_.maxtasksperchild, false);
    }
    ::close(sv[1]);
    auto w = std::make_shared<worker>(ex_);
    w->socket.assign(boost::asio::local::stream_protocol(), sv[0]);
    w->proc = std::make_shared<child>(pid);
    w->page = page;
    workers_.push_back(w);
    ++live_;
    boost::asio::co_spawn(ex_, read_loop(shared_from_this(), w), boost::asio::detached);
  }

  static awaitable<void> read_loop(std::shared_ptr<pool_core> self, std::shared_ptr<worker> w) {
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
        auto read = w->socket.async_read_some(boost::asio::buffer(room.data(), room.size()),
                                              boost::asio::redirect_error(boost::asio::use_awaitable, ec));
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
      if (self->workers_.empty()) self->fail_all_locked(std::make_exception_ptr(e));
    }
  }

  bool needs_worker_locked() const {
    return !terminated_ && !failed_ && workers_.size() < config_.processes && (!closed_ || has_work());
  }

  // Consumes the complete records at the front of `in`. False on a record that does not
  // add up (an unknown kind, a wrong length, an answer to nothing).
  bool take_results_locked(worker& w, byte_buffer& in) {
    bool answered = false;
    for (;;) {
      std::string_view rest = in.data();
      if (rest.size() < sizeof(record_header)) break;
      auto header = load<record_header>(rest.data());
      if (header.length > max_message_bytes) return false;
      if (rest.size() - sizeof header < header.length) break;
      std::string_view bytes = rest.substr(sizeof header, static_cast<std::size_t>(header.length));
      switch (header.kind) {
      case record_kind::timing: {
        if (bytes.size() != sizeof(timing_record)) return false;
        auto t = load<timing_record>(bytes.data());
        double sample = double(t.nanoseconds) / double(std::max<std::uint64_t>(t.items, 1));
        double& cost = cost_[t.trampoline];
        cost = cost == 0 ? sample : (cost + sample) / 2;
        break;
      }
      case record_kind::started:
        if (!bytes.empty() || w.started) return false;
        w.started = true;
        failed_starts_ = 0;
        break;
      case record_kind::start_failed:
        try {
          auto [type, message] = decode_parts<std::pair<std::string, std::string>>(bytes);
          w.start_error = type + ": " + message;
        } catch (...) {
          return false;
        }
        break;
      case record_kind::value:
      case record_kind::error:
        if (w.held.empty()) return false;
        deliver_locked(w, header.kind == record_kind::error, bytes);
        answered = true;
        break;
      default:
        return false;
      }
      in.consume(sizeof header + bytes.size());
    }
    if (answered) w.last_progress = now_ns();
    return true;
  }

  // The answer to w's next item.
  void deliver_locked(worker& w, bool failed, std::string_view bytes) {
    chunk& c = w.held.front();
    std::size_t index = c.first + w.front_answered;
    pool_sink* sink = c.job->sink.get();
    std::shared_ptr<pool_sink> keep;
    ++w.answered;
    --w.held_items;
    if (++w.front_answered == c.n) {
      // Before decoding: the job (a large argument) may go now, not after the result is made.
      keep = c.job->sink;
      w.held.pop_front();
      w.front_answered = 0;
    }
    if (!failed) return sink->deliver(index, bytes);
    std::exception_ptr error;
    try {
      auto [type, message] = decode_parts<std::pair<std::string, std::string>>(bytes);
      error = std::make_exception_ptr(remote_error(std::move(type), std::move(message), w.proc->pid()));
    } catch (...) {
      error = std::current_exception();
    }
    sink->fail(index, error);
  }

  // Whether w may take n more items of job: about 2 ms of work queued at most. A worker
  // that has answered nothing for a while is busy with something slow, whatever the
  // estimate says.
  bool can_take(const worker& w, const pool_job& job, std::size_t n, std::int64_t now) const {
    if (w.gone || w.shut || w.retiring) return false;
    if (w.held.empty()) return true;
    auto cost = cost_.find(job.trampoline);
    if (cost == cost_.end() || w.held.size() >= 4096) return false;
    return double(now - w.last_progress) + double(w.held_items + n) * cost->second <= 2e6;
  }

  // The job and size of the next chunk to send.
  std::pair<const pool_job*, std::size_t> peek_chunk() const {
    if (!retry_.empty()) return {retry_.front().job.get(), retry_.front().n};
    const auto& job = *queue_.front();
    return {&job, std::min({job.chunksize, max_frame_items, job.count - job.next})};
  }

  chunk take_chunk() {
    if (!retry_.empty()) {
      chunk c = std::move(retry_.front());
      retry_.pop_front();
      return c;
    }
    auto& job = queue_.front();
    std::size_t n = std::min({job->chunksize, max_frame_items, job->count - job->next});
    chunk c{job, job->next, n};
    job->next += n;
    if (job->next == job->count) queue_.pop_front();
    return c;
  }

  void send_chunk(worker& w, chunk c) {
    std::string& out = w.out;
    std::size_t at = out.size();
    try {
      out.append(sizeof(task_frame_header), '\0');
      for (std::size_t i = 0; i < c.n; ++i) {
        std::size_t item_at = out.size();
        out.append(sizeof(std::uint64_t), '\0');
        c.job->encode_item(c.first + i, out);
        store<std::uint64_t>(out, item_at, out.size() - item_at - sizeof(std::uint64_t));
      }
    } catch (...) {
      out.resize(at);
      for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, std::current_exception());
      return;
    }
    task_frame_header header{out.size() - at - sizeof header, c.job->trampoline, c.job->target, c.n};
    store(out, at, header);
    c.seq = w.sent_seq + 1;
    w.sent_seq += c.n;
    w.held_items += c.n;
    w.held.push_back(std::move(c));
    if (config_.maxtasksperchild != 0 && ++w.chunks_sent >= config_.maxtasksperchild) w.retiring = true;
  }

  // Items of w not claimed yet.
  static std::uint64_t unstarted(const worker& w) {
    std::uint64_t claimed = w.page->claimed.load();
    return w.sent_seq > claimed ? w.sent_seq - claimed : 0;
  }

  // Claims w's unstarted items and queues them for any worker. True if there were some.
  bool steal_locked(worker& w) {
    std::uint64_t claimed = w.page->claimed.load();
    do {
      if (claimed >= w.sent_seq) return false;
    } while (!w.page->claimed.compare_exchange_weak(claimed, w.sent_seq));
    std::deque<chunk> taken;
    while (!w.held.empty()) {
      chunk& c = w.held.back();
      if (c.seq + c.n - 1 <= claimed) break;
      std::size_t keep = c.seq > claimed ? 0 : static_cast<std::size_t>(claimed - c.seq + 1);
      taken.push_front({c.job, c.first + keep, c.n - keep});
      w.held_items -= c.n - keep;
      if (keep == 0) {
        // Its frame runs nothing: the worker does not count it toward maxtasksperchild either.
        w.held.pop_back();
        --w.chunks_sent;
      } else {
        c.n = keep;
      }
    }
    w.retiring = config_.maxtasksperchild != 0 && w.chunks_sent >= config_.maxtasksperchild;
    retry_.insert(retry_.begin(), taken.begin(), taken.end());
    return true;
  }

  // When a worker is idle with nothing left to send, takes back what waits behind a
  // slow task elsewhere (after 2 ms without an answer from that worker).
  bool rebalance_locked(std::int64_t now) {
    bool idle = std::any_of(workers_.begin(), workers_.end(), [](const auto& w) {
      return !w->gone && !w->shut && !w->retiring && w->held.empty();
    });
    if (!idle) return false;
    std::int64_t soonest = -1;
    bool stole = false;
    for (auto& w : workers_) {
      if (w->gone || w->held_items < 2 || unstarted(*w) == 0) continue;
      std::int64_t wait = 2'000'000 - (now - w->last_progress);
      if (wait <= 0) stole |= steal_locked(*w);
      else if (soonest < 0 || wait < soonest) soonest = wait;
    }
    if (!stole && soonest > 0 && !rebalance_armed_) {
      rebalance_armed_ = true;
      rebalance_timer_.expires_after(std::chrono::nanoseconds(soonest));
      rebalance_timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        std::lock_guard lock(self->mutex_);
        self->rebalance_armed_ = false;
        if (!ec) self->dispatch_locked();
      });
    }
    return stole;
  }

  void dispatch_locked() {
    if (terminated_ || failed_) return;
    auto now = now_ns();
    // Items encoded in one step of the loop: a large map is sent in several steps, so
    // the io_context runs other work in between.
    std::size_t budget = max_frame_items;
    do {
      // One chunk per worker per round: work spreads evenly while speeds are unknown.
      for (bool progress = true; progress && has_work();) {
        progress = false;
        for (auto& w : workers_) {
          if (!has_work()) break;
          if (budget == 0) {
            schedule_dispatch_locked();
            progress = false;
            break;
          }
          auto [job, n] = peek_chunk();
          if (!can_take(*w, *job, n, now)) continue;
          if (w->held.empty()) w->last_progress = now;
          budget -= std::min(budget, n);
          send_chunk(*w, take_chunk());
          progress = true;
        }
      }
    } while (!has_work() && rebalance_locked(now));
    bool all_claimed = std::all_of(workers_.begin(), workers_.end(),
                                   [](const auto& w) { return w->gone || unstarted(*w) == 0; });
    for (auto& w : workers_) {
      if (w->gone || w->write_pending) continue;
      if (!w->out.empty()) start_write(w);
      else if (closed_ && !has_work() && all_claimed && !w->shut) {
        // Everything is sent: the worker drains its socket, answers and exits.
        w->shut = true;
        boost::system::error_code ec;
        w->socket.shutdown(boost::asio::socket_base::shutdown_send, ec);
      }
    }
  }

  void start_write(const std::shared_ptr<worker>& w) {
    // Most batches fit in the socket buffer: send them now, and leave only a rest (or a
    // full buffer) to an asynchronous write, from where the first send stopped.
    w->writing.swap(w->out);
    release_if_large(w->out);
    ssize_t sent;
    do sent = ::send(w->socket.native_handle(), w->writing.data(), w->writing.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) sent = static_cast<ssize_t>(w->writing.size()); // the worker died: its reader handles that
    std::size_t done = sent > 0 ? static_cast<std::size_t>(sent) : 0;
    if (done == w->writing.size()) return release_if_large(w->writing);
    w->write_pending = true;
    boost::asio::async_write(w->socket, boost::asio::buffer(w->writing.data() + done, w->writing.size() - done),
                             [self = shared_from_this(), w](boost::system::error_code ec, std::size_t) {
                               std::lock_guard lock(self->mutex_);
                               w->write_pending = false;
                               release_if_large(w->writing);
                               // A failed write means the worker died: its reader handles that.
                               if (!ec) self->dispatch_locked();
                             });
  }

  // Returns whether a replacement should start.
  bool worker_gone_locked(worker& w, int code) {
    w.gone = true;
    std::erase_if(workers_, [&](const auto& p) { return p.get() == &w; });
    boost::system::error_code ec;
    w.socket.close(ec);
    std::uint64_t claimed = w.page->claimed.load();
    if (!terminated_ && !failed_) {
      // Claimed and unanswered: these ran (or were running) in the dead worker. The
      // rest were never started and go to the other workers first.
      auto error = std::make_exception_ptr(worker_lost(code, w.proc->pid()));
      std::deque<chunk> never_started;
      for (auto& c : w.held) {
        std::size_t skip = &c == &w.held.front() ? w.front_answered : 0;
        for (std::size_t i = skip; i < c.n; ++i) {
          if (c.seq + i <= claimed) {
            c.job->sink->fail(c.first + i, error);
          } else {
            never_started.push_back({c.job, c.first + i, c.n - i});
            break;
          }
        }
      }
      retry_.insert(retry_.begin(), never_started.begin(), never_started.end());
      if (!w.started && ++failed_starts_ >= max_failed_starts) fail_pool_locked(start_failure(w, code));
    }
    ::munmap(w.page, page_size);
    w.page = nullptr;
    w.held.clear();
    w.held_items = 0;
    --live_;
    if (live_ == 0) join_waiters_.notify_all();
    bool replace = needs_worker_locked();
    if (!replace) dispatch_locked(); // with a worker fewer, others may take the retries
    return replace;
  }

  void fail_all_locked(std::exception_ptr error) {
    for (auto& c : retry_)
      for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, error);
    retry_.clear();
    for (auto& job : queue_)
      for (std::size_t i = job->next; i < job->count; ++i) job->sink->fail(i, error);
    queue_.clear();
    for (auto& w : workers_) {
      for (auto& c : w->held) {
        std::size_t skip = &c == &w->held.front() ? w->front_answered : 0;
        for (std::size_t i = skip; i < c.n; ++i) c.job->sink->fail(c.first + i, error);
      }
      w->held.clear();
      w->held_items = 0;
    }
  }

  void kill_workers_locked() noexcept {
    rebalance_timer_.cancel();
    for (auto& w : workers_) {
      try {
        w->proc->signal(SIGKILL);
      } catch (...) {
      }
      boost::system::error_code ec;
      w->socket.close(ec); // the reader wakes, reaps the worker and lets it go
    }
  }

  void terminate_locked() noexcept {
    if (terminated_) return;
    terminated_ = closed_ = true;
    kill_workers_locked();
    try {
      fail_all_locked(std::make_exception_ptr(pool_closed()));
    } catch (...) {
    }
  }

  std::exception_ptr start_failure(const worker& w, int code) const {
    std::string why = w.start_error.empty()
                          ? "(a crash before its initializer returned?)"
                          : "because its initializer threw " + w.start_error;
    return std::make_exception_ptr(error("coproc::pool: " + std::to_string(max_failed_starts) +
                                         " worker starts failed in a row, so the pool fails its tasks; the last "
                                         "worker, pid " + std::to_string(w.proc->pid()) + ", " +
                                         describe_exitcode(code) + " before taking tasks " + why));
  }

  // Workers cannot start: every unfinished and later task fails with `error`.
  void fail_pool_locked(std::exception_ptr error) noexcept {
    failed_ = error;
    kill_workers_locked();
    try {
      fail_all_locked(error);
    } catch (...) {
    }
  }

  std::mutex mutex_;
  boost::asio::any_io_executor ex_;
  pool_config config_;
  std::deque<std::shared_ptr<pool_job>> queue_; // submitted, not all sent
  std::deque<chunk> retry_;                     // sent to a worker that died before starting them
  std::vector<std::shared_ptr<worker>> workers_;
  std::unordered_map<std::intptr_t, double> cost_; // measured ns per item, by trampoline
  std::unordered_set<std::intptr_t> checked_offsets_; // spawn: code known to be in the anchor's image
  std::size_t live_ = 0; // worker processes not reaped yet
  unsigned failed_starts_ = 0; // workers in a row that ended before they started
  std::exception_ptr failed_;  // why every task fails (fail_pool_locked)
  waiter_list join_waiters_;
  boost::asio::steady_timer rebalance_timer_{ex_};
  bool closed_ = false, terminated_ = false, dispatch_posted_ = false, rebalance_armed_ = false;
};

std::shared_ptr<pool_core> make_pool_core(boost::asio::any_io_executor ex, pool_config config) {
  auto core = std::make_shared<pool_core>(std::move(ex), std::move(config));
  core->start();
  return core;
}

void pool_submit(pool_core& core, std::shared_ptr<pool_job> job) { core.submit(std::move(job)); }
void pool_close(pool_core& core) { core.close(); }
void pool_terminate(pool_core& core) noexcept { core.terminate(); }
awaitable<void> pool_join(std::shared_ptr<pool_core> core) {
  auto join = core->join();
  co_await std::move(join);
}
std::size_t pool_size(const pool_core& core) noexcept { return core.size(); }

} // namespace coproc::detail

namespace coproc {

namespace {
detail::pool_config config_of(pool_options& options) {
  if (options.method == start_method::forkserver)
    throw std::invalid_argument("coproc::pool: start_method::forkserver is not implemented (fork and spawn are)");
  detail::pool_config config{options.processes == 0 ? cpu_count() : options.processes,
                             std::move(options.initializer), options.maxtasksperchild};
  if (options.method == start_method::spawn) {
    config.spawn = true;
    if (config.initializer) {
      void (*fn)() = nullptr;
      if (auto* plain = config.initializer.target<void (*)()>()) fn = *plain;
      else if (auto* declared = config.initializer.target<void (*)() noexcept>()) fn = *declared;
      if (!fn)
        throw std::invalid_argument("coproc::pool: with start_method::spawn the initializer must be a plain "
                                    "function (a fresh worker image has no copy of a lambda's or object's state)");
      config.initializer_offset = detail::pool_image_offset(fn);
      // Only code in libcoproc's own image is at the same offset in a fresh image.
      if (!detail::callable_offset(config.initializer_offset, true))
        throw std::invalid_argument("coproc::pool: with start_method::spawn the initializer must be in the same "
                                    "image as libcoproc (link coproc statically), or use start_method::fork");
    }
  }
  return config;
}
} // namespace

pool::pool(boost::asio::any_io_executor ex, pool_options options)
    : core_(detail::make_pool_core(std::move(ex), config_of(options))) {}

pool::pool(boost::asio::any_io_executor ex, unsigned processes)
    : pool(std::move(ex), pool_options{.processes = processes}) {}

pool::~pool() {
  if (core_) detail::pool_terminate(*core_);
}

void pool::submit(std::shared_ptr<detail::pool_job> job) { detail::pool_submit(*core_, std::move(job)); }

std::size_t pool::default_chunksize(std::size_t n) const {
  std::size_t groups = 4 * detail::pool_size(*core_);
  return std::max<std::size_t>(1, (n + groups - 1) / groups);
}

void pool::close() { detail::pool_close(*core_); }
void pool::terminate() { detail::pool_terminate(*core_); }

awaitable<void> pool::join() { return detail::pool_join(core_); }

std::size_t pool::size() const { return detail::pool_size(*core_); }

} // namespace coproc
