// coproc/pipeline.hpp — shell pipelines, `a | b | c`, on the io_context: run_pipeline
// runs one to completion, pipeline is its popen.
//
//   auto r = co_await coproc::run_pipeline({{"find", "."}, {"sort"}, {"uniq", "-c"}},
//                                          {.capture_output = true, .timeout = 10s});
//   // r.returncodes: one per stage; r.out: what uniq printed
//
// The stages are joined by pipes made here and given to the children: no byte of the
// stream passes through this process (only `input`, written to the first stage, and
// what is captured from the last). Each stage is started as run() starts a child, with
// the same options (cwd, env, user, umask, ...); in/input go to the first stage,
// out/capture_output come from the last, err applies to every stage (stdio::pipe: one
// pipe that all stages' stderr share, captured as err; to_stdout: each stage's stderr
// joins its own stdout, as the shell's `|&`).
//
// Programs are resolved for every stage before any is started, so a missing program
// starts nothing. A stage that still fails to start (exec refused) kills and reaps
// those already started before the std::system_error (naming the stage) is thrown.
//
// One group. With start_new_session or process_group = 0, the first stage leads a new
// process group and every other stage joins it (a shell's job). It is a new group, not
// a new session: setpgid cannot join a group of another session, and only the stages'
// common parent could start them all in one new session. Timeout, cancellation and
// pipeline's signals then reach the whole group (what the stages started too); without
// it they reach each stage. A timeout or a cancellation kills every stage with SIGKILL
// and reaps all of them before run_pipeline completes.
//
// Return codes, as bash's pipefail: completed_pipeline::returncode is the last non-zero
// code of the stages (0 if all succeeded); with check, pipeline_error names that stage.
#pragma once

#include <coproc/subprocess.hpp>

namespace coproc {

struct completed_pipeline {
  std::vector<std::vector<std::string>> args{}; // each stage's args, as given
  std::vector<int> returncodes{};               // one per stage, in order; -N: signal N
  int returncode = 0;                           // pipefail: the last non-zero, else 0
  std::string out{}, err{};                     // captured from the last stage / all stages
};

// check=true and a stage failed: returncode() and cmd() are that stage's (the last one
// that failed, as pipefail reports); stage() is its index. A called_process_error, so
// code that handles run()'s check handles this too.
class pipeline_error : public called_process_error {
public:
  pipeline_error(std::size_t stage, std::vector<std::vector<std::string>> stages,
                 std::vector<int> returncodes, std::string output, std::string errors);
  std::size_t stage() const noexcept { return stage_; }
  const std::vector<int>& returncodes() const noexcept { return returncodes_; }
  const std::vector<std::vector<std::string>>& stages() const noexcept { return stages_; }
  const char* what() const noexcept override { return message_.c_str(); }

private:
  std::size_t stage_;
  std::vector<std::vector<std::string>> stages_;
  std::vector<int> returncodes_;
  std::string message_;
};

// Runs the stages joined by pipes, to completion. std::invalid_argument at the call for
// fewer than one stage, an empty stage and the combinations run() refuses; otherwise
// errors as run()'s, naming the stage. timeout_expired names the whole pipeline and
// carries what was captured so far.
awaitable<completed_pipeline> run_pipeline(std::vector<std::vector<std::string>> stages,
                                           run_options options = {});

// The popen of a pipeline: the stages are started by the constructor; stdin_pipe() is
// the first stage's, stdout_pipe() (and stdout_lines()) the last one's, stderr_pipe()
// every stage's (options.err = stdio::pipe). Destroying it leaves the stages running
// (kill_on_destroy: kills every one); the runtime reaps them. Move-only.
class pipeline {
public:
  pipeline(boost::asio::any_io_executor ex, std::vector<std::vector<std::string>> stages,
           popen_options options = {});
  pipeline(pipeline&&) noexcept;
  pipeline& operator=(pipeline&&) noexcept;
  ~pipeline();

  std::vector<int> pids() const;
  const std::vector<std::vector<std::string>>& stages() const noexcept { return stages_; }

  boost::asio::writable_pipe& stdin_pipe();
  boost::asio::readable_pipe& stdout_pipe();
  boost::asio::readable_pipe& stderr_pipe();
  line_reader stdout_lines(std::size_t max_line = line_reader::default_max_line);

  // Every stage's return code, in order, once all have exited.
  awaitable<std::vector<int>> wait();
  // Each stage's code if it has exited (reaps those that have), never blocks.
  std::vector<std::optional<int>> poll();

  // To the group with start_new_session or process_group = 0, else to every stage.
  void send_signal(int sig);
  void terminate(); // SIGTERM
  void kill();      // SIGKILL

private:
  std::vector<std::vector<std::string>> stages_;
  bool group_ = false;
  bool kill_on_destroy_ = false;
  bool piped_[3] = {false, false, false};
  std::vector<std::unique_ptr<detail::child>> children_;
  boost::asio::writable_pipe stdin_;
  boost::asio::readable_pipe stdout_, stderr_;
};

} // namespace coproc
