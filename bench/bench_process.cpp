// Process start+join with a no-op target, per start method: coproc::process vs Python's
// multiprocessing (the same method) vs the raw system calls, with the parent small and
// holding 1 GiB resident, in the same run. Then 1000 children started at once and joined
// concurrently: wall time and peak descriptors.
#include <coproc/coproc.hpp>

#include "common.hpp"

#include <dirent.h>
#include <sys/mman.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

constexpr int rounds = 9;
constexpr int concurrent_n = 1000;
constexpr const char* exit_at_once =
    "--exit-at-once"; // the raw posix_spawn's image returns at once

int count_fds() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  while (auto* e = ::readdir(dir))
    if (e->d_name[0] != '.') ++n;
  ::closedir(dir);
  return n - 1;
}

void noop() {}

// Microseconds per start+join, n in a row.
double raw_fork(int n) {
  auto start = bench::clock::now();
  for (int i = 0; i < n; ++i) {
    int pid = ::fork();
    if (pid == 0) ::_exit(0);
    ::waitpid(pid, nullptr, 0);
  }
  return bench::seconds_since(start) / n * 1e6;
}

double raw_posix_spawn(int n, const char* path, const char* arg) {
  char* argv[] = {const_cast<char*>(path), const_cast<char*>(arg), nullptr};
  auto start = bench::clock::now();
  for (int i = 0; i < n; ++i) {
    pid_t pid;
    if (::posix_spawn(&pid, path, nullptr, nullptr, argv, environ) != 0)
      throw std::runtime_error("posix_spawn");
    ::waitpid(pid, nullptr, 0);
  }
  return bench::seconds_since(start) / n * 1e6;
}

double coproc_start_join(int n, coproc::start_method method) {
  return coproc::block_on([](int n, coproc::start_method method) -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    for (int i = 0; i < n; ++i) {
      coproc::process p({.method = method}, noop);
      p.start();
      co_await p.join();
    }
    co_return bench::seconds_since(start) / n * 1e6;
  }(n, method));
}

// One start method: its children per round (the parent small, and holding 1 GiB), its
// Python name and how many Python starts a round makes, and the raw calls it compares with.
struct method_case {
  coproc::start_method method;
  const char* name;
  int n_small, n_big, python_n;
  const char* raw_name;
  double (*raw)(int n);
};

// The ballast of the round being measured: a small process forked from this one drops it.
std::vector<char>* ballast = nullptr;

// The raw fork of a small process, whatever this one's size: what a fork server costs at
// best. A child of this one, its copy of the ballast dropped, forks n in a row.
double raw_fork_small(int n) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe");
  int pid = ::fork();
  if (pid == 0) {
    if (ballast && !ballast->empty()) {
      auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
      auto begin = (reinterpret_cast<std::uintptr_t>(ballast->data()) + page - 1) & ~(page - 1);
      auto end =
          (reinterpret_cast<std::uintptr_t>(ballast->data()) + ballast->size()) & ~(page - 1);
      ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
    }
    double us = raw_fork(n);
    ::_exit(::write(fds[1], &us, sizeof us) == sizeof us ? 0 : 1);
  }
  ::close(fds[1]);
  double us = 0;
  bool read_all = ::read(fds[0], &us, sizeof us) == sizeof us;
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!read_all || status != 0) throw std::runtime_error("the small process's forks failed");
  return us;
}

double raw_spawn_self(int n) { return raw_posix_spawn(n, "/proc/self/exe", exit_at_once); }
double raw_spawn_true(int n) { return raw_posix_spawn(n, "/bin/true", nullptr); }

// forkserver is compared with the raw fork of a small process (the fork server is one).
const std::array methods{
    method_case{coproc::start_method::fork, "fork", 300, 40, 100, "raw fork+waitpid", raw_fork},
    method_case{coproc::start_method::forkserver, "forkserver", 300, 300, 30,
                "raw fork+waitpid, parent small", raw_fork_small},
    method_case{coproc::start_method::spawn, "spawn", 100, 100, 10,
                "raw posix_spawn(/proc/self/exe)+waitpid", raw_spawn_self},
};

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

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // the spawned children start here
  if (argc > 1 && std::strcmp(argv[1], exit_at_once) == 0) return 0;

  std::printf("start+join of a no-op child, sequential, per start method, median of %d interleaved "
              "rounds\n",
              rounds);
  coproc::forkserver_preload(); // not a child's cost (Python's starts in a first round)
  for (int mib : {0, 1024}) {
    std::vector<char> held(static_cast<std::size_t>(mib) << 20);
    std::memset(held.data(), 1, held.size()); // every page resident
    ballast = &held;
    struct figures {
      double raw, ours;
    };
    std::vector<figures> measured;
    double raw_true = 0;
    for (auto& m : methods) {
      int n = mib ? m.n_big : m.n_small;
      // Interleaved, so that both medians see the same machine: its speed drifts by 2x
      // within minutes.
      std::vector<double> raw, ours;
      for (int round = 0; round < rounds; ++round) {
        raw.push_back(m.raw(n));
        ours.push_back(coproc_start_join(n, m.method));
      }
      measured.push_back({bench::median(raw), bench::median(ours)});
      if (m.method == coproc::start_method::spawn)
        raw_true = bench::median_of(rounds, [] { return raw_spawn_true(100); });
    }
    ballast = nullptr;
    std::vector<char>().swap(held); // Python's peer holds its own
    for (std::size_t i = 0; i < methods.size(); ++i) {
      auto& m = methods[i];
      double py = bench::python("process_peer.py", "sequential " + std::to_string(m.python_n) +
                                                       " " + std::to_string(mib ? 3 : 5) + " " +
                                                       m.name + " " + std::to_string(mib));
      std::string name = std::string("process start+join, ") + m.name + ", parent +" +
                         std::to_string(mib) + " MiB";
      bench::row(name, std::string("coproc ") + m.name, measured[i].ours, "us", true);
      bench::row(name, std::string("python ") + m.name, py, "us", true);
      bench::row(name, m.raw_name, measured[i].raw, "us", true);
      if (m.method == coproc::start_method::spawn)
        bench::row(name, "raw posix_spawn(/bin/true)+waitpid", raw_true, "us", true);
      std::printf("  => coproc/raw %.2f, Python/coproc %.1f\n", measured[i].ours / measured[i].raw,
                  py / measured[i].ours);
    }
  }

  std::printf("\n%d children started, then joined concurrently, median of 3 rounds\n",
              concurrent_n);
  int base_fds = count_fds();
  double raw_c = bench::median_of(3, raw_concurrent);
  double ours_c = bench::median_of(3, coproc_concurrent);
  double py_c =
      bench::python("process_peer.py", "concurrent " + std::to_string(concurrent_n) + " 3");
  bench::row("1000 concurrent children", "raw fork+waitpid", raw_c * 1e3, "ms", true);
  bench::row("1000 concurrent children", "coproc", ours_c * 1e3, "ms", true);
  bench::row("1000 concurrent children", "python multiprocessing", py_c * 1e3, "ms", true);
  bench::ratio("vs Python", ours_c, py_c, true);
  std::printf(
      "  peak descriptors during the coproc run: %d (%d before: one pidfd per pending join)\n",
      peak_fds, base_fds);
}
