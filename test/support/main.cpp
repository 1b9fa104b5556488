// One main for every test program: doctest runs the cases, and after each case a
// listener checks that it left no zombie child and no descriptor behind; the run fails,
// naming the case, if one did.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "checks.hpp"

#include <coproc/main_guard.hpp>

#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string_view>
#include <string>
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

namespace {

// The open descriptors, each with what it names ("pipe:[123]", a path).
std::vector<std::pair<int, std::string>> open_fds() {
  std::vector<std::pair<int, std::string>> out;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return out;
  int own = ::dirfd(dir);
  while (auto* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    int fd = std::atoi(entry->d_name);
    if (fd == own) continue;
    char target[PATH_MAX];
    ssize_t n = ::readlinkat(own, entry->d_name, target, sizeof target);
    out.push_back({fd, n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?"});
  }
  ::closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

bool has_fd(const std::vector<std::pair<int, std::string>>& fds,
            const std::pair<int, std::string>& fd) {
  return std::find(fds.begin(), fds.end(), fd) != fds.end();
}

// After each test case: the case must leave no new child, zombie or live, and exactly the
// descriptors it found (after settle's wait for background reaping; a child that is still
// exiting when the case ends must not become the next case's zombie). What was already
// there when the case started is the previous cases' to answer for, so one leak fails
// one case, and under ctest, which runs each case in a process of its own, the same one.
struct leak_check : doctest::IReporter {
  static inline int leaky_cases = 0;
  static inline int matched_cases = 0;

  explicit leak_check(const doctest::ContextOptions&) {}

  void test_case_start(const doctest::TestCaseData& tc) override {
    test_ = &tc;
    fds_ = open_fds();
    children_ = all_children();
  }
  void test_case_end(const doctest::CurrentTestCaseStats&) override {
    int before = static_cast<int>(fds_.size());
    // Background reaping may lag by a moment: as generous as settle().
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    for (;;) {
      if (new_children(coproc_test::zombie_children()).empty() &&
          new_children(coproc_test::live_children()).empty() && coproc_test::count_fds() == before)
        return;
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ++leaky_cases;
    auto now = open_fds();
    auto zombies = new_children(coproc_test::zombie_children());
    auto live = new_children(coproc_test::live_children());
    std::fprintf(stderr,
                 "%s:%d: ERROR: test case \"%s\" left %zu zombie children, %zu live children "
                 "and %d descriptors open (%d before)\n",
                 test_->m_file.c_str(), test_->m_line, test_->m_name, zombies.size(), live.size(),
                 static_cast<int>(now.size()), before);
    for (int pid : zombies) std::fprintf(stderr, "  zombie pid %d\n", pid);
    for (int pid : live) std::fprintf(stderr, "  live child pid %d\n", pid);
    for (auto& fd : now)
      if (!has_fd(fds_, fd))
        std::fprintf(stderr, "  fd %d opened: %s\n", fd.first, fd.second.c_str());
    for (auto& fd : fds_)
      if (!has_fd(now, fd))
        std::fprintf(stderr, "  fd %d closed: %s\n", fd.first, fd.second.c_str());
  }

  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    matched_cases = static_cast<int>(stats.numTestCasesPassingFilters);
  }
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}

private:
  static std::vector<int> all_children() {
    auto out = coproc_test::zombie_children();
    for (int pid : coproc_test::live_children()) out.push_back(pid);
    return out;
  }
  // Those of pids that were not children when the case started.
  std::vector<int> new_children(const std::vector<int>& pids) const {
    std::vector<int> out;
    for (int pid : pids)
      if (std::find(children_.begin(), children_.end(), pid) == children_.end()) out.push_back(pid);
    return out;
  }

  const doctest::TestCaseData* test_ = nullptr;
  std::vector<std::pair<int, std::string>> fds_;
  std::vector<int> children_;
};

} // namespace

DOCTEST_REGISTER_LISTENER("leak_check", 1, leak_check);

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // a fresh image (start_method::spawn) becomes its child here
  doctest::Context context(argc, argv);
  int result = context.run();
  if (context.shouldExit()) return result;
  // ctest names one case per run; a name that matches none ran nothing and must not pass
  // (CMake splits a case name at a ';', so such a name never reaches doctest whole).
  bool named = std::any_of(argv + 1, argv + argc, [](const char* a) {
    return std::string_view(a).starts_with("--test-case=") ||
           std::string_view(a).starts_with("-tc=");
  });
  if (named && leak_check::matched_cases == 0) {
    std::fprintf(stderr, "no test case matches the names on the command line\n");
    return result ? result : 4;
  }
  if (leak_check::leaky_cases > 0) {
    std::fprintf(stderr, "%d test cases left zombie children or descriptors behind\n",
                 leak_check::leaky_cases);
    return result ? result : 3;
  }
  return result;
}
