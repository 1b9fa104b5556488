// coproc/subprocess.hpp — Python's subprocess on the io_context: run, call, check_call,
// check_output and popen.
//
//   auto r = co_await coproc::run({"ls", "-l"}, {.capture_output = true, .timeout = 5s});
//   int code = co_await coproc::call({"uname", "-a"});
//
//   coproc::popen p(ex, {"make"}, {.out = coproc::stdio::pipe, .err = coproc::stdio::to_stdout});
//   co_await boost::asio::async_read_until(p.stdout_pipe(), buffer, '\n', use_awaitable);
//   int status = co_await p.wait();
//
// Launching. Children are started with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK),
// then exec), so a spawn costs the same whatever the parent's size, touches no
// descriptor the io_context holds (no notify_fork per spawn, unlike Boost.Process 1.81's
// default launcher), and an exec failure comes back synchronously: a missing or
// non-executable program is a std::system_error (ENOENT / EACCES) naming it when the
// call is awaited — never a 127 exit code, a zombie or the parent's stdio flushed twice.
// The child starts with default signal dispositions and an empty signal mask, and
// inherits only descriptors 0, 1 and 2. Boost.Process v2 (1.81) is not used: its
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

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace coproc {

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

struct run_options {
  std::optional<std::filesystem::path> cwd{};                // the child's working directory
  std::optional<std::map<std::string, std::string>> env{};   // replaces the environment; nullopt inherits
  bool shell = false;                  // run /bin/sh -c args[0] (more args: $0, $1, ...)
  bool start_new_session = false;      // setsid; then timeout/cancel/kill reach the whole group
  std::optional<std::string> input{};  // written to stdin, then closed
  stdio in = stdio::inherit;           // inherit or devnull; pipe alone means empty input (EOF)
  bool capture_output = false;         // out and err both become stdio::pipe
  bool check = false;                  // exit != 0 → called_process_error
  stdio out = stdio::inherit, err = stdio::inherit;   // pipe: captured into completed_process
  std::optional<duration> timeout{};   // the child is killed and reaped, then timeout_expired
};

struct popen_options {                 // cwd, env, shell, start_new_session as in run_options
  std::optional<std::filesystem::path> cwd{};
  std::optional<std::map<std::string, std::string>> env{};
  bool shell = false;
  bool start_new_session = false;
  stdio in = stdio::inherit, out = stdio::inherit, err = stdio::inherit;
};

struct completed_process {
  std::vector<std::string> args{};     // as given
  int returncode = 0;                  // -N: killed by signal N
  std::string out{}, err{};            // what was captured (stdio::pipe), else empty
};

// Runs args to completion. std::invalid_argument (thrown by the call itself, before
// anything is awaited) for empty args, an embedded NUL, an env name with '=' and these
// combinations: input with in=devnull, in=to_stdout, out=to_stdout, capture_output with
// out or err set. std::system_error when the program or cwd cannot be used.
// timeout_expired / called_process_error as documented on run_options.
awaitable<completed_process> run(std::vector<std::string> args, run_options options = {});
// The return code; the output goes where options say (captured output is dropped).
awaitable<int> call(std::vector<std::string> args, run_options options = {});
// called_process_error unless the exit status is 0.
awaitable<void> check_call(std::vector<std::string> args, run_options options = {});
// stdout, captured; called_process_error unless the exit status is 0. out must be
// left as inherit (or pipe); capture_output also captures err into the error.
awaitable<std::string> check_output(std::vector<std::string> args, run_options options = {});

// subprocess.Popen. The child is started by the constructor (std::system_error if it
// cannot be); its piped streams are the three pipes, usable for streaming. Destroying a
// popen closes its pipes and leaves a running child alone; the runtime reaps it when it
// exits. Move-only; a moved-from popen may only be destroyed or assigned to.
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

  std::optional<int> poll();                  // reaps if exited, never blocks
  std::optional<int> returncode() const;      // the last code poll/wait saw

  void send_signal(int sig);                  // no-op once reaped
  void terminate();                           // SIGTERM
  void kill();                                // SIGKILL

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

  std::vector<std::string> args_;
  bool group_ = false;
  bool piped_[3] = {false, false, false};
  std::unique_ptr<detail::child> child_;
  boost::asio::writable_pipe stdin_;
  boost::asio::readable_pipe stdout_, stderr_;
  communication communication_;
};

} // namespace coproc
