// Process start+join with a no-op target: coproc::process vs Python multiprocessing
// (fork) vs raw fork+waitpid, in the same run. Then 1000 children started at once and
// joined concurrently: wall time and peak descriptors.
#include <coproc/coproc.hpp>

#include "common.hpp"

#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

namespace {

constexpr int sequential_n = 300;
constexpr int rounds = 7;
constexpr int concurrent_n = 1000;

int count_fds() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  while (auto* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n - 1;
}

double raw_sequential() {
  auto start = bench::clock::now();
  for (int i = 0; i < sequential_n; ++i) {
    int pid = ::fork();
    if (pid == 0) ::_exit(0);
    ::waitpid(pid, nullptr, 0);
  }
  return bench::seconds_since(start) / sequential_n * 1e6;
}

double coproc_sequential() {
  return coproc::block_on([]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    for (int i = 0; i < sequential_n; ++i) {
      coproc::process p([] {});
      p.start();
      co_await p.join();
    }
    co_return bench::seconds_since(start) / sequential_n * 1e6;
  }());
}

double raw_concurrent() {
  auto start = bench::clock::now();
  std::vector<int> pids;
  for (int i = 0; i < concurrent_n; ++i) {
    int pid = ::fork();
    if (pid == 0) ::_exit(0);
    pids.push_back(pid);
  }
  for (int pid : pids) ::waitpid(pid, nullptr, 0);
  return bench::seconds_since(start);
}

int peak_fds = 0;

double coproc_concurrent() {
  return coproc::block_on([]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    std::vector<coproc::process> procs;
    procs.reserve(concurrent_n);
    std::vector<coproc::awaitable<int>> joins;
    for (int i = 0; i < concurrent_n; ++i) {
      procs.emplace_back([] {});
      procs.back().start();
      joins.push_back(procs.back().join());
    }
    auto sample = []() -> coproc::awaitable<int> {
      peak_fds = std::max(peak_fds, count_fds());
      co_return 0;
    };
    joins.push_back(sample()); // runs after every join has opened its pidfd
    co_await coproc::gather(std::move(joins));
    co_return bench::seconds_since(start);
  }());
}

} // namespace

int main() {
  std::printf("start+join of a no-op child, sequential, %d per round, median of %d rounds\n",
              sequential_n, rounds);
  double raw = bench::median_of(rounds, raw_sequential);
  double ours = bench::median_of(rounds, coproc_sequential);
  double py = bench::python("process_peer.py", "sequential " + std::to_string(sequential_n) + " " +
                                                   std::to_string(rounds));
  bench::row("process start+join", "raw fork+waitpid", raw, "us", true);
  bench::row("process start+join", "coproc", ours, "us", true);
  bench::row("process start+join", "python multiprocessing", py, "us", true);
  bench::ratio("vs raw fork+waitpid (target <= 1.5x)", ours, raw, true);
  bench::ratio("vs Python (target >= 7x)", ours, py, true);

  std::printf("\n%d children started, then joined concurrently, median of 3 rounds\n", concurrent_n);
  int base_fds = count_fds();
  double raw_c = bench::median_of(3, raw_concurrent);
  double ours_c = bench::median_of(3, coproc_concurrent);
  double py_c = bench::python("process_peer.py", "concurrent " + std::to_string(concurrent_n) + " 3");
  bench::row("1000 concurrent children", "raw fork+waitpid", raw_c * 1e3, "ms", true);
  bench::row("1000 concurrent children", "coproc", ours_c * 1e3, "ms", true);
  bench::row("1000 concurrent children", "python multiprocessing", py_c * 1e3, "ms", true);
  bench::ratio("vs Python", ours_c, py_c, true);
  std::printf("  peak descriptors during the coproc run: %d (%d before: one pidfd per pending join)\n",
              peak_fds, base_fds);
}
