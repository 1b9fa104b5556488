// Another process as /proc/<pid>/stat shows it (test_pipeline, test_subprocess,
// test_forkserver).
#pragma once

#include <fstream>
#include <optional>
#include <sstream>
#include <string>

namespace coproc_test {

struct proc_stat {
  char state = 0; // R, S, Z, ...
  int ppid = 0;
  int pgrp = 0;
};

// Fields 3 to 5 of /proc/<pid>/stat; nullopt once the process is gone (reaped).
inline std::optional<proc_stat> read_proc_stat(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  auto close = line.rfind(')'); // the command name may hold spaces and parentheses
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(line.substr(close + 1));
  proc_stat s;
  rest >> s.state >> s.ppid >> s.pgrp;
  if (!rest) return std::nullopt;
  return s;
}

} // namespace coproc_test
