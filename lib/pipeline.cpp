// Pipelines: run_pipeline and pipeline (include/coproc/pipeline.hpp).
#include <coproc/pipeline.hpp>

#include <coproc/detail/child.hpp>

#include "child_io.hpp"
#include "os.hpp"
#include "subprocess_options.hpp"

#include <boost/asio/this_coro.hpp>

#include <signal.h>

#include <cstring>
#include <stdexcept>
#include <system_error>

namespace coproc {

namespace {

namespace asio = boost::asio;
using detail::invalid;
using detail::unique_fd;
using stage_list = std::vector<std::vector<std::string>>;

// "find . | sort | uniq -c": how errors name a pipeline.
std::string pipeline_text(const stage_list& stages) {
  std::string text;
  for (const auto& stage : stages) {
    if (!text.empty()) text += " | ";
    text += detail::format_command(stage);
  }
  return text;
}

void check_stages(const char* call, const stage_list& stages) {
  if (stages.empty()) invalid(call, "no stages: a pipeline needs at least one command");
  for (std::size_t i = 0; i < stages.size(); ++i) {
    if (stages[i].empty())
      invalid(call, "stage " + std::to_string(i) + " is empty: there is no program to run");
    detail::check_args(call, stages[i]);
  }
}

// The same error with the stage named after what it said ("...: No such file" stays last).
[[noreturn]] void rethrow_for_stage(const std::system_error& e, std::size_t stage,
                                    const stage_list& stages) {
  std::string what = e.what();
  std::string suffix = ": " + e.code().message();
  if (what.size() >= suffix.size() &&
      what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0)
    what.resize(what.size() - suffix.size());
  throw std::system_error(e.code(), what + " (stage " + std::to_string(stage) +
                                        " of the pipeline '" + pipeline_text(stages) + "')");
}

struct started_pipeline {
  std::vector<std::unique_ptr<detail::child>> children;
  unique_fd in, out, err; // the parent's ends of the piped streams
};

// SIGKILL (or sig) to every stage that is not reaped: through the group when the
// stages share one and its leader is still there, else one by one.
void signal_all(std::vector<std::unique_ptr<detail::child>>& children, bool group, int sig) {
  if (group && !children.empty() && children[0]->signal(sig, true)) return;
  for (auto& c : children) c->signal(sig, false);
}

// Starts every stage: all programs are resolved first (a missing one starts nothing),
// then the stages from the first, each joined to the next by a pipe made here. A stage
// that cannot start kills those already running; the runtime reaps them.
template <class Options> started_pipeline start_stages(const stage_list& stages, const Options& o) {
  std::size_t n = stages.size();
  bool group = detail::leads_group(o);
  std::vector<detail::launch_request> requests;
  std::vector<detail::command_line> commands;
  requests.reserve(n);
  commands.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    requests.push_back(detail::request_of(stages[i], o));
    auto& req = requests.back();
    if (group) {
      // One new group led by the first stage (see pipeline.hpp: not a new session).
      req.new_session = false;
      req.process_group = 0;
    }
    try {
      commands.push_back(detail::resolve_command(req));
    } catch (const std::system_error& e) {
      rethrow_for_stage(e, i, stages);
    }
  }
  detail::prepared_stream first_in = detail::prepare_stream(o.in, 0, stages.front()[0]);
  detail::prepared_stream last_out = detail::prepare_stream(o.out, 1, stages.back()[0]);
  detail::prepared_stream err = detail::prepare_stream(o.err, 2, stages.front()[0]);

  started_pipeline p;
  p.children.reserve(n);
  try {
    unique_fd previous_read; // the read end of the pipe from the previous stage
    for (std::size_t i = 0; i < n; ++i) {
      auto& req = requests[i];
      unique_fd next_read, write_end;
      if (i + 1 < n) std::tie(next_read, write_end) = detail::make_pipe(-1);
      req.streams[0] = i == 0
                           ? first_in.child
                           : detail::child_stream{detail::child_stream::dup_fd, previous_read.fd};
      req.streams[1] = i + 1 == n
                           ? last_out.child
                           : detail::child_stream{detail::child_stream::dup_fd, write_end.fd};
      req.streams[2] = err.child;
      if (group && i > 0) req.process_group = p.children[0]->pid();
      int pid;
      try {
        pid = detail::launch(req, commands[i]);
      } catch (const std::system_error& e) {
        rethrow_for_stage(e, i, stages);
      }
      p.children.push_back(std::make_unique<detail::child>(pid, group && i == 0));
      // This process keeps no end of the pipes between stages: each stage sees EOF
      // (or EPIPE) when its neighbour ends, as in a shell.
      previous_read = std::move(next_read);
    }
  } catch (...) {
    signal_all(p.children, group, SIGKILL);
    throw;
  }
  for (auto* s : {&first_in, &last_out, &err}) detail::hand_over(*s);
  p.in = std::move(first_in.parent_end);
  p.out = std::move(last_out.parent_end);
  p.err = std::move(err.parent_end);
  return p;
}

template <class Pipe> void adopt(Pipe& pipe, unique_fd& fd) {
  if (fd.fd < 0) return;
  pipe.assign(fd.fd);
  fd.release();
}

// A run_pipeline abandoned while suspended (its frame destroyed) kills every stage;
// the runtime reaps them.
struct kill_unless_reaped {
  std::vector<std::unique_ptr<detail::child>>& children;
  bool group;
  ~kill_unless_reaped() {
    try {
      for (auto& c : children)
        if (!c->exitcode()) {
          signal_all(children, group, SIGKILL);
          return;
        }
    } catch (...) {
    }
  }
};

awaitable<std::vector<int>>
exchange_and_wait_all(std::vector<std::unique_ptr<detail::child>>& children,
                      asio::writable_pipe& in, asio::readable_pipe& out, asio::readable_pipe& err,
                      detail::exchange_state& state) {
  int first = children.front()->pid(), last = children.back()->pid();
  std::vector<awaitable<void>> ops;
  if (in.is_open()) ops.push_back(detail::write_all(in, state.input, state.input_offset, first));
  if (out.is_open()) ops.push_back(detail::read_all(out, state.out, last));
  if (err.is_open()) ops.push_back(detail::read_all(err, state.err, first));
  co_await detail::all_of(std::move(ops));
  std::vector<int> codes;
  for (auto& c : children) {
    auto wait = c->wait();
    codes.push_back(co_await std::move(wait));
  }
  co_return codes;
}

awaitable<completed_pipeline> run_stages(stage_list stages, run_options o) {
  auto ex = co_await asio::this_coro::executor;
  bool group = detail::leads_group(o);
  started_pipeline p = start_stages(stages, o);
  kill_unless_reaped guard{p.children, group};

  asio::writable_pipe in(ex);
  asio::readable_pipe out(ex), err(ex);
  adopt(in, p.in);
  adopt(out, p.out);
  adopt(err, p.err);

  detail::exchange_state state;
  if (o.input) state.input = std::move(*o.input);
  std::optional<std::vector<int>> codes;
  std::exception_ptr failure;
  try {
    auto op = exchange_and_wait_all(p.children, in, out, err, state);
    if (o.timeout) {
      auto bounded = detail::before_deadline(std::move(op), *o.timeout);
      codes = co_await std::move(bounded);
    } else {
      codes = co_await std::move(op);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  if (!codes) {
    // Timed out, cancelled or failed: kill every stage, reap every one, then report.
    signal_all(p.children, group, SIGKILL);
    bool previous = co_await asio::this_coro::throw_if_cancelled();
    co_await asio::this_coro::throw_if_cancelled(false);
    for (auto& c : p.children) co_await detail::reap(*c);
    co_await asio::this_coro::throw_if_cancelled(previous);
    if (failure) std::rethrow_exception(failure);
    throw timeout_expired({pipeline_text(stages)}, *o.timeout, std::move(state.out),
                          std::move(state.err));
  }
  completed_pipeline result;
  result.returncodes = std::move(*codes);
  for (int code : result.returncodes)
    if (code != 0) result.returncode = code;
  if (o.check && result.returncode != 0) {
    std::size_t failed = result.returncodes.size() - 1;
    while (result.returncodes[failed] == 0) --failed;
    throw pipeline_error(failed, std::move(stages), std::move(result.returncodes),
                         std::move(state.out), std::move(state.err));
  }
  result.args = std::move(stages);
  result.out = std::move(state.out);
  result.err = std::move(state.err);
  co_return result;
}

} // namespace

pipeline_error::pipeline_error(std::size_t stage, std::vector<std::vector<std::string>> stages,
                               std::vector<int> returncodes, std::string output, std::string errors)
    : called_process_error(returncodes.at(stage), stages.at(stage), std::move(output),
                           std::move(errors)),
      stage_(stage), stages_(std::move(stages)), returncodes_(std::move(returncodes)) {
  int code = returncodes_[stage_];
  message_ = "pipeline '" + pipeline_text(stages_) + "': stage " + std::to_string(stage_) + " ('" +
             detail::format_command(stages_[stage_]) + "') " +
             (code >= 0 ? "returned non-zero exit status " + std::to_string(code)
                        : detail::describe_exitcode(code));
}

awaitable<completed_pipeline> run_pipeline(std::vector<std::vector<std::string>> stages,
                                           run_options o) {
  check_stages("run_pipeline", stages);
  detail::check_common("run_pipeline", o);
  if (o.input && !(o.in == stdio::inherit || o.in == stdio::pipe))
    invalid("run_pipeline", "input is given but in is already set to something else");
  if (o.capture_output) {
    if (!(o.out == stdio::inherit) || !(o.err == stdio::inherit))
      invalid("run_pipeline", "capture_output cannot be combined with out or err");
    o.out = o.err = stdio::pipe;
  }
  if (o.input) o.in = stdio::pipe;
  if (o.in == stdio::pipe && !o.input) o.input.emplace();
  return run_stages(std::move(stages), std::move(o));
}

// ---- pipeline --------------------------------------------------------------------------

pipeline::pipeline(boost::asio::any_io_executor ex, std::vector<std::vector<std::string>> stages,
                   popen_options o)
    : stages_(std::move(stages)), group_(detail::leads_group(o)),
      kill_on_destroy_(o.kill_on_destroy), stdin_(ex), stdout_(ex), stderr_(ex) {
  check_stages("pipeline", stages_);
  detail::check_common("pipeline", o);
  started_pipeline p = start_stages(stages_, o);
  children_ = std::move(p.children);
  piped_[0] = p.in.fd >= 0;
  piped_[1] = p.out.fd >= 0;
  piped_[2] = p.err.fd >= 0;
  try {
    adopt(stdin_, p.in);
    adopt(stdout_, p.out);
    adopt(stderr_, p.err);
  } catch (...) {
    signal_all(children_, group_, SIGKILL);
    throw;
  }
}

pipeline::pipeline(pipeline&&) noexcept = default;

pipeline& pipeline::operator=(pipeline&& o) noexcept {
  if (this != &o) {
    if (kill_on_destroy_) signal_all(children_, group_, SIGKILL);
    stages_ = std::move(o.stages_);
    group_ = o.group_;
    kill_on_destroy_ = o.kill_on_destroy_;
    std::copy(std::begin(o.piped_), std::end(o.piped_), std::begin(piped_));
    children_ = std::move(o.children_);
    stdin_ = std::move(o.stdin_);
    stdout_ = std::move(o.stdout_);
    stderr_ = std::move(o.stderr_);
  }
  return *this;
}

pipeline::~pipeline() {
  if (!kill_on_destroy_) return;
  try {
    signal_all(children_, group_, SIGKILL);
  } catch (...) {
  }
}

std::vector<int> pipeline::pids() const {
  std::vector<int> pids;
  for (const auto& c : children_) pids.push_back(c->pid());
  return pids;
}

namespace {
[[noreturn]] void not_a_pipe(const char* stream, const pipeline& p) {
  throw std::logic_error("coproc::pipeline: " + std::string(stream) + " of '" +
                         pipeline_text(p.stages()) + "' is not stdio::pipe");
}
} // namespace

boost::asio::writable_pipe& pipeline::stdin_pipe() {
  if (!piped_[0]) not_a_pipe("stdin", *this);
  return stdin_;
}
boost::asio::readable_pipe& pipeline::stdout_pipe() {
  if (!piped_[1]) not_a_pipe("stdout", *this);
  return stdout_;
}
boost::asio::readable_pipe& pipeline::stderr_pipe() {
  if (!piped_[2]) not_a_pipe("stderr", *this);
  return stderr_;
}
line_reader pipeline::stdout_lines(std::size_t max_line) {
  return line_reader(stdout_pipe(), max_line);
}

awaitable<std::vector<int>> pipeline::wait() {
  std::vector<int> codes;
  for (auto& c : children_) {
    auto one = c->wait();
    codes.push_back(co_await std::move(one));
  }
  co_return codes;
}

std::vector<std::optional<int>> pipeline::poll() {
  std::vector<std::optional<int>> codes;
  for (auto& c : children_) codes.push_back(c->poll());
  return codes;
}

void pipeline::send_signal(int sig) { signal_all(children_, group_, sig); }
void pipeline::terminate() { send_signal(SIGTERM); }
void pipeline::kill() { send_signal(SIGKILL); }

} // namespace coproc
