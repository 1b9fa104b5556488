// Queue throughput, one producer process and one consumer process: small items (int)
// and 64 KiB items, coproc::queue vs Python multiprocessing.Queue vs a raw pipe (one
// write and one read per item). Then pipe ping-pong round trips with an echo process:
// coproc::pipe vs Python Pipe vs two raw pipes and vs a raw SOCK_SEQPACKET socketpair (the
// transport coproc::pipe stands on), with both processes pinned to one CPU and unpinned.
// Every figure is the median of its rounds; the clock starts once the first item arrives
// (the producer runs), so fork costs are not counted.
#include <coproc/coproc.hpp>
#include <coproc/queue.hpp>

#include "common.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

namespace {

constexpr int rounds = 5;
constexpr int small_n = 2'000'000;
constexpr int big_n = 20'000;
constexpr std::size_t big_size = 64 * 1024;
constexpr int pingpong_n = 50'000;
constexpr int python_small_n = 200'000;
constexpr int python_big_n = 4'000;
constexpr int python_pingpong_n = 20'000;

// ---- throughput

double coproc_small() { // M items/s
  coproc::queue<int> q;
  coproc::process producer(
      [](coproc::queue<int> q) -> coproc::awaitable<void> {
        for (int i = 0; i < small_n; ++i) co_await q.put(i);
      },
      q);
  producer.start();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    co_await q.get();
    auto start = bench::clock::now();
    for (int i = 1; i < small_n; ++i)
      if (co_await q.get() != i) throw std::runtime_error("coproc queue: out of order");
    double s = bench::seconds_since(start);
    co_await producer.join();
    co_return (small_n - 1) / s / 1e6;
  }());
}

double coproc_big() { // GB/s
  coproc::queue<std::string> q;
  coproc::process producer(
      [](coproc::queue<std::string> q) -> coproc::awaitable<void> {
        std::string item(big_size, 'x');
        for (int i = 0; i < big_n; ++i) co_await q.put(item);
      },
      q);
  producer.start();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    co_await q.get();
    auto start = bench::clock::now();
    for (int i = 1; i < big_n; ++i)
      if ((co_await q.get()).size() != big_size) throw std::runtime_error("coproc queue: bad item");
    double s = bench::seconds_since(start);
    co_await producer.join();
    co_return (big_n - 1) * double(big_size) / s / 1e9;
  }());
}

void read_fully(int fd, char* buf, std::size_t n) {
  while (n > 0) {
    ssize_t r = ::read(fd, buf, n);
    if (r <= 0) throw std::runtime_error("raw pipe: short read");
    buf += r;
    n -= static_cast<std::size_t>(r);
  }
}

// Items of `size` bytes through a pipe as large as the queue's ring; returns seconds for
// n - 1 items after the first.
double raw_pipe(int n, std::size_t size) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe");
  ::fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(coproc::default_queue_capacity));
  int pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::string item(size, 'x');
    for (int i = 0; i < n; ++i)
      for (std::size_t done = 0; done < size;) {
        ssize_t w = ::write(fds[1], item.data() + done, size - done);
        if (w <= 0) ::_exit(1);
        done += static_cast<std::size_t>(w);
      }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string buf(size, '\0');
  read_fully(fds[0], buf.data(), size);
  auto start = bench::clock::now();
  for (int i = 1; i < n; ++i) read_fully(fds[0], buf.data(), size);
  double s = bench::seconds_since(start);
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return s;
}

// ---- ping-pong

struct pinning {
  cpu_set_t old;
  explicit pinning(bool pin) : active(pin) {
    if (!pin) return;
    ::sched_getaffinity(0, sizeof old, &old);
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &old)) {
        CPU_SET(cpu, &one);
        break;
      }
    ::sched_setaffinity(0, sizeof one, &one); // children forked meanwhile inherit it
  }
  ~pinning() {
    if (active) ::sched_setaffinity(0, sizeof old, &old);
  }
  bool active;
};

double coproc_pingpong(bool pin) { // us per round trip
  pinning scope(pin);
  auto [a, b] = coproc::pipe<int>();
  coproc::process echo(
      [](coproc::connection<int> conn) -> coproc::awaitable<void> {
        for (;;) {
          int v = co_await conn.recv();
          if (v < 0) co_return;
          co_await conn.send(v);
        }
      },
      b);
  echo.start();
  b.close();
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    for (int i = 0; i < 1000; ++i) {
      co_await a.send(i);
      co_await a.recv();
    }
    auto start = bench::clock::now();
    for (int i = 0; i < pingpong_n; ++i) {
      co_await a.send(i);
      if (co_await a.recv() != i) throw std::runtime_error("coproc pipe: wrong echo");
    }
    double s = bench::seconds_since(start);
    co_await a.send(-1);
    co_await echo.join();
    co_return s / pingpong_n * 1e6;
  }());
}

double raw_pingpong(bool pin) {
  pinning scope(pin);
  int there[2], back[2];
  if (::pipe(there) != 0 || ::pipe(back) != 0) throw std::runtime_error("pipe");
  int pid = ::fork();
  if (pid == 0) {
    int v;
    while (::read(there[0], &v, sizeof v) == sizeof v && v >= 0)
      if (::write(back[1], &v, sizeof v) != sizeof v) break;
    ::_exit(0);
  }
  auto trip = [&](int v) {
    if (::write(there[1], &v, sizeof v) != sizeof v) throw std::runtime_error("raw write");
    read_fully(back[0], reinterpret_cast<char*>(&v), sizeof v);
  };
  for (int i = 0; i < 1000; ++i) trip(i);
  auto start = bench::clock::now();
  for (int i = 0; i < pingpong_n; ++i) trip(i);
  double s = bench::seconds_since(start);
  int stop = -1;
  (void)!::write(there[1], &stop, sizeof stop);
  ::waitpid(pid, nullptr, 0);
  for (int fd : {there[0], there[1], back[0], back[1]}) ::close(fd);
  return s / pingpong_n * 1e6;
}

// The transport coproc::pipe stands on, with nothing around it: blocking send and recv on
// an AF_UNIX SOCK_SEQPACKET socketpair. A socket's record goes through an skb (allocated,
// charged to the memory cgroup, freed), a pipe's bytes through a page it keeps, so this is
// the floor under coproc's figure, above the raw pipes'.
double raw_seqpacket_pingpong(bool pin) {
  pinning scope(pin);
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0)
    throw std::runtime_error("socketpair");
  int pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    int v;
    while (::recv(fds[1], &v, sizeof v, 0) == sizeof v && v >= 0)
      if (::send(fds[1], &v, sizeof v, MSG_NOSIGNAL) != sizeof v) break;
    ::_exit(0);
  }
  ::close(fds[1]);
  auto trip = [&](int v) {
    if (::send(fds[0], &v, sizeof v, MSG_NOSIGNAL) != sizeof v ||
        ::recv(fds[0], &v, sizeof v, 0) != sizeof v)
      throw std::runtime_error("raw seqpacket");
  };
  for (int i = 0; i < 1000; ++i) trip(i);
  auto start = bench::clock::now();
  for (int i = 0; i < pingpong_n; ++i) trip(i);
  double s = bench::seconds_since(start);
  int stop = -1;
  (void)!::send(fds[0], &stop, sizeof stop, MSG_NOSIGNAL);
  ::waitpid(pid, nullptr, 0);
  ::close(fds[0]);
  return s / pingpong_n * 1e6;
}

} // namespace

int main() {
  std::printf("queue throughput, 1 producer process -> 1 consumer process, median of %d rounds\n",
              rounds);
  double ours = bench::median_of(rounds, coproc_small);
  double raw =
      bench::median_of(rounds, [] { return (small_n - 1) / raw_pipe(small_n, sizeof(int)) / 1e6; });
  double py = bench::python("queue_peer.py", "small " + std::to_string(python_small_n) + " 3");
  const char* small = "queue: int items, 1 producer -> 1 consumer";
  bench::row(small, "coproc", ours, "M items/s", false);
  bench::row(small, "python mp.Queue", py, "M items/s", false);
  bench::row(small, "raw pipe (write+read per item)", raw, "M items/s", false);
  bench::ratio("vs Python (target >= 30x)", ours, py, false);
  bench::ratio("vs raw pipe", ours, raw, false);

  ours = bench::median_of(rounds, coproc_big);
  raw = bench::median_of(
      rounds, [] { return (big_n - 1) * double(big_size) / raw_pipe(big_n, big_size) / 1e9; });
  py = bench::python("queue_peer.py",
                     "big " + std::to_string(python_big_n) + " 3 " + std::to_string(big_size));
  const char* big = "queue: 64 KiB items, 1 producer -> 1 consumer";
  bench::row(big, "coproc", ours, "GB/s", false);
  bench::row(big, "python mp.Queue", py, "GB/s", false);
  bench::row(big, "raw pipe (1 MiB)", raw, "GB/s", false);
  bench::ratio("vs Python", ours, py, false);
  bench::ratio("vs raw pipe (target >= 8 GB/s)", ours, raw, false);

  std::printf("\npipe ping-pong with an echo process, per round trip, median of %d rounds\n",
              rounds);
  for (bool pin : {true, false}) {
    std::string name = pin ? "pipe ping-pong, pinned to one CPU" : "pipe ping-pong, unpinned";
    ours = bench::median_of(rounds, [pin] { return coproc_pingpong(pin); });
    raw = bench::median_of(rounds, [pin] { return raw_pingpong(pin); });
    double socket = bench::median_of(rounds, [pin] { return raw_seqpacket_pingpong(pin); });
    py = bench::python("queue_peer.py", "pingpong " + std::to_string(python_pingpong_n) + " 3 " +
                                            (pin ? "pinned" : "unpinned"));
    bench::row(name, "coproc", ours, "us", true);
    bench::row(name, "python mp.Pipe", py, "us", true);
    bench::row(name, "raw pipes", raw, "us", true);
    bench::row(name, "raw seqpacket socket", socket, "us", true);
    bench::ratio("vs Python", ours, py, true);
    bench::ratio("vs raw pipes", ours, raw, true);
    bench::ratio("vs raw seqpacket socket (its transport)", ours, socket, true);
  }
}
