// coproc::pool vs Python's multiprocessing.Pool and ProcessPoolExecutor (driven by
// asyncio), with the raw OS limit (a hand-written socketpair to one forked child), in the
// same run: apply round trip (also pinned to one CPU; beside the raw limit, the same round
// trip through a bare Asio coroutine, the floor of any awaitable), apply_async throughput, map over
// 1 M ints with chunksize 1 and the default, a 1 ms timer's lag on the parent's loop
// while the pool is saturated, and pool start time (until the workers answer) with a
// small and a 512 MiB parent, for start_method fork and spawn.
// Every pool has 2 workers; the task is x + 1.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include "common.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace {

constexpr unsigned processes = 2;
constexpr int map_n = 1'000'000;
constexpr int async_n = 50'000;

int tiny(int x) { return x + 1; }

std::vector<int> items(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

template <class F> double with_pool(F body) {
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, processes);
    (void)co_await pool.map(tiny, items(1000), 1); // warm: workers up, cost measured
    double r = co_await body(pool);
    co_return r;
  }());
}

double coproc_apply_us() {
  return with_pool([](coproc::pool& pool) -> coproc::awaitable<double> {
    constexpr int n = 20000;
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
      auto start = bench::clock::now();
      for (int i = 0; i < n; ++i) co_await pool.apply(tiny, i);
      runs.push_back(bench::seconds_since(start) / n * 1e6);
    }
    co_return bench::median(runs);
  });
}

double coproc_apply_async_rate() {
  return with_pool([](coproc::pool& pool) -> coproc::awaitable<double> {
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
      auto start = bench::clock::now();
      std::vector<coproc::async_result<int>> results;
      results.reserve(async_n);
      for (int i = 0; i < async_n; ++i) results.push_back(pool.apply_async(tiny, i));
      for (auto& res : results) co_await res.get();
      runs.push_back(async_n / bench::seconds_since(start));
    }
    co_return bench::median(runs);
  });
}

double coproc_map_rate(std::size_t chunksize) {
  return with_pool([chunksize](coproc::pool& pool) -> coproc::awaitable<double> {
    auto v = items(map_n);
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
      auto start = bench::clock::now();
      auto out = co_await pool.map(tiny, v, chunksize);
      runs.push_back(map_n / bench::seconds_since(start));
      if (out[map_n - 1] != map_n) throw std::runtime_error("wrong map result");
    }
    co_return bench::median(runs);
  });
}

// The lag of a 1 ms periodic timer while map(tiny, 1M, chunksize 1) runs: {p50, p99} in ms.
std::pair<double, double> coproc_lag_ms() {
  std::vector<double> lags;
  with_pool([&](coproc::pool& pool) -> coproc::awaitable<double> {
    auto ex = co_await boost::asio::this_coro::executor;
    auto mapped = pool.map_async(tiny, items(map_n), 1);
    while (!mapped.ready()) {
      auto due = bench::clock::now() + std::chrono::milliseconds(1);
      boost::asio::steady_timer t(ex, due);
      co_await t.async_wait(boost::asio::use_awaitable);
      lags.push_back(std::chrono::duration<double, std::milli>(bench::clock::now() - due).count());
    }
    co_await mapped.get();
    co_return 0.0;
  });
  std::sort(lags.begin(), lags.end());
  return {lags[lags.size() / 2], lags[std::min(lags.size() - 1, lags.size() * 99 / 100)]};
}

// Pool start with 2 workers until both have answered a task, median ms.
double coproc_start_ms(coproc::start_method method) {
  std::vector<double> runs;
  for (int r = 0; r < 7; ++r) {
    boost::asio::io_context ctx;
    auto start = bench::clock::now();
    {
      coproc::pool pool(ctx.get_executor(), {.processes = processes, .method = method});
      auto answered = pool.map_async(tiny, items(2), 1);
      while (!answered.ready()) ctx.run_one();
      runs.push_back(bench::seconds_since(start) * 1e3);
    }
    ctx.run();
  }
  return bench::median(runs);
}

// ---- the raw limit: one forked child behind a socketpair, no framing ----

template <class Child> int fork_child(int sv[2], Child child) {
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  int pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    child(sv[1]);
    ::_exit(0);
  }
  ::close(sv[1]);
  return pid;
}

bool read_full(int fd, void* p, std::size_t n) {
  auto* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
void write_full(int fd, const void* p, std::size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n) {
    ssize_t r = ::write(fd, c, n);
    if (r <= 0) return;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
}

// The round trips' child: reads an int, answers tiny(int), until the socket closes.
void answer_ints(int fd) {
  int x;
  while (read_full(fd, &x, sizeof x)) {
    x = tiny(x);
    write_full(fd, &x, sizeof x);
  }
}

double raw_round_trip_us() {
  int sv[2];
  int pid = fork_child(sv, answer_ints);
  std::vector<double> runs;
  for (int r = 0; r < 5; ++r) {
    constexpr int n = 20000;
    auto start = bench::clock::now();
    for (int i = 0; i < n; ++i) {
      int x = i;
      write_full(sv[0], &x, sizeof x);
      read_full(sv[0], &x, sizeof x);
    }
    runs.push_back(bench::seconds_since(start) / n * 1e6);
  }
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
  return bench::median(runs);
}

// The event loop's own floor: the same child, answered through one Asio coroutine on an
// io_context (co_await async_write, then async_read), with no pool, framing or encoding.
// A pool whose every await is an Asio coroutine cannot beat it.
double bare_asio_round_trip_us() {
  int sv[2];
  int pid = fork_child(sv, answer_ints);
  boost::asio::io_context ctx(1);
  boost::asio::local::stream_protocol::socket socket(ctx, boost::asio::local::stream_protocol(),
                                                     sv[0]);
  std::vector<double> runs;
  boost::asio::co_spawn(
      ctx,
      [&]() -> coproc::awaitable<void> {
        for (int r = 0; r < 5; ++r) {
          constexpr int n = 20000;
          auto start = bench::clock::now();
          for (int i = 0; i < n; ++i) {
            int x = i;
            co_await boost::asio::async_write(socket, boost::asio::buffer(&x, sizeof x),
                                              boost::asio::use_awaitable);
            co_await boost::asio::async_read(socket, boost::asio::buffer(&x, sizeof x),
                                             boost::asio::use_awaitable);
            if (x != i + 1) throw std::runtime_error("wrong bare asio answer");
          }
          runs.push_back(bench::seconds_since(start) / n * 1e6);
        }
        socket.close();
      },
      [](std::exception_ptr e) {
        if (e) std::rethrow_exception(e);
      });
  ctx.run();
  ::waitpid(pid, nullptr, 0);
  return bench::median(runs);
}

// 1 M ints through one child in blocks of 4096, a writer thread and a reader.
double raw_rate() {
  constexpr std::size_t block = 4096;
  int sv[2];
  int pid = fork_child(sv, [](int fd) {
    std::vector<int> buf(block);
    while (read_full(fd, buf.data(), block * sizeof(int))) {
      for (auto& x : buf) x = tiny(x);
      write_full(fd, buf.data(), block * sizeof(int));
    }
  });
  auto v = items(map_n / int(block) * int(block));
  std::vector<int> out(v.size());
  std::vector<double> runs;
  for (int r = 0; r < 5; ++r) {
    auto start = bench::clock::now();
    std::thread writer([&] { write_full(sv[0], v.data(), v.size() * sizeof(int)); });
    read_full(sv[0], out.data(), out.size() * sizeof(int));
    writer.join();
    runs.push_back(double(v.size()) / bench::seconds_since(start));
  }
  ::close(sv[0]);
  ::waitpid(pid, nullptr, 0);
  return bench::median(runs);
}

double raw_fork_ms() {
  std::vector<double> runs;
  for (int r = 0; r < 7; ++r) {
    auto start = bench::clock::now();
    int pids[processes];
    for (auto& pid : pids)
      if ((pid = ::fork()) == 0) ::_exit(0);
    runs.push_back(bench::seconds_since(start) * 1e3);
    for (int pid : pids) ::waitpid(pid, nullptr, 0);
  }
  return bench::median(runs);
}

void pin_to_cpu0(bool on) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (on) CPU_SET(0, &set);
  else
    for (unsigned c = 0; c < coproc::cpu_count(); ++c) CPU_SET(c, &set);
  ::sched_setaffinity(0, sizeof set, &set);
}

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // the spawn pools' workers start here
  std::printf("pool benchmarks, %u workers, task x + 1\n", processes);

  for (bool pinned : {false, true}) {
    std::string name = std::string("apply round trip") + (pinned ? ", pinned to 1 CPU" : "");
    pin_to_cpu0(pinned);
    double ours = coproc_apply_us();
    double raw = raw_round_trip_us();
    double bare = bare_asio_round_trip_us();
    pin_to_cpu0(false);
    double py =
        bench::python("pool_peer.py", std::string("pool_apply_us ") + (pinned ? "pinned" : "free"));
    double ppe =
        bench::python("pool_peer.py", std::string("ppe_apply_us ") + (pinned ? "pinned" : "free"));
    bench::row(name, "coproc", ours, "us", true);
    bench::row(name, "python Pool", py, "us", true);
    bench::row(name, "python PPE+asyncio", ppe, "us", true);
    bench::row(name, "raw socketpair", raw, "us", true);
    bench::row(name, "bare Asio coroutine", bare, "us", true);
    bench::ratio(name + " vs Pool", ours, py, true);
    bench::ratio(name + " vs PPE", ours, ppe, true);
    bench::ratio(name + " vs raw socketpair", ours, raw, true);
    bench::ratio(name + " vs bare Asio coroutine", ours, bare, true);
    std::printf("  => %s: bare Asio coroutine %.2fx the raw socketpair\n", name.c_str(),
                bare / raw);
  }

  {
    std::string name = "apply_async throughput, 50k tasks";
    double ours = coproc_apply_async_rate();
    double py = bench::python("pool_peer.py", "pool_apply_async_rate 50000");
    double ppe = bench::python("pool_peer.py", "ppe_apply_async_rate 10000");
    double raw = raw_rate();
    bench::row(name, "coproc", ours, "tasks/s", false);
    bench::row(name, "python Pool", py, "tasks/s", false);
    bench::row(name, "python PPE+asyncio (10k)", ppe, "tasks/s", false);
    bench::row(name, "raw socketpair, batched", raw, "items/s", false);
    bench::ratio(name + " vs Pool", ours, py, false);
    bench::ratio(name + " vs PPE", ours, ppe, false);
  }

  double raw_items = raw_rate();
  for (std::size_t chunksize : {std::size_t{1}, std::size_t{0}}) {
    std::string name = chunksize ? "map 1M ints, chunksize 1" : "map 1M ints, default chunksize";
    double ours = coproc_map_rate(chunksize);
    // Python with chunksize 1 is slow: fewer items, same unit.
    double py = bench::python("pool_peer.py",
                              chunksize ? "pool_map_rate 50000 1" : "pool_map_rate 1000000 0");
    double ppe = bench::python("pool_peer.py",
                               chunksize ? "ppe_map_rate 10000 1" : "ppe_map_rate 1000000 0");
    bench::row(name, "coproc", ours, "items/s", false);
    bench::row(name, chunksize ? "python Pool (50k)" : "python Pool", py, "items/s", false);
    bench::row(name, chunksize ? "python PPE+asyncio (10k)" : "python PPE+asyncio", ppe, "items/s",
               false);
    bench::row(name, "raw socketpair, batched", raw_items, "items/s", false);
    bench::ratio(name + " vs Pool", ours, py, false);
    bench::ratio(name + " vs PPE", ours, ppe, false);
  }

  {
    auto [p50, p99] = coproc_lag_ms();
    double py50 = bench::python("pool_peer.py", "pool_lag_ms 100000 p50");
    double py99 = bench::python("pool_peer.py", "pool_lag_ms 100000 p99");
    bench::row("1 ms timer lag p50, map chunksize 1", "coproc (1M items)", p50, "ms", true);
    bench::row("1 ms timer lag p50, map chunksize 1", "python Pool+asyncio (100k)", py50, "ms",
               true);
    bench::row("1 ms timer lag p99, map chunksize 1", "coproc (1M items)", p99, "ms", true);
    bench::row("1 ms timer lag p99, map chunksize 1", "python Pool+asyncio (100k)", py99, "ms",
               true);
    bench::ratio("timer lag p99 vs Pool", p99, py99, true);
  }

  for (int mib : {0, 512}) {
    std::vector<char> ballast(static_cast<std::size_t>(mib) << 20);
    std::memset(ballast.data(), 1, ballast.size());
    std::string name = "pool(2) start, parent +" + std::to_string(mib) + " MiB";
    double forked = coproc_start_ms(coproc::start_method::fork);
    double spawned = coproc_start_ms(coproc::start_method::spawn);
    double raw = raw_fork_ms();
    double py = bench::python("pool_peer.py", "pool_start_ms " + std::to_string(mib));
    bench::row(name, "coproc fork", forked, "ms", true);
    bench::row(name, "coproc spawn", spawned, "ms", true);
    bench::row(name, "python Pool (fork)", py, "ms", true);
    bench::row(name, "raw fork x2", raw, "ms", true);
    bench::ratio(name + ", fork vs Pool", forked, py, true);
    bench::ratio(name + ", spawn vs Pool", spawned, py, true);
  }
}
