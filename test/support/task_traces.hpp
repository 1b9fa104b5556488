// Tasks that leave traces a test checks from outside the worker, and the checks: files
// written whole, grandchildren marked by their argv[0] in /proc (test_pool_timeout,
// test_pool_remote). Plain functions: the pool sends them as image offsets.
#pragma once

#include "proc.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace coproc_test::traces {

// Whole, by a rename: a reader never sees half of it.
inline void write_file(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path + ".tmp");
    out << text;
  }
  std::filesystem::rename(path + ".tmp", path);
}

inline std::vector<long> numbers_in(const std::string& path) {
  std::ifstream in(path);
  std::vector<long> numbers;
  for (long n; in >> n;) numbers.push_back(n);
  return numbers;
}

inline void wait_for_path(const std::string& path) {
  while (!std::filesystem::exists(path)) ::usleep(1000);
}

inline std::string argv0_of(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string arg0;
  std::getline(in, arg0, '\0');
  return arg0;
}

// Processes whose argv[0] is `marker` (a zombie has no cmdline: it does not count).
inline std::vector<long> processes_with_argv0(const std::string& marker) {
  std::vector<long> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (argv0_of(std::stol(name)) == marker) found.push_back(std::stol(name));
  }
  return found;
}

// Running or sleeping, not gone and not a zombie.
inline bool alive(long pid) {
  auto stat = read_proc_stat(static_cast<int>(pid));
  return stat && stat->state != 'Z';
}

// Starts two grandchildren, a `sleep` exec'd with `marker` as its argv[0] and a plain
// fork, writes "own-pid sleep-pid fork-pid" to `report` once the sleep runs, then hangs.
inline int hang_with_grandchildren(std::string marker, std::string report) {
  pid_t sleeper = ::fork();
  if (sleeper == 0) {
    ::execlp("sleep", marker.c_str(), "1000", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  pid_t forked = ::fork();
  if (forked == 0)
    for (;;) ::pause();
  while (argv0_of(sleeper) != marker) ::usleep(1000);
  write_file(report, std::to_string(::getpid()) + " " + std::to_string(sleeper) + " " +
                         std::to_string(forked));
  for (;;) ::pause();
}

// Writes its pid to dir/started, waits for dir/go, then creates dir/done: the side effect
// a stopped task never has.
inline int touch_after_go(std::string dir) {
  write_file(dir + "/started", std::to_string(::getpid()));
  wait_for_path(dir + "/go");
  write_file(dir + "/done", "done");
  return 1;
}

inline int touch_now(std::string path) {
  write_file(path, "done");
  return 1;
}

} // namespace coproc_test::traces
