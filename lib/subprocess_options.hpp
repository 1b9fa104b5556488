// lib/subprocess_options.hpp — checking run_options / popen_options and starting one
// child from them; shared by lib/subprocess.cpp and lib/pipeline.cpp (private).
#pragma once

#include "spawn.hpp"

#include <stdexcept>
#include <string>
#include <string_view>

namespace coproc::detail {

[[noreturn]] inline void invalid(const char* call, const std::string& why) {
  throw std::invalid_argument(std::string("coproc::") + call + ": " + why);
}

inline void check_args(const char* call, const std::vector<std::string>& args) {
  if (args.empty()) invalid(call, "args is empty: there is no program to run");
  for (std::size_t i = 0; i < args.size(); ++i)
    if (args[i].find('\0') != std::string::npos)
      invalid(call, "args[" + std::to_string(i) + "] contains a NUL byte");
}

// What run_options and popen_options share: cwd ... restore_signals.
template <class Options> void check_common(const char* call, const Options& o) {
  if (o.env) {
    for (const auto& [name, value] : *o.env) {
      if (name.empty() || name.find_first_of(std::string_view("=\0", 2)) != std::string::npos)
        invalid(call, "env name '" + name + "' is empty or contains '=' or a NUL byte");
      if (value.find('\0') != std::string::npos)
        invalid(call, "env value of " + name + " contains a NUL byte");
    }
  }
  if (o.in == stdio::to_stdout) invalid(call, "stdio::to_stdout is for err only (in)");
  if (o.out == stdio::to_stdout) invalid(call, "stdio::to_stdout is for err only (out)");
  if (o.in.what() == redirect::kind::file && !o.in.for_reading())
    invalid(call, "to_file is for out or err; in takes from_file");
  for (const redirect* r : {&o.out, &o.err})
    if (r->what() == redirect::kind::file && r->for_reading())
      invalid(call, "from_file is for in; out and err take to_file");
  if (o.in.what() == redirect::kind::popen_pipe && o.in.fd() != 1)
    invalid(call, "in takes stdout_of(p), not stdin_of(p)");
  for (const redirect* r : {&o.out, &o.err})
    if (r->what() == redirect::kind::popen_pipe && r->fd() != 0)
      invalid(call, "out and err take stdin_of(p), not stdout_of(p)");
  if (o.start_new_session && o.process_group)
    invalid(
        call,
        "start_new_session and process_group together: a session leader cannot join another group");
  if (o.process_group && *o.process_group < 0)
    invalid(call, "process_group must be 0 or a process group id");
  if (o.umask && *o.umask > 07777) invalid(call, "umask must be at most 07777");
}

// Whether the child leads a process group, so that signals may go to the whole group.
template <class Options> bool leads_group(const Options& o) {
  return o.start_new_session || (o.process_group && *o.process_group == 0);
}

struct started_child {
  int pid = -1;
  unique_fd in, out, err; // the parent's ends of the piped streams
};

template <class Options>
launch_request request_of(const std::vector<std::string>& args, const Options& o) {
  return launch_request{
      args,    o.cwd,  o.env,   o.shell,        o.start_new_session, o.process_group,   o.pass_fds,
      o.umask, o.user, o.group, o.extra_groups, o.executable,        o.restore_signals, {}};
}

// Starts one child: the program resolved first, then the streams opened, then the
// launch; what was handed over from another popen is closed here afterwards.
template <class Options>
started_child start_child(const std::vector<std::string>& args, const Options& o) {
  launch_request req = request_of(args, o);
  auto cmd = resolve_command(req);
  const std::string& who = args[0];
  prepared_stream streams[3] = {prepare_stream(o.in, 0, who), prepare_stream(o.out, 1, who),
                                prepare_stream(o.err, 2, who)};
  for (int t = 0; t < 3; ++t) req.streams[t] = streams[t].child;
  started_child c;
  c.pid = launch(req, cmd);
  for (auto& s : streams) hand_over(s);
  c.in = std::move(streams[0].parent_end);
  c.out = std::move(streams[1].parent_end);
  c.err = std::move(streams[2].parent_end);
  return c;
}

} // namespace coproc::detail
