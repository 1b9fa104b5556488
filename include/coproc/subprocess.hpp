// coproc/subprocess.hpp — Python's subprocess on the io_context: run, call, check_call,
// check_output, popen, pipelines (run_pipeline, pipeline), line_reader, getoutput.
//
//   auto r = co_await coproc::run({"ls", "-l"}, {.capture_output = true, .timeout = 5s});
//   int code = co_await coproc::call({"uname", "-a"});
//
//   coproc::popen p(ex, {"make"}, {.out = coproc::stdio::pipe, .err = coproc::stdio::to_stdout});
//   co_await boost::asio::async_read_until(p.stdout_pipe(), buffer, '\n', use_awaitable);
//   int status = co_await p.wait();
//
//   // find . | sort | uniq -c > counts.txt, no byte through this process
//   auto r = co_await coproc::run_pipeline({{"find", "."}, {"sort"}, {"uniq", "-c"}},
//                                          {.out = coproc::to_file("counts.txt")});
//
//   coproc::popen tail(ex, {"tail", "-f", "log"}, {.out = coproc::stdio::pipe});
//   auto lines = tail.stdout_lines();
//   while (auto line = co_await lines.next()) use(*line);
//
// Launching. Children are started with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK),
// then exec), so a spawn costs the same whatever the parent's size, touches no
// descriptor the io_context holds (no notify_fork per spawn, unlike Boost.Process 1.81's
// default launcher), and an exec failure comes back synchronously: a missing or
// non-executable program is a std::system_error (ENOENT / EACCES) naming it when the
// call is awaited — never a 127 exit code, a zombie or the parent's stdio flushed twice.
// posix_spawn cannot set a umask, a user, groups, or keep chosen descriptors open by
// number; a request for umask, user, group, extra_groups or pass_fds takes coproc's own
// clone(CLONE_VM|CLONE_VFORK) path (lib/spawn.cpp), which keeps those properties: the
// same cost, a synchronous exec error, only async-signal-safe system calls in the child.
// The child starts with default signal dispositions for every signal and an empty
// signal mask (restore_signals = false: exec's own rules instead), and inherits only
// descriptors 0, 1 and 2 (and pass_fds). Boost.Process v2 (1.81) is not used: its
// launcher forks with the defects above plus a blocking waitpid, and its PATH search
// cannot tell a non-executable file (EACCES) from a missing one; args[0] is searched
// here as execvp does, on the child's PATH.
//
// Streams. Pipes are close-on-exec and non-blocking on the parent's side. Bulk
// transfers (input over 64 KiB, a child that fills its output pipe) move to 1 MiB
// pipes, the unprivileged default maximum: 16 times fewer syscalls and wake-ups.
//
// Waiting. detail::child (shared with coproc::process): pidfd readiness on the awaiting
// coroutine's executor, a non-blocking reap, SIGCHLD where pidfds are unavailable.
// Nothing blocks the io_context.
//
// Killing policy. A run/call/check_call/check_output whose timeout expires, or whose
// awaiting coroutine is cancelled (`co_await (coproc::run(...) || timer)`), or that
// fails while the child runs, sends SIGKILL at once — to the whole process group when
// start_new_session is set — then reaps the child before it completes. There is no
// SIGTERM grace period, as in Python's subprocess.run: the caller has given up on the
// child, and a grace period would keep the cancelled operation (and everything
// awaiting it) hostage to the child's signal handler. A child that deserves a clean
// shutdown is a popen: terminate() (SIGTERM), wait(grace), then kill() (SIGKILL).
// popen's send_signal/terminate/kill also reach the whole group with
// start_new_session. A coroutine frame destroyed while its run() is suspended kills
// the child the same way; the runtime reaps it in the background.
//
// SIGPIPE. run(input) and popen::communicate(input) write with SIGPIPE blocked for the
// writing thread, so a child that exits without reading its input is not a crash;
// the unread input is dropped, as in Python. Writing to popen::stdin_pipe() yourself
// is an ordinary pipe write: ignore SIGPIPE if that child may stop reading.
//
// Executors. Awaitables bind to the awaiting coroutine's executor; a popen's pipes
// belong to the executor given to its constructor.
#pragma once

#include <coproc/awaitable.hpp>
#include <coproc/errors.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/readable_pipe.hpp>
#include <boost/asio/writable_pipe.hpp>

#include <cstddef>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace coproc {

class popen;

namespace detail {
class child;
// What crosses a child's piped streams: the input and how much of it was written, the
// output read so far. It survives a cancelled or timed-out exchange.
struct exchange_state {
  std::string input{};
  std::size_t input_offset = 0;
  std::string out{}, err{};
};
} // namespace detail

// Where a child's standard stream goes. to_stdout is for err only (2>&1).
enum class stdio { inherit, pipe, devnull, to_stdout };

// How to_file opens a file for writing: `>` or `>>`.
enum class file_mode { truncate, append };

// One standard stream of a child: a stdio value, or one of the sources and sinks made
// by the functions below. It converts from stdio, so `.out = coproc::stdio::pipe` reads
// as before and `.out = coproc::to_file("log", coproc::file_mode::append)` sits beside
// it in the same designated initializer.
class redirect {
public:
  enum class kind { standard, file, descriptor, popen_pipe };

  redirect(stdio how = stdio::inherit) noexcept : how_(how) {} // implicit: stdio is a redirect

  kind what() const noexcept { return kind_; }
  stdio standard() const noexcept { return how_; }                     // kind::standard
  const std::filesystem::path& path() const noexcept { return path_; } // kind::file
  bool for_reading() const noexcept { return reading_; }               // kind::file
  file_mode mode() const noexcept { return mode_; }                    // kind::file, for writing
  int fd() const noexcept {
    return fd_;
  } // kind::descriptor; kind::popen_pipe: 1 its stdout, 0 its stdin
  popen* source() const noexcept { return popen_; } // kind::popen_pipe

  friend bool operator==(const redirect& r, stdio s) noexcept {
    return r.kind_ == kind::standard && r.how_ == s;
  }

private:
  friend redirect from_file(std::filesystem::path path);
  friend redirect to_file(std::filesystem::path path, file_mode mode);
  friend redirect descriptor(int fd);
  friend redirect stdout_of(popen& p);
  friend redirect stdin_of(popen& p);

  kind kind_ = kind::standard;
  stdio how_ = stdio::inherit;
  std::filesystem::path path_{};
  bool reading_ = false;
  file_mode mode_ = file_mode::truncate;
  int fd_ = -1;
  popen* popen_ = nullptr;
};

// `< path`: for in. The file is opened by this process when the child is started, so a
// missing or unreadable file is a std::system_error naming it, and no child runs.
redirect from_file(std::filesystem::path path);
// `> path` / `>> path`: for out or err, created with mode 0666 less the umask.
redirect to_file(std::filesystem::path path, file_mode mode = file_mode::truncate);
// A descriptor the caller owns and keeps: the child's stream is a duplicate of it. A
// descriptor that is not open is a std::system_error (EBADF) naming it at the start.
redirect descriptor(int fd);
// Another popen's piped stdout (for in) or stdin (for out), as Python's
// `Popen(b, stdin=a.stdout)`. The pipe passes from that popen to the new child: once
// the child is started, this process closes its own end (what Python's documentation
// asks the caller to do by hand), so no byte passes through here, the first child
// gets SIGPIPE when the second exits, and the second sees EOF when the first does.
// That popen's stdout_pipe()/stdin_pipe() is closed afterwards.
redirect stdout_of(popen& p);
redirect stdin_of(popen& p);

// A user or group, by name ("nobody") or by number (65534).
class id_or_name {
public:
  id_or_name(unsigned id) : id_(id) {}
  id_or_name(int id) : id_(static_cast<unsigned>(id)) {}
  id_or_name(std::string name) : name_(std::move(name)) {}
  id_or_name(const char* name) : name_(name) {}
  const std::optional<unsigned>& id() const noexcept { return id_; }
  const std::string& name() const noexcept { return name_; }

private:
  std::optional<unsigned> id_{};
  std::string name_{};
};

// Options after `timeout` in run_options (and after `err` in popen_options) are the
// same in both and in the same order; they were added after the first members, whose
// order designated initializers already rely on.
//   pass_fds        descriptors kept open in the child under the same numbers (Python's
//                   pass_fds); one that is not open is a std::system_error naming it.
//   process_group   setpgid(0, n) in the child (Python 3.11): 0 makes the child the
//                   leader of a new group, as a shell's job; then, as with
//                   start_new_session, timeout, cancellation and popen's signals reach
//                   the whole group.
//   umask           the child's umask.
//   user, group     setuid / setgid in the child (as root); a name is looked up in this
//                   process (std::invalid_argument naming an unknown one).
//   extra_groups    setgroups in the child; `{{}}` drops every supplementary group.
//                   As in Python, user alone does not change the supplementary groups
//                   (the child keeps this process's): give extra_groups with user.
//   executable      the program run, while args[0] stays what the child sees as its
//                   argv[0] (searched on PATH as args[0] is; with shell, replaces /bin/sh).
//   restore_signals true (the default): every signal — glibc's internal 32 and 33 too —
//                   starts at its default disposition and none is blocked, whatever this
//                   process ignores or blocks (a superset of Python's, which restores only
//                   SIGPIPE and SIGXFSZ). false: exec's own rules — signals this process
//                   ignores stay ignored (SIGPIPE, SIGHUP under nohup...), and the calling
//                   thread's signal mask is inherited; handled signals become default.

struct run_options {
  std::optional<std::filesystem::path> cwd{}; // the child's working directory
  std::optional<std::map<std::string, std::string>>
      env{};                          // replaces the environment; nullopt inherits
  bool shell = false;                 // run /bin/sh -c args[0] (more args: $0, $1, ...)
  bool start_new_session = false;     // setsid; then timeout/cancel/kill reach the whole group
  std::optional<std::string> input{}; // written to stdin, then closed
  redirect in = stdio::inherit;       // not to_stdout; stdio::pipe alone means empty input (EOF)
  bool capture_output = false;        // out and err both become stdio::pipe
  bool check = false;                 // exit != 0 → called_process_error
  redirect out = stdio::inherit, err = stdio::inherit; // pipe: captured into completed_process
  std::optional<duration> timeout{}; // the child is killed and reaped, then timeout_expired
  std::vector<int> pass_fds{};
  std::optional<int> process_group{};
  std::optional<unsigned> umask{};
  std::optional<id_or_name> user{}, group{};
  std::optional<std::vector<id_or_name>> extra_groups{};
  std::optional<std::filesystem::path> executable{};
  bool restore_signals = true;
};

struct popen_options { // as in run_options
  std::optional<std::filesystem::path> cwd{};
  std::optional<std::map<std::string, std::string>> env{};
  bool shell = false;
  bool start_new_session = false;
  redirect in = stdio::inherit, out = stdio::inherit, err = stdio::inherit;
  std::vector<int> pass_fds{};
  std::optional<int> process_group{};
  std::optional<unsigned> umask{};
  std::optional<id_or_name> user{}, group{};
  std::optional<std::vector<id_or_name>> extra_groups{};
  std::optional<std::filesystem::path> executable{};
  bool restore_signals = true;
  // tokio's kill_on_drop: a popen destroyed while its child runs SIGKILLs it (its group
  // when it leads one) and the runtime reaps it. Without it the child runs on.
  bool kill_on_destroy = false;
};

struct completed_process {
  std::vector<std::string> args{}; // as given
  int returncode = 0;              // -N: killed by signal N
  std::string out{}, err{};        // what was captured (stdio::pipe), else empty
};

// Runs args to completion. std::invalid_argument (thrown by the call itself, before
// anything is awaited) for empty args, an embedded NUL, an env name with '=' and these
// combinations: input with in other than inherit or pipe, in=to_stdout, out=to_stdout,
// to_file as in, from_file as out or err, capture_output with out or err set.
// std::system_error when the program, cwd, a file or a descriptor cannot be used.
// timeout_expired / called_process_error as documented on run_options.
awaitable<completed_process> run(std::vector<std::string> args, run_options options = {});
// The return code; the output goes where options say (captured output is dropped).
awaitable<int> call(std::vector<std::string> args, run_options options = {});
// called_process_error unless the exit status is 0.
awaitable<void> check_call(std::vector<std::string> args, run_options options = {});
// stdout, captured; called_process_error unless the exit status is 0. out must be
// left as inherit (or pipe); capture_output also captures err into the error.
awaitable<std::string> check_output(std::vector<std::string> args, run_options options = {});

// subprocess.getstatusoutput / getoutput: `/bin/sh -c cmd` with stderr joined to
// stdout, one trailing newline stripped; the status is the return code (-N for a
// signal), as in Python 3.
awaitable<std::pair<int, std::string>> getstatusoutput(std::string cmd);
awaitable<std::string> getoutput(std::string cmd);

// A line longer than a line_reader's bound.
class line_too_long : public error {
public:
  using error::error;
};

// Lines from a pipe as they arrive: `while (auto line = co_await lines.next())`. A
// line is returned without its '\n'; a last line without one is returned too, then
// nullopt at EOF. A line longer than max_line bytes is not split: next() throws
// line_too_long (naming the bound), that line's bytes are dropped through its '\n',
// and the following call returns the next line. The pipe must outlive the reader; the
// reader reads ahead, so do not read the pipe yourself beside it.
class line_reader {
public:
  static constexpr std::size_t default_max_line = 1024 * 1024;
  explicit line_reader(boost::asio::readable_pipe& pipe, std::size_t max_line = default_max_line);
  awaitable<std::optional<std::string>> next();

private:
  boost::asio::readable_pipe* pipe_;
  std::size_t max_line_;
  std::string buffer_{};
  std::size_t start_ = 0;   // where the unreturned bytes begin in buffer_
  std::size_t scanned_ = 0; // buffer_[start_, scanned_) holds no '\n'
  bool eof_ = false, skipping_ = false;
};

// subprocess.Popen. The child is started by the constructor (std::system_error if it
// cannot be); its piped streams are the three pipes, usable for streaming. Destroying a
// popen closes its pipes and leaves a running child alone (kill_on_destroy: kills it);
// the runtime reaps it when it exits. Move-only; a moved-from popen may only be
// destroyed or assigned to.
class popen {
public:
  popen(boost::asio::any_io_executor ex, std::vector<std::string> args, popen_options options = {});
  popen(popen&&) noexcept;
  popen& operator=(popen&&) noexcept;
  ~popen();

  int pid() const;
  const std::vector<std::string>& args() const noexcept { return args_; }

  // The parent's ends of the piped streams; std::logic_error for a stream that is not
  // stdio::pipe. Close stdin_pipe() to send EOF.
  boost::asio::writable_pipe& stdin_pipe();
  boost::asio::readable_pipe& stdout_pipe();
  boost::asio::readable_pipe& stderr_pipe();
  // A line_reader over stdout_pipe() / stderr_pipe() (std::logic_error if not piped).
  line_reader stdout_lines(std::size_t max_line = line_reader::default_max_line);
  line_reader stderr_lines(std::size_t max_line = line_reader::default_max_line);

  // The return code once the child has exited (reaped on the awaiting coroutine's
  // executor). wait(timeout): nullopt at the deadline, the child left alone. Unlike
  // run(), a cancelled wait or communicate leaves the child alone too.
  awaitable<int> wait();
  awaitable<std::optional<int>> wait(duration timeout);

  // Writes input to stdin and closes it, reads stdout and stderr (the piped ones) to
  // EOF, waits for the exit; returns {out, err}. With a timeout: timeout_expired
  // carrying what was read so far, the child left alone; a later communicate() goes on
  // where that one stopped and returns all the output (its input must be empty).
  // std::invalid_argument for input when stdin is not a pipe.
  awaitable<std::pair<std::string, std::string>> communicate(std::string input = {});
  awaitable<std::pair<std::string, std::string>> communicate(std::string input, duration timeout);

  std::optional<int> poll();             // reaps if exited, never blocks
  std::optional<int> returncode() const; // the last code poll/wait saw

  void send_signal(int sig); // no-op once reaped
  void terminate();          // SIGTERM
  void kill();               // SIGKILL

private:
  // communicate() state kept across a timeout, as Python keeps it.
  struct communication {
    bool started = false;
    detail::exchange_state streams;
    // std::invalid_argument for input that cannot be sent now.
    void begin(int pid, std::string input, bool stdin_open);
    // The output so far; the next communicate() starts afresh.
    std::pair<std::string, std::string> finish();
  };
  awaitable<std::pair<std::string, std::string>> communicate_until(std::optional<duration> timeout);
  void kill_if_asked() noexcept;

  std::vector<std::string> args_;
  bool group_ = false;
  bool kill_on_destroy_ = false;
  bool piped_[3] = {false, false, false};
  std::unique_ptr<detail::child> child_;
  boost::asio::writable_pipe stdin_;
  boost::asio::readable_pipe stdout_, stderr_;
  communication communication_;
};

} // namespace coproc

#include <coproc/pipeline.hpp>
