// Targets and helpers the fresh-image tests share (test_fresh_children.cpp for both
// methods, test_main_guard.cpp for spawn, test_forkserver.cpp): plain functions, so a
// fresh image finds them by their offset.
#pragma once

#include <coproc/process.hpp>
#include <coproc/this_process.hpp>

#include <doctest/doctest.h>

#include "capture.hpp"
#include "preload_fork_server.hpp"
#include "checks.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace coproc_test::fresh_image {

inline void forever() {
  for (;;) ::pause();
}

inline int has_name(std::string expected) {
  return coproc::this_process::name() == expected ? 0 : 1;
}

// Writes "pid ppid" to path (whole, by a rename), then waits to be signalled.
inline void report_then_wait(std::string path) {
  {
    std::ofstream out(path + ".tmp");
    out << ::getpid() << ' ' << ::getppid() << '\n';
  }
  std::filesystem::rename(path + ".tmp", path);
  forever();
}

// The numbers in the file once it exists; empty if it does not appear within 20 s.
inline std::vector<long> wait_for_report(const std::string& path) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path);
    std::vector<long> numbers;
    for (long n; in >> n;) numbers.push_back(n);
    if (!numbers.empty()) return numbers;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return {};
}

class temp_dir {
public:
  temp_dir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "coproc-test-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~temp_dir() { std::filesystem::remove_all(path_); }
  std::string file(const char* name) const { return (path_ / name).string(); }

private:
  std::filesystem::path path_;
};

inline int join(coproc::process& p) { return run(p.join()); }

using coproc_test::capture;

} // namespace coproc_test::fresh_image
