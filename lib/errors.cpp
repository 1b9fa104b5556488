#include <coproc/errors.hpp>

#include <cxxabi.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <typeinfo>

namespace coproc {

remote_error::remote_error(std::string type_name, std::string message, int pid)
    : error(type_name + ": " + message + " (in worker pid " + std::to_string(pid) + ")"),
      type_name_(std::move(type_name)), message_(std::move(message)), pid_(pid) {}

worker_lost::worker_lost(int exitcode, int pid)
    : error("worker pid " + std::to_string(pid) + " " + detail::describe_exitcode(exitcode) +
            " while running the task"),
      exitcode_(exitcode), pid_(pid) {}

worker_lost::worker_lost(int exitcode, int pid, std::string what)
    : error(what), exitcode_(exitcode), pid_(pid) {}
namespace {
std::string duration_text(std::chrono::steady_clock::duration d); // (below)
} // namespace

task_timeout::task_timeout(const std::string& function, std::chrono::steady_clock::duration timeout,
                           int pid)
    : timeout_error("pool task " + function + " did not finish within its timeout of " +
                    duration_text(timeout) + "; its worker pid " + std::to_string(pid) +
                    " was killed with its process group"),
      timeout_(timeout), pid_(pid) {}

pool_closed::pool_closed() : error("the pool was terminated before the task finished") {}
queue_empty::queue_empty() : error("queue is empty") {}
queue_full::queue_full() : error("queue is full") {}
queue_closed::queue_closed() : error("queue is closed") {}
eof_error::eof_error() : error("connection closed by the peer") {}
broken_barrier::broken_barrier() : error("the barrier is broken") {}

called_process_error::called_process_error(int returncode, std::vector<std::string> cmd,
                                           std::string output, std::string errors)
    : error("command '" + detail::format_command(cmd) + "' " +
            (returncode >= 0 ? "returned non-zero exit status " + std::to_string(returncode)
                             : detail::describe_exitcode(returncode))),
      returncode_(returncode), cmd_(std::move(cmd)), output_(std::move(output)),
      errors_(std::move(errors)) {}

namespace {
std::string seconds_text(std::chrono::steady_clock::duration d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  auto text = std::to_string(ms / 1000);
  if (ms % 1000 != 0) {
    auto frac = std::to_string(1000 + ms % 1000).substr(1);
    while (frac.back() == '0') frac.pop_back();
    text += "." + frac;
  }
  return text;
}
// Seconds for whole-millisecond durations, else microseconds: a timeout of 0.5 ms is
// not "0 seconds".
std::string duration_text(std::chrono::steady_clock::duration d) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  if (us % 1000 != 0) return std::to_string(us) + " microseconds";
  return seconds_text(d) + " s";
}
} // namespace

timeout_expired::timeout_expired(std::vector<std::string> cmd,
                                 std::chrono::steady_clock::duration timeout, std::string output,
                                 std::string errors)
    : timeout_error("command '" + detail::format_command(cmd) + "' timed out after " +
                    seconds_text(timeout) + " seconds"),
      cmd_(std::move(cmd)), timeout_(timeout), output_(std::move(output)),
      errors_(std::move(errors)) {}

namespace detail {

std::string format_command(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& a : args) {
    if (!out.empty()) out += ' ';
    bool plain =
        !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                          "0123456789@%+=:,./-_") == std::string::npos;
    if (plain) {
      out += a;
      continue;
    }
    out += '\'';
    for (char c : a) out += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    out += '\'';
  }
  return out;
}

std::string describe_exitcode(int code) {
  if (code >= 0) return "exited with status " + std::to_string(code);
  const char* abbrev = sigabbrev_np(-code);
  return "died with " + (abbrev ? "SIG" + std::string(abbrev) : "signal " + std::to_string(-code));
}

std::string exception_type_name(const std::exception& e) {
  const char* mangled = typeid(e).name();
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  return status == 0 && demangled ? demangled.get() : mangled;
}

} // namespace detail
} // namespace coproc
