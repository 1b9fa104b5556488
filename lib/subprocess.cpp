// run, call, check_call, check_output, getoutput and popen. Launching is lib/spawn.cpp,
// the streams' descriptors lib/streams.cpp, moving their bytes lib/child_io.cpp.
#include <coproc/subprocess.hpp>

#include <coproc/detail/child.hpp>

#include "child_io.hpp"
#include "os.hpp"
#include "subprocess_options.hpp"

#include <boost/asio/this_coro.hpp>

#include <signal.h>

#include <optional>
#include <stdexcept>
#include <system_error>

namespace coproc {

namespace {

namespace asio = boost::asio;
using detail::invalid;
using detail::unique_fd;

// The options of one run, checked, with capture_output and input turned into pipes.
run_options normalized(const char* call, const std::vector<std::string>& args, run_options o) {
  detail::check_args(call, args);
  detail::check_common(call, o);
  if (o.input && !(o.in == stdio::inherit || o.in == stdio::pipe))
    invalid(call, "input is given but in is already set to something else");
  if (o.capture_output) {
    if (!(o.out == stdio::inherit) || !(o.err == stdio::inherit))
      invalid(call, "capture_output cannot be combined with out or err");
    o.out = o.err = stdio::pipe;
  }
  if (o.input) o.in = stdio::pipe;
  if (o.in == stdio::pipe && !o.input) o.input.emplace(); // Python: stdin=PIPE reads EOF
  return o;
}

// Hands a pipe end to an Asio pipe object; the descriptor stays ours if that throws.
template <class Pipe> void adopt(Pipe& pipe, unique_fd& fd) {
  if (fd.fd < 0) return;
  pipe.assign(fd.fd);
  fd.release();
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

awaitable<int> exchange_and_wait(detail::child& child, asio::writable_pipe& in,
                                 asio::readable_pipe& out, asio::readable_pipe& err,
                                 detail::exchange_state& state) {
  std::vector<awaitable<void>> ops;
  if (in.is_open())
    ops.push_back(detail::write_all(in, state.input, state.input_offset, child.pid()));
  if (out.is_open()) ops.push_back(detail::read_all(out, state.out, child.pid()));
  if (err.is_open()) ops.push_back(detail::read_all(err, state.err, child.pid()));
  co_await detail::all_of(std::move(ops));
  co_return co_await child.wait();
}

awaitable<completed_process> run_child(std::vector<std::string> args, run_options o) {
  auto ex = co_await asio::this_coro::executor;
  bool group = detail::leads_group(o);
  detail::started_child s = detail::start_child(args, o);
  detail::child child(s.pid, group);
  kill_unless_reaped guard{child, group};

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
      auto bounded = detail::before_deadline(std::move(op), *o.timeout);
      code = co_await std::move(bounded);
    } else {
      code = co_await std::move(op);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  if (!code) {
    // Timed out, cancelled or failed: kill, reap, then report.
    child.signal(SIGKILL, group);
    // A cancelled coroutine's co_awaits throw at once unless told otherwise.
    bool previous = co_await asio::this_coro::throw_if_cancelled();
    co_await asio::this_coro::throw_if_cancelled(false);
    co_await detail::reap(child);
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

awaitable<std::pair<int, std::string>> status_output(std::string cmd) {
  run_options o;
  o.shell = true;
  o.out = stdio::pipe;
  o.err = stdio::to_stdout;
  std::vector<std::string> args{std::move(cmd)};
  auto op = run_child(std::move(args), std::move(o));
  auto r = co_await std::move(op);
  if (!r.out.empty() && r.out.back() == '\n') r.out.pop_back();
  co_return std::pair<int, std::string>(r.returncode, std::move(r.out));
}

awaitable<std::string> output_of(std::string cmd) {
  auto op = status_output(std::move(cmd));
  auto r = co_await std::move(op);
  co_return std::move(r.second);
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
  if (!(options.out == stdio::inherit) && !(options.out == stdio::pipe))
    invalid("check_output", "stdout is captured: out must be left as inherit");
  auto o = normalized("check_output", args, std::move(options));
  o.out = stdio::pipe;
  o.check = true;
  return check_output_child(std::move(args), std::move(o));
}

awaitable<std::pair<int, std::string>> getstatusoutput(std::string cmd) {
  if (cmd.find('\0') != std::string::npos) invalid("getstatusoutput", "cmd contains a NUL byte");
  return status_output(std::move(cmd));
}

awaitable<std::string> getoutput(std::string cmd) {
  if (cmd.find('\0') != std::string::npos) invalid("getoutput", "cmd contains a NUL byte");
  return output_of(std::move(cmd));
}

// ---- popen ----------------------------------------------------------------------------

popen::popen(boost::asio::any_io_executor ex, std::vector<std::string> args, popen_options o)
    : args_(std::move(args)), group_(detail::leads_group(o)), kill_on_destroy_(o.kill_on_destroy),
      stdin_(ex), stdout_(ex), stderr_(ex) {
  detail::check_args("popen", args_);
  detail::check_common("popen", o);
  detail::started_child s = detail::start_child(args_, o);
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

popen& popen::operator=(popen&& o) noexcept {
  if (this != &o) {
    kill_if_asked();
    args_ = std::move(o.args_);
    group_ = o.group_;
    kill_on_destroy_ = o.kill_on_destroy_;
    std::copy(std::begin(o.piped_), std::end(o.piped_), std::begin(piped_));
    child_ = std::move(o.child_);
    stdin_ = std::move(o.stdin_);
    stdout_ = std::move(o.stdout_);
    stderr_ = std::move(o.stderr_);
    communication_ = std::move(o.communication_);
  }
  return *this;
}

popen::~popen() { kill_if_asked(); }

// kill_on_destroy: the child must not outlive its popen. The runtime reaps it.
void popen::kill_if_asked() noexcept {
  if (!kill_on_destroy_ || !child_) return;
  try {
    if (!child_->exitcode()) child_->signal(SIGKILL, group_);
  } catch (...) {
  }
}

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

line_reader popen::stdout_lines(std::size_t max_line) {
  return line_reader(stdout_pipe(), max_line);
}
line_reader popen::stderr_lines(std::size_t max_line) {
  return line_reader(stderr_pipe(), max_line);
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

awaitable<std::pair<std::string, std::string>>
popen::communicate_until(std::optional<duration> timeout) {
  auto exchange = exchange_and_wait(*child_, stdin_, stdout_, stderr_, communication_.streams);
  if (timeout) {
    auto bounded = detail::before_deadline(std::move(exchange), *timeout);
    auto done = co_await std::move(bounded);
    if (!done)
      throw timeout_expired(args_, *timeout, communication_.streams.out,
                            communication_.streams.err);
  } else {
    co_await std::move(exchange);
  }
  co_return communication_.finish();
}

awaitable<std::pair<std::string, std::string>> popen::communicate(std::string input) {
  communication_.begin(pid(), std::move(input), piped_[0] && stdin_.is_open());
  return communicate_until(std::nullopt);
}

awaitable<std::pair<std::string, std::string>> popen::communicate(std::string input,
                                                                  duration timeout) {
  communication_.begin(pid(), std::move(input), piped_[0] && stdin_.is_open());
  return communicate_until(timeout);
}

} // namespace coproc
