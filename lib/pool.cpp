// The pool's core: worker processes, their transport, dispatch and crash recovery.
//
// Each worker has one Unix stream socket to the parent. The parent sends frames
//   [u32 length][i64 trampoline][i64 target][u32 count] count × ([u32 length][argument bytes])
// and the worker answers with one record per item, in order:
//   [u32 length | error bit][result bytes, or the encoded (type name, message) of the error]
// and, before each batch of answers leaves and whenever the function changes,
//   [u32 0xffffffff][i64 trampoline][u32 items][u64 nanoseconds they took].
// Many frames go out in one write and many records come back in one, so small tasks do
// not cost a syscall each.
//
// Items are numbered per worker in the order sent, and a worker claims each one before
// running it by advancing a counter in a page shared with the parent (a compare-and-
// swap, no syscall). The parent may claim a worker's unstarted items the same way and
// send them elsewhere: a worker stuck in a slow task loses what was queued behind it to
// idle workers, and a worker that dies fails exactly the items it had claimed and not
// answered (worker_lost); the rest go to other workers.
//
// How many items a worker may hold is adaptive: about 2 ms of work by the measured cost
// of the task's function, and one chunk at a time while that cost is unknown (so slow
// tasks spread over the workers as Python's shared queue spreads them).
#include <coproc/pool.hpp>

#include <coproc/detail/child.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <dlfcn.h>
#include <fcntl.h>
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
constexpr std::uint32_t error_bit = 0x80000000u;
constexpr std::uint32_t timing_mark = 0xffffffffu;
constexpr std::size_t frame_header = 4 + 8 + 8 + 4;
// A larger chunk travels as several frames (each one task for maxtasksperchild), so no
// single step of the parent's loop encodes or decodes more than about 0.2 ms of items.
constexpr std::size_t max_frame_items = 16384;

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

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

void flush_stdio() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(stdout);
  std::fflush(stderr);
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
  out.clear();
}

// Runs one item: appends its record to out.
void run_item(pool_trampoline fn, std::intptr_t target, std::string_view args, std::string& out) {
  std::size_t at = out.size();
  out.append(4, '\0');
  std::uint32_t flag = 0;
  try {
    fn(target, args, out);
  } catch (const std::exception& e) {
    out.resize(at + 4);
    encode_parts(out, exception_type_name(e), std::string(e.what()));
    flag = error_bit;
  } catch (...) {
    out.resize(at + 4);
    encode_parts(out, std::string("unknown exception"), std::string());
    flag = error_bit;
  }
  store<std::uint32_t>(out, at, static_cast<std::uint32_t>(out.size() - at - 4) | flag);
}

// Length of the complete frame at the front of `in`, or 0.
std::size_t complete_frame(std::string_view in) {
  if (in.size() < 4) return 0;
  auto len = load<std::uint32_t>(in.data());
  return in.size() - 4 >= len ? 4 + std::size_t(len) : 0;
}

[[noreturn]] void worker_exit(int code) {
  flush_stdio();
  ::_exit(code);
}

[[noreturn]] void worker_main(int fd, worker_page* page, unsigned maxtasks) {
  std::string in, out;
  std::size_t pos = 0;
  std::vector<char> buf(256 * 1024);
  std::uint64_t seq = 0;
  unsigned tasks = 0;
  auto last_flush = now_ns();
  // What the items run since the last timing record cost, for the parent's estimates.
  std::int64_t timed_fn = 0;
  std::uint32_t timed_items = 0;
  std::uint64_t timed_ns = 0;
  auto record_timing = [&] {
    if (timed_items == 0) return;
    append<std::uint32_t>(out, timing_mark);
    append<std::int64_t>(out, timed_fn);
    append<std::uint32_t>(out, timed_items);
    append<std::uint64_t>(out, timed_ns);
    timed_items = 0;
    timed_ns = 0;
  };
  auto flush = [&] {
    record_timing();
    flush_stdio(); // what the tasks printed comes before their results
    write_all(fd, out);
    last_flush = now_ns();
  };
  for (;;) {
    while (std::size_t len = complete_frame(std::string_view(in).substr(pos))) {
      const char* p = in.data() + pos + 4;
      const char* end = in.data() + pos + len;
      if (len < frame_header) worker_exit(70);
      auto fn_offset = load<std::int64_t>(p);
      auto fn = reinterpret_cast<pool_trampoline>(fn_offset + pool_anchor_address());
      if (fn_offset != timed_fn) {
        record_timing();
        timed_fn = fn_offset;
      }
      auto target = static_cast<std::intptr_t>(load<std::int64_t>(p + 8));
      auto count = load<std::uint32_t>(p + 16);
      p += 20;
      auto t0 = now_ns();
      std::uint32_t ran = 0;
      for (std::uint32_t i = 0; i < count; ++i) {
        if (end - p < 4) worker_exit(70);
        auto n = load<std::uint32_t>(p);
        if (std::size_t(end - p - 4) < n) worker_exit(70);
        std::uint64_t expected = seq++;
        // Fails when the parent took this item back: skip it without an answer.
        if (page->claimed.compare_exchange_strong(expected, seq)) {
          run_item(fn, target, std::string_view(p + 4, n), out);
          ++ran;
        }
        p += 4 + n;
      }
      auto t1 = now_ns();
      pos += len;
      if (ran == 0) continue;
      timed_items += ran;
      timed_ns += static_cast<std::uint64_t>(t1 - t0);
      if (maxtasks != 0 && ++tasks >= maxtasks) {
        flush();
        worker_exit(0);
      }
      if (out.size() >= 64 * 1024 || t1 - last_flush >= 1'000'000 ||
          !complete_frame(std::string_view(in).substr(pos)))
        flush();
    }
    in.erase(0, pos);
    pos = 0;
    if (!out.empty()) flush(); // answers never wait behind a blocking read
    ssize_t n;
    do n = ::read(fd, buf.data(), buf.size());
    while (n < 0 && errno == EINTR);
    if (n <= 0) { // close(): everything was sent; terminate() kills instead
      flush();
      worker_exit(0);
    }
    in.append(buf.data(), static_cast<std::size_t>(n));
  }
}

} // namespace

[[noreturn]] void run_initializer_then_work(const std::function<void()>& initializer, int fd, worker_page* page,
                                            unsigned maxtasks) {
  if (initializer) {
    try {
      initializer();
    } catch (const std::exception& e) {
      std::cerr << "Process " << process_name() << ":\n"
                << exception_type_name(e) << ": " << e.what() << " (in the pool initializer)" << std::endl;
      worker_exit(1);
    } catch (...) {
      std::cerr << "Process " << process_name() << ":\nunknown exception (in the pool initializer)" << std::endl;
      worker_exit(1);
    }
  }
  worker_main(fd, page, maxtasks);
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
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
  void* mem = ::mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) ::_exit(71);
  ::close(memfd);
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  identity id{{}, name};
  std::istringstream parts(path);
  for (unsigned n; parts >> n; parts.ignore(1)) id.path.push_back(n);
  enter_child(std::move(id));
  std::function<void()> initializer;
  if (init != 0) initializer = reinterpret_cast<void (*)()>(static_cast<std::intptr_t>(init) + pool_anchor_address());
  run_initializer_then_work(initializer, fd, static_cast<worker_page*>(mem), maxtasks);
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
      Dl_info anchor{}, code{};
      bool same = ::dladdr(reinterpret_cast<void*>(pool_anchor_address()), &anchor) &&
                  ::dladdr(reinterpret_cast<void*>(offset + pool_anchor_address()), &code) &&
                  anchor.dli_fbase == code.dli_fbase;
      if (!same)
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
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::close(sv[0]);
      for (auto& other : workers_) ::close(other->socket.native_handle());
      enter_child(std::move(id));
      run_initializer_then_work(config_.initializer, sv[1], page, config_.maxtasksperchild);
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
    std::vector<char> buf(64 * 1024);
    std::size_t have = 0;
    for (;;) {
      boost::system::error_code ec;
      auto read = w->socket.async_read_some(boost::asio::buffer(buf.data() + have, buf.size() - have),
                                            boost::asio::redirect_error(boost::asio::use_awaitable, ec));
      std::size_t n = co_await std::move(read);
      if (ec || n == 0) break;
      have += n;
      std::size_t used;
      {
        std::lock_guard lock(self->mutex_);
        used = self->take_results_locked(*w, std::string_view(buf.data(), have));
        self->dispatch_locked();
      }
      std::memmove(buf.data(), buf.data() + used, have - used);
      have -= used;
      if (have == buf.size()) buf.resize(buf.size() * 2); // one record larger than the buffer
    }
    // The worker's end closed: it has exited or is exiting.
    auto wait = w->proc->wait();
    int code = co_await std::move(wait);
    bool replace, slow;
    {
      std::lock_guard lock(self->mutex_);
      slow = code != 0 && w->answered == 0 && w->page->claimed.load() == 0;
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
    return !terminated_ && workers_.size() < config_.processes && (!closed_ || has_work());
  }

  std::size_t take_results_locked(worker& w, std::string_view in) {
    std::size_t pos = 0;
    bool answered = false;
    while (in.size() - pos >= 4) {
      auto header = load<std::uint32_t>(in.data() + pos);
      if (header == timing_mark) {
        if (in.size() - pos < 24) break;
        auto fn = load<std::int64_t>(in.data() + pos + 4);
        auto items = load<std::uint32_t>(in.data() + pos + 12);
        double sample = double(load<std::uint64_t>(in.data() + pos + 16)) / double(std::max(items, 1u));
        double& cost = cost_[fn];
        cost = cost == 0 ? sample : (cost + sample) / 2;
        pos += 24;
        continue;
      }
      if (w.held.empty()) break;
      std::size_t len = header & ~error_bit;
      if (in.size() - pos - 4 < len) break;
      std::string_view bytes = in.substr(pos + 4, len);
      chunk& c = w.held.front();
      std::size_t index = c.first + w.front_answered;
      if (header & error_bit) {
        std::exception_ptr error;
        try {
          auto [type, message] = decode_parts<std::pair<std::string, std::string>>(bytes);
          error = std::make_exception_ptr(remote_error(std::move(type), std::move(message), w.proc->pid()));
        } catch (...) {
          error = std::current_exception();
        }
        c.job->sink->fail(index, error);
      } else {
        c.job->sink->deliver(index, bytes);
      }
      ++w.answered;
      --w.held_items;
      answered = true;
      if (++w.front_answered == c.n) {
        w.held.pop_front();
        w.front_answered = 0;
      }
      pos += 4 + len;
    }
    if (answered) w.last_progress = now_ns();
    return pos;
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
      out.append(4, '\0');
      append<std::int64_t>(out, c.job->trampoline);
      append<std::int64_t>(out, c.job->target);
      append<std::uint32_t>(out, static_cast<std::uint32_t>(c.n));
      for (std::size_t i = 0; i < c.n; ++i) {
        std::size_t item_at = out.size();
        out.append(4, '\0');
        c.job->encode_item(c.first + i, out);
        store<std::uint32_t>(out, item_at, static_cast<std::uint32_t>(out.size() - item_at - 4));
      }
    } catch (...) {
      out.resize(at);
      for (std::size_t i = 0; i < c.n; ++i) c.job->sink->fail(c.first + i, std::current_exception());
      return;
    }
    store<std::uint32_t>(out, at, static_cast<std::uint32_t>(out.size() - at - 4));
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
      if (keep == 0) w.held.pop_back();
      else c.n = keep;
    }
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
      if (w->gone || w->retiring || w->held_items < 2 || unstarted(*w) == 0) continue;
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
    if (terminated_) return;
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
    // full buffer) to an asynchronous write.
    ssize_t sent;
    do sent = ::send(w->socket.native_handle(), w->out.data(), w->out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
      w->out.clear(); // the worker died: its reader handles that
      return;
    }
    if (sent > 0) w->out.erase(0, static_cast<std::size_t>(sent));
    if (w->out.empty()) return;
    w->writing.swap(w->out);
    w->out.clear();
    w->write_pending = true;
    boost::asio::async_write(w->socket, boost::asio::buffer(w->writing),
                             [self = shared_from_this(), w](boost::system::error_code ec, std::size_t) {
                               std::lock_guard lock(self->mutex_);
                               w->write_pending = false;
                               w->writing.clear();
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
    if (!terminated_) {
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

  void terminate_locked() noexcept {
    if (terminated_) return;
    terminated_ = closed_ = true;
    rebalance_timer_.cancel();
    for (auto& w : workers_) {
      try {
        w->proc->signal(SIGKILL);
      } catch (...) {
      }
      boost::system::error_code ec;
      w->socket.close(ec); // the reader wakes, reaps the worker and lets it go
    }
    try {
      fail_all_locked(std::make_exception_ptr(pool_closed()));
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
      auto* fn = config.initializer.target<void (*)()>();
      if (!fn)
        throw std::invalid_argument("coproc::pool: with start_method::spawn the initializer must be a plain "
                                    "function (a fresh worker image has no copy of a lambda's or object's state)");
      config.initializer_offset = detail::pool_image_offset(*fn);
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
