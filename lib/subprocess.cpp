#include <coproc/subprocess.hpp>

#include <coproc/detail/child.hpp>
#include <coproc/detail/launch_guard.hpp>

#include "os.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>

extern char** environ;

namespace coproc {

namespace {

namespace asio = boost::asio;
using asio::use_awaitable;
using detail::throw_errno;

// ---- validation -------------------------------------------------------------------

[[noreturn]] void invalid(const char* call, const std::string& why) {
  throw std::invalid_argument(std::string("coproc::") + call + ": " + why);
}

void check_args(const char* call, const std::vector<std::string>& args) {
  if (args.empty()) invalid(call, "args is empty: there is no program to run");
  for (std::size_t i = 0; i < args.size(); ++i)
    if (args[i].find('\0') != std::string::npos)
      invalid(call, "args[" + std::to_string(i) + "] contains a NUL byte");
}

void check_env(const char* call, const std::optional<std::map<std::string, std::string>>& env) {
  if (!env) return;
  for (const auto& [name, value] : *env) {
    if (name.empty() || name.find_first_of(std::string_view("=\0", 2)) != std::string::npos)
      invalid(call, "env name '" + name + "' is empty or contains '=' or a NUL byte");
    if (value.find('\0') != std::string::npos)
      invalid(call, "env value of " + name + " contains a NUL byte");
  }
}

// The options of one run, checked, with capture_output and input turned into pipes.
run_options normalized(const char* call, const std::vector<std::string>& args, run_options o) {
  check_args(call, args);
  check_env(call, o.env);
  if (o.in == stdio::to_stdout) invalid(call, "stdio::to_stdout is for err only (in)");
  if (o.out == stdio::to_stdout) invalid(call, "stdio::to_stdout is for err only (out)");
  if (o.input && o.in == stdio::devnull)
    invalid(call, "input is given but in is stdio::devnull");
  if (o.capture_output) {
    if (o.out != stdio::inherit || o.err != stdio::inherit)
      invalid(call, "capture_output cannot be combined with out or err");
    o.out = o.err = stdio::pipe;
  }
  if (o.input) o.in = stdio::pipe;
  if (o.in == stdio::pipe && !o.input) o.input.emplace(); // Python: stdin=PIPE reads EOF
  return o;
}

// ---- launching --------------------------------------------------------------------

struct unique_fd {
  int fd = -1;
  unique_fd() = default;
  explicit unique_fd(int f) : fd(f) {}
  unique_fd(unique_fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  unique_fd& operator=(unique_fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd = std::exchange(o.fd, -1);
    }
    return *this;
  }
  ~unique_fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int release() { return std::exchange(fd, -1); }
};

// A close-on-exec pipe whose ends are both above stderr (a parent started with 0, 1
// or 2 closed would otherwise hand one out, and dup2 onto itself keeps CLOEXEC).
// The parent's end is non-blocking, the child's end blocking.
std::pair<unique_fd, unique_fd> make_pipe(bool parent_reads) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno(errno, "coproc: pipe2");
  unique_fd r(fds[0]), w(fds[1]);
  for (unique_fd* end : {&r, &w}) {
    if (end->fd > 2) continue;
    int moved = ::fcntl(end->fd, F_DUPFD_CLOEXEC, 3);
    if (moved < 0) throw_errno(errno, "coproc: fcntl(F_DUPFD_CLOEXEC)");
    *end = unique_fd(moved);
  }
  int parent = parent_reads ? r.fd : w.fd;
  ::fcntl(parent, F_SETFL, ::fcntl(parent, F_GETFL) | O_NONBLOCK);
  return {std::move(r), std::move(w)};
}

const char* default_path = "/usr/bin:/bin";

// execvp's search: the first executable regular file on PATH; EACCES if only
// non-executable candidates exist, else ENOENT.
std::string find_program(const std::string& name, const std::string& path, int& err) {
  err = ENOENT;
  std::size_t start = 0;
  for (;;) {
    auto end = path.find(':', start);
    std::string dir = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      err = EACCES;
    }
    if (end == std::string::npos) return {};
    start = end + 1;
  }
}

struct spawn_request {
  const std::vector<std::string>& args;
  const std::optional<std::filesystem::path>& cwd;
  const std::optional<std::map<std::string, std::string>>& env;
  bool shell, new_session;
  stdio in, out, err;
};

struct spawned {
  int pid;
  unique_fd in, out, err; // the parent's ends of the piped streams
};

// The program to exec and its argv (pointing into shell_argv or the request's args;
// moving a command_line keeps both in place).
struct command_line {
  std::string program;
  std::vector<std::string> shell_argv;
  std::vector<char*> argv;
};

// execvp's rules: the shell for shell=true, a name with a '/' as it is (relative paths
// resolve in the new cwd, as with Python), else the first match on PATH — the new
// env's PATH when env is replaced.
command_line resolve_command(const spawn_request& req) {
  command_line cmd;
  const std::vector<std::string>* argv_strings = &req.args;
  if (req.shell) {
    cmd.shell_argv.reserve(req.args.size() + 2);
    cmd.shell_argv.push_back("/bin/sh");
    cmd.shell_argv.push_back("-c");
    cmd.shell_argv.insert(cmd.shell_argv.end(), req.args.begin(), req.args.end());
    argv_strings = &cmd.shell_argv;
    cmd.program = "/bin/sh";
  } else if (req.args[0].find('/') != std::string::npos) {
    cmd.program = req.args[0];
  } else {
    std::string path = default_path;
    if (req.env) {
      if (auto it = req.env->find("PATH"); it != req.env->end()) path = it->second;
    } else if (const char* p = std::getenv("PATH")) {
      path = p;
    }
    int err;
    cmd.program = find_program(req.args[0], path, err);
    if (cmd.program.empty())
      throw_errno(err, "coproc: cannot run '" + req.args[0] + "' (searched PATH=" + path + ")");
  }
  cmd.argv.reserve(argv_strings->size() + 1);
  for (const auto& a : *argv_strings) cmd.argv.push_back(const_cast<char*>(a.c_str()));
  cmd.argv.push_back(nullptr);
  return cmd;
}

// The child's environment block: this process's environ, or exactly the given env.
class environment_block {
public:
  explicit environment_block(const std::optional<std::map<std::string, std::string>>& env) {
    if (!env) return;
    strings_.reserve(env->size());
    for (const auto& [name, value] : *env) strings_.push_back(name + "=" + value);
    pointers_.reserve(strings_.size() + 1);
    for (auto& e : strings_) pointers_.push_back(e.data());
    pointers_.push_back(nullptr);
  }
  char** envp() { return pointers_.empty() ? environ : pointers_.data(); }

private:
  std::vector<std::string> strings_;
  std::vector<char*> pointers_;
};

// Checked before spawning so that the error names the directory, not the program.
void check_cwd(const spawn_request& req) {
  if (!req.cwd) return;
  struct stat st;
  int err = ::stat(req.cwd->c_str(), &st) != 0 ? errno
            : !S_ISDIR(st.st_mode)              ? ENOTDIR
            : ::access(req.cwd->c_str(), X_OK) != 0 ? errno
                                                    : 0;
  if (err) throw_errno(err, "coproc: cannot use '" + req.cwd->string() + "' as the cwd of '" + req.args[0] + "'");
}

// posix_spawn's attribute and file-action objects, filled for one request.
class spawn_setup {
public:
  spawn_setup() {
    ::posix_spawnattr_init(&attr_);
    ::posix_spawn_file_actions_init(&actions_);
  }
  spawn_setup(const spawn_setup&) = delete;
  spawn_setup& operator=(const spawn_setup&) = delete;
  ~spawn_setup() {
    ::posix_spawn_file_actions_destroy(&actions_);
    ::posix_spawnattr_destroy(&attr_);
  }

  // Default dispositions for every signal (also those the parent ignores, SIGPIPE
  // first) and an empty mask: the child starts as from a shell. With setsid the child
  // leads a new session and process group, so killpg reaches its descendants.
  void set_signals(bool new_session) {
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    if (new_session) flags |= POSIX_SPAWN_SETSID;
    check(::posix_spawnattr_setflags(&attr_, flags), "posix_spawnattr_setflags");
    check(::posix_spawnattr_setsigdefault(&attr_, &all), "posix_spawnattr_setsigdefault");
    check(::posix_spawnattr_setsigmask(&attr_, &none), "posix_spawnattr_setsigmask");
  }

  // Stream `target` of the child: the child's end of a pipe, /dev/null, or stdout.
  void redirect(stdio how, const unique_fd& child_end, int target, int devnull_flags) {
    if (how == stdio::pipe)
      check(::posix_spawn_file_actions_adddup2(&actions_, child_end.fd, target), "adddup2");
    else if (how == stdio::devnull)
      check(::posix_spawn_file_actions_addopen(&actions_, target, "/dev/null", devnull_flags, 0), "addopen");
    else if (how == stdio::to_stdout)
      check(::posix_spawn_file_actions_adddup2(&actions_, 1, target), "adddup2");
  }

  void chdir(const std::filesystem::path& dir) {
    check(::posix_spawn_file_actions_addchdir_np(&actions_, dir.c_str()), "addchdir_np");
  }

  // Only 0, 1 and 2 reach the program: descriptors other threads or libraries opened
  // without O_CLOEXEC are closed too (close_range in the child).
  void close_the_rest() { check(::posix_spawn_file_actions_addclosefrom_np(&actions_, 3), "addclosefrom_np"); }

  int spawn(command_line& cmd, char** envp) {
    pid_t pid;
    int r = ::posix_spawn(&pid, cmd.program.c_str(), &actions_, &attr_, cmd.argv.data(), envp);
    // glibc reports an exec failure here, having reaped the failed child already.
    if (r != 0) throw_errno(r, "coproc: cannot run '" + cmd.program + "'");
    return pid;
  }

private:
  static void check(int r, const char* what) {
    if (r != 0) throw_errno(r, std::string("coproc: ") + what);
  }

  posix_spawnattr_t attr_;
  posix_spawn_file_actions_t actions_;
};

spawned spawn(const spawn_request& req) {
  auto cmd = resolve_command(req);
  environment_block env(req.env);
  check_cwd(req);

  spawned result{};
  unique_fd child_in, child_out, child_err;
  if (req.in == stdio::pipe) std::tie(child_in, result.in) = make_pipe(false);
  if (req.out == stdio::pipe) std::tie(result.out, child_out) = make_pipe(true);
  if (req.err == stdio::pipe) std::tie(result.err, child_err) = make_pipe(true);

  spawn_setup setup;
  setup.set_signals(req.new_session);
  setup.redirect(req.in, child_in, 0, O_RDONLY);
  setup.redirect(req.out, child_out, 1, O_WRONLY);
  setup.redirect(req.err, child_err, 2, O_WRONLY);
  if (req.cwd) setup.chdir(*req.cwd);
  setup.close_the_rest();
  result.pid = setup.spawn(cmd, env.envp());
  return result;
}

// Hands a pipe end to an Asio pipe object; the descriptor stays ours if that throws.
template <class Pipe> void adopt(Pipe& pipe, unique_fd& fd) {
  if (fd.fd < 0) return;
  pipe.assign(fd.fd);
  fd.release();
}

// ---- streaming ----------------------------------------------------------------------

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
    ssize_t n = write_without_sigpipe(pipe.native_handle(), data.data() + offset,
                                      data.size() - offset);
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
      if (into.capacity() < filled + min_free)
        into.reserve(std::max(into.capacity() * 4, filled + min_free));
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

// Runs the stream operations (at most three: stdin, stdout, stderr) concurrently; the
// first failure cancels the rest and is rethrown once all have ended. One runs inline,
// with no coroutine spawned. (A parallel_group behind the launch guard, not `&&`, which
// is not safe on an io_context run by several threads: detail/launch_guard.hpp.)
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
  auto wait = detail::completed_after_launch(group.async_wait(asio::experimental::wait_for_one_error(), asio::deferred),
                                             use_awaitable);
  auto [order, failures] = co_await std::move(wait);
  for (auto i : order)
    if (failures[i]) std::rethrow_exception(failures[i]);
}

// Awaits op unless the deadline passes first (then op is cancelled and nullopt is
// returned). A cancellation of the caller cancels both and throws.
template <class T>
awaitable<std::optional<T>> before_deadline(awaitable<T> op, duration timeout) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex, timeout);
  auto group = asio::experimental::make_parallel_group(asio::co_spawn(ex, std::move(op), asio::deferred),
                                                       timer.async_wait(asio::deferred));
  auto [order, failure, value, timer_ec] =
      co_await detail::completed_after_launch(std::move(group).async_wait(asio::experimental::wait_for_one(), asio::deferred),
                                              use_awaitable);
  if (order[0] == 0) {
    if (failure) std::rethrow_exception(failure);
    co_return std::optional<T>(std::move(value));
  }
  if (timer_ec) throw boost::system::system_error(timer_ec); // we were cancelled
  co_return std::nullopt;
}

// After a kill: waits for the child; if that wait cannot complete (the io_context is
// going away), the child's destructor leaves it to the background reaper. The caller
// has turned throw_if_cancelled off, or a cancelled caller could not wait at all.
awaitable<void> reap(detail::child& child) {
  try {
    co_await child.wait();
  } catch (...) {
  }
}

// SIGKILL (the group with start_new_session) for a child whose run() is abandoned:
// a coroutine frame destroyed while suspended must not leave the child running.
struct kill_unless_reaped {
  detail::child& child;
  bool group;
  ~kill_unless_reaped() {
    if (child.exitcode()) return;
    try {
      child.signal(SIGKILL, group);
    } catch (...) {
    }
  }
};

awaitable<int> exchange_and_wait(detail::child& child, asio::writable_pipe& in, asio::readable_pipe& out,
                                 asio::readable_pipe& err, detail::exchange_state& state) {
  std::vector<awaitable<void>> ops;
  if (in.is_open()) ops.push_back(write_all(in, state.input, state.input_offset, child.pid()));
  if (out.is_open()) ops.push_back(read_all(out, state.out, child.pid()));
  if (err.is_open()) ops.push_back(read_all(err, state.err, child.pid()));
  co_await all_of(std::move(ops));
  co_return co_await child.wait();
}

awaitable<completed_process> run_child(std::vector<std::string> args, run_options o) {
  auto ex = co_await asio::this_coro::executor;
  spawn_request request{args, o.cwd, o.env, o.shell, o.start_new_session, o.in, o.out, o.err};
  spawned s = spawn(request);
  detail::child child(s.pid, o.start_new_session);
  kill_unless_reaped guard{child, o.start_new_session};

  asio::writable_pipe in(ex);
  asio::readable_pipe out(ex), err(ex);
  adopt(in, s.in);
  adopt(out, s.out);
  adopt(err, s.err);

  detail::exchange_state state;
  if (o.input) state.input = std::move(*o.input);
  std::optional<int> code;
  std::exception_ptr failure;
  try {
    auto op = exchange_and_wait(child, in, out, err, state);
    if (o.timeout) {
      auto bounded = before_deadline(std::move(op), *o.timeout);
      code = co_await std::move(bounded);
    } else {
      code = co_await std::move(op);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  if (!code) {
    // Timed out, cancelled or failed: kill, reap, then report.
    child.signal(SIGKILL, o.start_new_session);
    // A cancelled coroutine's co_awaits throw at once unless told otherwise.
    bool previous = co_await asio::this_coro::throw_if_cancelled();
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await reap(child);
    co_await asio::this_coro::throw_if_cancelled(previous);
    if (failure) std::rethrow_exception(failure);
    throw timeout_expired(std::move(args), *o.timeout, std::move(state.out), std::move(state.err));
  }
  if (o.check && *code != 0)
    throw called_process_error(*code, std::move(args), std::move(state.out), std::move(state.err));
  completed_process result;
  result.args = std::move(args);
  result.returncode = *code;
  result.out = std::move(state.out);
  result.err = std::move(state.err);
  co_return result;
}

awaitable<int> call_child(std::vector<std::string> args, run_options o) {
  auto op = run_child(std::move(args), std::move(o));
  auto r = co_await std::move(op);
  co_return r.returncode;
}

awaitable<void> check_call_child(std::vector<std::string> args, run_options o) {
  auto op = run_child(std::move(args), std::move(o));
  co_await std::move(op);
}

awaitable<std::string> check_output_child(std::vector<std::string> args, run_options o) {
  auto op = run_child(std::move(args), std::move(o));
  auto r = co_await std::move(op);
  co_return std::move(r.out);
}

} // namespace

// The public calls are plain functions: the options are checked when they are called,
// and the coroutine that runs the child starts when it is awaited.

awaitable<completed_process> run(std::vector<std::string> args, run_options options) {
  auto o = normalized("run", args, std::move(options));
  return run_child(std::move(args), std::move(o));
}

awaitable<int> call(std::vector<std::string> args, run_options options) {
  auto o = normalized("call", args, std::move(options));
  return call_child(std::move(args), std::move(o));
}

awaitable<void> check_call(std::vector<std::string> args, run_options options) {
  auto o = normalized("check_call", args, std::move(options));
  o.check = true;
  return check_call_child(std::move(args), std::move(o));
}

awaitable<std::string> check_output(std::vector<std::string> args, run_options options) {
  if (options.out != stdio::inherit && options.out != stdio::pipe)
    invalid("check_output", "stdout is captured: out must be left as inherit");
  auto o = normalized("check_output", args, std::move(options));
  o.out = stdio::pipe;
  o.check = true;
  return check_output_child(std::move(args), std::move(o));
}

// ---- popen ----------------------------------------------------------------------------

popen::popen(boost::asio::any_io_executor ex, std::vector<std::string> args, popen_options o)
    : args_(std::move(args)), group_(o.start_new_session), stdin_(ex), stdout_(ex), stderr_(ex) {
  check_args("popen", args_);
  check_env("popen", o.env);
  if (o.in == stdio::to_stdout) invalid("popen", "stdio::to_stdout is for err only (in)");
  if (o.out == stdio::to_stdout) invalid("popen", "stdio::to_stdout is for err only (out)");
  spawn_request request{args_, o.cwd, o.env, o.shell, o.start_new_session, o.in, o.out, o.err};
  spawned s = spawn(request);
  child_ = std::make_unique<detail::child>(s.pid, group_);
  piped_[0] = o.in == stdio::pipe;
  piped_[1] = o.out == stdio::pipe;
  piped_[2] = o.err == stdio::pipe;
  try {
    adopt(stdin_, s.in);
    adopt(stdout_, s.out);
    adopt(stderr_, s.err);
  } catch (...) {
    // No popen for the caller to manage it: the child must not run on unseen.
    child_->signal(SIGKILL, group_);
    throw;
  }
}

popen::popen(popen&&) noexcept = default;
popen& popen::operator=(popen&&) noexcept = default;
popen::~popen() = default;

int popen::pid() const { return child_->pid(); }

namespace {
[[noreturn]] void not_a_pipe(const char* stream, const popen& p) {
  throw std::logic_error("coproc::popen: " + std::string(stream) + " of pid " +
                         std::to_string(p.pid()) + " ('" + detail::format_command(p.args()) +
                         "') is not stdio::pipe");
}
} // namespace

boost::asio::writable_pipe& popen::stdin_pipe() {
  if (!piped_[0]) not_a_pipe("stdin", *this);
  return stdin_;
}
boost::asio::readable_pipe& popen::stdout_pipe() {
  if (!piped_[1]) not_a_pipe("stdout", *this);
  return stdout_;
}
boost::asio::readable_pipe& popen::stderr_pipe() {
  if (!piped_[2]) not_a_pipe("stderr", *this);
  return stderr_;
}

awaitable<int> popen::wait() { return child_->wait(); }
awaitable<std::optional<int>> popen::wait(duration timeout) { return child_->wait(timeout); }

std::optional<int> popen::poll() { return child_->poll(); }
std::optional<int> popen::returncode() const { return child_->exitcode(); }

void popen::send_signal(int sig) { child_->signal(sig, group_); }
void popen::terminate() { send_signal(SIGTERM); }
void popen::kill() { send_signal(SIGKILL); }

void popen::communication::begin(int pid, std::string input, bool stdin_open) {
  if (!input.empty()) {
    if (started)
      throw std::invalid_argument("coproc::popen::communicate: pid " + std::to_string(pid) +
                                  " — input cannot be sent after communication has started");
    if (!stdin_open)
      throw std::invalid_argument("coproc::popen::communicate: input given but the stdin of pid " +
                                  std::to_string(pid) + " is not an open stdio::pipe");
    streams.input = std::move(input);
  }
  started = true;
}

std::pair<std::string, std::string> popen::communication::finish() {
  auto streams_done = std::exchange(streams, {});
  started = false;
  return {std::move(streams_done.out), std::move(streams_done.err)};
}

awaitable<std::pair<std::string, std::string>> popen::communicate_until(std::optional<duration> timeout) {
  auto exchange = exchange_and_wait(*child_, stdin_, stdout_, stderr_, communication_.streams);
  if (timeout) {
    auto bounded = before_deadline(std::move(exchange), *timeout);
    auto done = co_await std::move(bounded);
    if (!done) throw timeout_expired(args_, *timeout, communication_.streams.out, communication_.streams.err);
  } else {
    co_await std::move(exchange);
  }
  co_return communication_.finish();
}

awaitable<std::pair<std::string, std::string>> popen::communicate(std::string input) {
  communication_.begin(pid(), std::move(input), piped_[0] && stdin_.is_open());
  return communicate_until(std::nullopt);
}

awaitable<std::pair<std::string, std::string>> popen::communicate(std::string input, duration timeout) {
  communication_.begin(pid(), std::move(input), piped_[0] && stdin_.is_open());
  return communicate_until(timeout);
}

} // namespace coproc
