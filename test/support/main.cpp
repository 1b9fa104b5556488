// One main for every test program: doctest runs the cases, then the run fails if any
// case left a zombie child or a leaked descriptor behind.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "checks.hpp"

#include <coproc/main_guard.hpp>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

namespace coproc_test {

int count_fds() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  while (auto* entry = ::readdir(dir))
    if (entry->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n - 1; // the directory's own descriptor
}

namespace {
// (pid, state) of every child of this process.
std::vector<std::pair<int, char>> children() {
  std::vector<std::pair<int, char>> out;
  int self = ::getpid();
  DIR* dir = ::opendir("/proc");
  if (!dir) return out;
  while (auto* entry = ::readdir(dir)) {
    char* end;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    char state;
    int ppid;
    if (rest >> state >> ppid && ppid == self) out.push_back({static_cast<int>(pid), state});
  }
  ::closedir(dir);
  return out;
}
} // namespace

std::vector<int> zombie_children() {
  std::vector<int> out;
  for (auto [pid, state] : children())
    if (state == 'Z') out.push_back(pid);
  return out;
}

std::vector<int> live_children() {
  std::vector<int> out;
  for (auto [pid, state] : children())
    if (state != 'Z') out.push_back(pid);
  return out;
}

bool settle(int fds, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (zombie_children().empty() && count_fds() == fds) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool pid_exists(int pid) {
  struct stat st;
  return ::stat(("/proc/" + std::to_string(pid)).c_str(), &st) == 0;
}

} // namespace coproc_test

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // a fresh image (start_method::spawn) becomes its child here
  int fds = coproc_test::count_fds();
  doctest::Context context(argc, argv);
  int result = context.run();
  if (context.shouldExit()) return result;
  if (!coproc_test::settle(fds)) {
    std::fprintf(stderr, "after the tests: %zu zombie children, %d descriptors open (%d before)\n",
                 coproc_test::zombie_children().size(), coproc_test::count_fds(), fds);
    for (int pid : coproc_test::zombie_children()) std::fprintf(stderr, "  zombie pid %d\n", pid);
    return result ? result : 3;
  }
  return result;
}
