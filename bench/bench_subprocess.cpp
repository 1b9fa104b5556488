// Subprocesses: coproc vs Python subprocess / asyncio vs raw posix_spawn + waitpid, in
// the same run.
//   1. sequential spawn+wait of /bin/true (us per spawn)
//   2. 200 and 1000 spawned at once, then all waited (spawns per second; the per-spawn
//      cost at 1000 over the one at 200 shows whether spawning while others run stays
//      linear)
//   3. spawn+wait while 0, 200, 1000 other children are awaited (us per spawn: flat
//      means spawning N children while N run stays linear)
//   4. 64 MiB through cat, input fed while output is read (GB/s)
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include "common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

extern char** environ;

namespace {

constexpr int sequential_n = 200;
constexpr int rounds = 5;
constexpr int cat_mib = 64;
const char* true_path = "/bin/true";

int raw_spawn(const char* path, posix_spawn_file_actions_t* fa = nullptr) {
  char* argv[] = {const_cast<char*>(path), nullptr};
  pid_t pid;
  if (int r = ::posix_spawn(&pid, path, fa, nullptr, argv, environ); r != 0)
    throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(r));
  return pid;
}

double raw_sequential() {
  auto start = bench::clock::now();
  for (int i = 0; i < sequential_n; ++i) ::waitpid(raw_spawn(true_path), nullptr, 0);
  return bench::seconds_since(start) / sequential_n * 1e6;
}

double coproc_sequential() {
  return coproc::block_on([]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    for (int i = 0; i < sequential_n; ++i) co_await coproc::call({true_path});
    co_return bench::seconds_since(start) / sequential_n * 1e6;
  }());
}

double raw_concurrent(int n) {
  auto start = bench::clock::now();
  std::vector<int> pids;
  for (int i = 0; i < n; ++i) pids.push_back(raw_spawn(true_path));
  for (int pid : pids) ::waitpid(pid, nullptr, 0);
  return n / bench::seconds_since(start);
}

double coproc_concurrent(int n) {
  return coproc::block_on([n]() -> coproc::awaitable<double> {
    auto start = bench::clock::now();
    std::vector<coproc::awaitable<int>> calls;
    for (int i = 0; i < n; ++i) calls.push_back(coproc::call({true_path}));
    co_await coproc::gather(std::move(calls));
    co_return n / bench::seconds_since(start);
  }());
}

coproc::awaitable<void> wait_for(std::shared_ptr<coproc::popen> p) { co_await p->wait(); }

// Sequential spawn+wait of /bin/true while `running` other children are being awaited
// on the same io_context (each one's pidfd registered with it). A launcher that
// re-registers the context's descriptors per spawn (Boost.Process 1.81's notify_fork)
// grows with `running`; this must not.
double spawn_while_running(int running) {
  return coproc::block_on([running]() -> coproc::awaitable<double> {
    auto ex = co_await boost::asio::this_coro::executor;
    std::vector<std::shared_ptr<coproc::popen>> sleepers;
    for (int i = 0; i < running; ++i) {
      sleepers.push_back(
          std::make_shared<coproc::popen>(ex, std::vector<std::string>{"sleep", "60"}));
      boost::asio::co_spawn(ex, wait_for(sleepers.back()), boost::asio::detached);
    }
    co_await coproc::call({true_path}); // every waiter has registered by now
    auto start = bench::clock::now();
    for (int i = 0; i < sequential_n; ++i) co_await coproc::call({true_path});
    double us = bench::seconds_since(start) / sequential_n * 1e6;
    for (auto& p : sleepers) p->kill();
    co_return us;
  }());
}

// The kernel's share of that: raw posix_spawn+waitpid with one descriptor open per
// running child (coproc holds a pidfd per awaited child), which every spawn copies
// into the child and closes at exec.
double raw_with_descriptors(int n) {
  std::vector<int> fds;
  for (int i = 0; i < n; ++i) fds.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  double us = raw_sequential();
  for (int fd : fds) ::close(fd);
  return us;
}

std::string payload() {
  std::string data(static_cast<std::size_t>(cat_mib) * 1024 * 1024, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i);
  return data;
}

double coproc_cat(const std::string& data) {
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    std::string input = data; // moved into the call below, as Python passes a reference
    auto start = bench::clock::now();
    auto r = co_await coproc::run({"cat"}, {.input = std::move(input), .out = coproc::stdio::pipe});
    double elapsed = bench::seconds_since(start);
    if (r.out.size() != data.size()) throw std::runtime_error("cat lost bytes");
    co_return data.size() / elapsed / 1e9;
  }());
}

// The OS limit: one poll loop writing and reading non-blocking pipes into a
// preallocated buffer.
double raw_cat(const std::string& data) {
  auto start = bench::clock::now();
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) || ::pipe2(out, O_CLOEXEC)) throw std::runtime_error("pipe2");
  posix_spawn_file_actions_t fa;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  ::posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  int pid = raw_spawn("/bin/cat", &fa);
  ::posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  // The same 1 MiB pipes coproc uses for bulk transfers.
  ::fcntl(in[1], F_SETPIPE_SZ, 1024 * 1024);
  ::fcntl(out[0], F_SETPIPE_SZ, 1024 * 1024);
  ::fcntl(in[1], F_SETFL, O_NONBLOCK);
  ::fcntl(out[0], F_SETFL, O_NONBLOCK);
  std::string result(data.size(), '\0');
  std::size_t written = 0, read = 0;
  int wfd = in[1];
  for (;;) {
    pollfd fds[2] = {{out[0], POLLIN, 0}, {wfd, POLLOUT, 0}};
    ::poll(fds, wfd >= 0 ? 2 : 1, -1);
    if (wfd >= 0 && fds[1].revents) {
      ssize_t n = ::write(wfd, data.data() + written, data.size() - written);
      if (n > 0) written += static_cast<std::size_t>(n);
      if (written == data.size()) {
        ::close(wfd);
        wfd = -1;
      }
    }
    if (fds[0].revents) {
      ssize_t n = ::read(out[0], result.data() + read, result.size() - read);
      if (n > 0) read += static_cast<std::size_t>(n);
      if (n == 0 || read == result.size()) break;
    }
  }
  ::close(out[0]);
  ::waitpid(pid, nullptr, 0);
  return data.size() / bench::seconds_since(start) / 1e9;
}

std::string peer_args(const char* mode, int n) {
  return std::string(mode) + " " + std::to_string(n) + " " + std::to_string(rounds);
}

} // namespace

int main() {
  std::printf("sequential spawn+wait of /bin/true, %d per round, median of %d rounds\n",
              sequential_n, rounds);
  double raw = bench::median_of(rounds, raw_sequential);
  double ours = bench::median_of(rounds, coproc_sequential);
  double py_run = bench::python("subprocess_peer.py", peer_args("run_seq", sequential_n));
  double py_async = bench::python("subprocess_peer.py", peer_args("asyncio_seq", sequential_n));
  const char* seq = "subprocess: sequential spawn+wait /bin/true";
  bench::row(seq, "posix_spawn+waitpid", raw, "us/spawn", true);
  bench::row(seq, "coproc::call", ours, "us/spawn", true);
  bench::row(seq, "python subprocess.run", py_run, "us/spawn", true);
  bench::row(seq, "python asyncio", py_async, "us/spawn", true);
  bench::ratio("sequential vs posix_spawn+waitpid", ours, raw, true);
  bench::ratio("sequential vs python subprocess.run", ours, py_run, true);
  bench::ratio("sequential vs python asyncio", ours, py_async, true);

  double per_spawn[2] = {0, 0};
  int sizes[2] = {200, 1000};
  for (int k = 0; k < 2; ++k) {
    int n = sizes[k];
    std::printf("\n%d spawned at once, then all waited, median of %d rounds\n", n, rounds);
    double raw_c = bench::median_of(rounds, [n] { return raw_concurrent(n); });
    double ours_c = bench::median_of(rounds, [n] { return coproc_concurrent(n); });
    double py_popen = bench::python("subprocess_peer.py", peer_args("popen_conc", n));
    double py_gather = bench::python("subprocess_peer.py", peer_args("asyncio_conc", n));
    std::string name = "subprocess: " + std::to_string(n) + " concurrent /bin/true";
    bench::row(name, "posix_spawn+waitpid", raw_c, "spawns/s", false);
    bench::row(name, "coproc::call + gather", ours_c, "spawns/s", false);
    bench::row(name, "python subprocess.Popen", py_popen, "spawns/s", false);
    bench::row(name, "python asyncio.gather", py_gather, "spawns/s", false);
    bench::ratio(std::to_string(n) + " concurrent vs posix_spawn+waitpid", ours_c, raw_c, false);
    bench::ratio(std::to_string(n) + " concurrent vs python asyncio", ours_c, py_gather, false);
    per_spawn[k] = 1e6 / ours_c;
  }
  std::printf("  linearity: coproc %.1f us/spawn at 1000 concurrent vs %.1f at 200 (%.2fx)\n",
              per_spawn[1], per_spawn[0], per_spawn[1] / per_spawn[0]);

  std::printf("\nsequential spawn+wait of /bin/true while N other children are awaited\n");
  double alone = 0, busiest = 0, raw_alone = 0, raw_busiest = 0;
  for (int running : {0, 200, 1000}) {
    busiest = spawn_while_running(running);
    raw_busiest = raw_with_descriptors(running);
    if (running == 0) alone = busiest, raw_alone = raw_busiest;
    std::string name = "subprocess: spawn+wait while " + std::to_string(running) + " run";
    bench::row(name, "coproc::call", busiest, "us/spawn", true);
    bench::row(name, "raw, as many fds open", raw_busiest, "us/spawn", true);
  }
  std::printf("  => while 1000 run: coproc %.2fx the cost with none running, raw posix_spawn "
              "with 1000 fds open %.2fx (1.00 = linear total)\n",
              busiest / alone, raw_busiest / raw_alone);

  std::printf("\n%d MiB through cat, input written while output is read, median of %d rounds\n",
              cat_mib, rounds);
  auto data = payload();
  double raw_t = bench::median_of(rounds, [&] { return raw_cat(data); });
  double ours_t = bench::median_of(rounds, [&] { return coproc_cat(data); });
  double py_asyncio_t = bench::python("subprocess_peer.py", peer_args("asyncio_cat", cat_mib));
  double py_run_t = bench::python("subprocess_peer.py", peer_args("run_cat", cat_mib));
  const char* cat = "subprocess: 64 MiB through cat";
  bench::row(cat, "poll loop (raw)", raw_t, "GB/s", false);
  bench::row(cat, "coproc::run(input)", ours_t, "GB/s", false);
  bench::row(cat, "python asyncio communicate", py_asyncio_t, "GB/s", false);
  bench::row(cat, "python subprocess.run", py_run_t, "GB/s", false);
  bench::ratio("cat vs raw poll loop", ours_t, raw_t, false);
  bench::ratio("cat vs python asyncio", ours_t, py_asyncio_t, false);
}
