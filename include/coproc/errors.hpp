// coproc/errors.hpp — the exceptions coproc throws.
//
// Runtime failures derive from coproc::error; misuse is std::logic_error; OS failures
// are std::system_error naming what failed. what() always names the process, the
// command or the pid involved.
#pragma once

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

namespace coproc {

class error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class timeout_error : public error {
public:
  using error::error;
};

// A pool task threw in a worker.
class remote_error : public error {
public:
  remote_error(std::string type_name, std::string message, int pid);
  const std::string& type_name() const noexcept { return type_name_; }
  const std::string& message() const noexcept { return message_; }
  int pid() const noexcept { return pid_; }

private:
  std::string type_name_, message_;
  int pid_;
};

// The worker running a task died. exitcode() < 0 is the signal that killed it.
class worker_lost : public error {
public:
  worker_lost(int exitcode, int pid);
  // what: the whole message (a remote worker's: its host, address and why it was lost).
  worker_lost(int exitcode, int pid, std::string what);
  int exitcode() const noexcept { return exitcode_; }
  int pid() const noexcept { return pid_; }

private:
  int exitcode_, pid_;
};

// A pool task was still running at its timeout (coproc/pool.hpp, task_options): its worker
// was killed with its process group. what() names the function where known and the timeout.
class task_timeout : public timeout_error {
public:
  task_timeout(const std::string& function, std::chrono::steady_clock::duration timeout, int pid);
  std::chrono::steady_clock::duration timeout() const noexcept { return timeout_; }
  int pid() const noexcept { return pid_; }

private:
  std::chrono::steady_clock::duration timeout_;
  int pid_;
};

class pool_closed : public error {
public:
  pool_closed();
  using error::error;
};

// As in Python, a queue that stays empty or full is not a timeout_error.
class queue_empty : public error {
public:
  queue_empty();
  using error::error;
};
class queue_full : public error {
public:
  queue_full();
  using error::error;
};
class queue_closed : public error {
public:
  queue_closed();
  using error::error;
};
class eof_error : public error {
public:
  eof_error();
  using error::error;
};

// A barrier's wait found it broken: aborted, reset, a waiter's timeout, a dead party.
class broken_barrier : public error {
public:
  broken_barrier();
  using error::error;
};

class called_process_error : public error {
public:
  called_process_error(int returncode, std::vector<std::string> cmd, std::string output = {},
                       std::string errors = {});
  int returncode() const noexcept { return returncode_; }
  const std::vector<std::string>& cmd() const noexcept { return cmd_; }
  const std::string& output() const noexcept { return output_; }
  const std::string& errors() const noexcept { return errors_; }

private:
  int returncode_;
  std::vector<std::string> cmd_;
  std::string output_, errors_;
};

class timeout_expired : public timeout_error {
public:
  timeout_expired(std::vector<std::string> cmd, std::chrono::steady_clock::duration timeout,
                  std::string output = {}, std::string errors = {});
  const std::vector<std::string>& cmd() const noexcept { return cmd_; }
  std::chrono::steady_clock::duration timeout() const noexcept { return timeout_; }
  const std::string& output() const noexcept { return output_; }
  const std::string& errors() const noexcept { return errors_; }

private:
  std::vector<std::string> cmd_;
  std::chrono::steady_clock::duration timeout_;
  std::string output_, errors_;
};

namespace detail {
// "ls -l 'a b'": a command line for messages, quoted as a shell would need it.
std::string format_command(const std::vector<std::string>& args);
// "exited with status 3" or "died with SIGKILL" (code -9).
std::string describe_exitcode(int code);
// The demangled name of the dynamic type of e.
std::string exception_type_name(const std::exception& e);
} // namespace detail

} // namespace coproc
