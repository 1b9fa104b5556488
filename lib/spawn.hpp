// lib/spawn.hpp — starting one child for run/popen/pipelines (private: not installed).
// Home: lib/spawn.cpp (the two launch paths) and lib/streams.cpp (what the child's
// standard streams become).
#pragma once

#include <coproc/subprocess.hpp>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace coproc::detail {

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
// nonblocking_end: 0 makes the read end non-blocking (the parent reads it), 1 the
// write end, -1 neither (a pipe between two children).
std::pair<unique_fd, unique_fd> make_pipe(int nonblocking_end);

// Moves fd above stderr (a close-on-exec duplicate) if it is 0, 1 or 2, so that the
// child's dup2 onto 0..2 never overwrites a source it has yet to copy.
unique_fd above_stderr(unique_fd fd);

// What the child's stream 0, 1 or 2 becomes.
struct child_stream {
  enum how_t { keep, dup_fd, dup_stdout } how = keep;
  int fd = -1; // dup_fd: the descriptor (above 2) that the child dup2s onto the stream
};

// One redirect, made real in this process before the spawn: the descriptors it opened
// (closed once the child has its copies) and, for stdio::pipe, the parent's end.
struct prepared_stream {
  child_stream child;
  unique_fd opened;             // a file, /dev/null, a duplicate of the caller's descriptor
  unique_fd parent_end;         // stdio::pipe
  popen* handed_from = nullptr; // stdout_of/stdin_of: its pipe is closed after the spawn
  int handed_stream = -1;       // 0: its stdin, 1: its stdout
};

// target: 0, 1 or 2. who names the child in errors ("'cat'").
prepared_stream prepare_stream(const redirect& r, int target, const std::string& who);
// After the spawn: close what prepare_stream handed over from another popen.
void hand_over(prepared_stream& s);

// Everything one child is started with. The streams must have been prepared.
struct launch_request {
  const std::vector<std::string>& args;
  const std::optional<std::filesystem::path>& cwd;
  const std::optional<std::map<std::string, std::string>>& env;
  bool shell = false;
  bool new_session = false;
  std::optional<int> process_group;
  const std::vector<int>& pass_fds;
  std::optional<unsigned> umask;
  const std::optional<id_or_name>& user;
  const std::optional<id_or_name>& group;
  const std::optional<std::vector<id_or_name>>& extra_groups;
  const std::optional<std::filesystem::path>& executable;
  bool restore_signals = true;
  child_stream streams[3];
};

// The program and argv of a request, resolved (PATH searched) before anything is started.
struct command_line {
  std::string program;
  std::vector<std::string> shell_argv;
  std::vector<char*> argv;
};
// std::system_error (ENOENT/EACCES) naming args[0] (or executable) and the PATH searched.
command_line resolve_command(const launch_request& req);

// Starts the child; its pid. std::system_error naming the program, the cwd, a
// descriptor; std::invalid_argument naming an unknown user or group.
int launch(const launch_request& req, command_line& cmd);

} // namespace coproc::detail
