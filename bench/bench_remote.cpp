// coproc::pool with 2 remote workers (pool_options::remote) over loopback TCP and over
// veth links into network namespaces, beside the same pool with 2 local (forked)
// workers, and beside Dask distributed (2 worker processes on loopback TCP) in the same
// run: map throughput with the default chunks (items/s) and the apply round trip (µs).
// The task is x + 1. The veth rows need root (test/support/engines.sh start-netns).
#include <coproc/coproc.hpp>
#include <coproc/main_guard.hpp>
#include <coproc/pool.hpp>

#include "common.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

namespace {

constexpr int map_n = 1'000'000;

int tiny(int x) { return x + 1; }

std::vector<int> items(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}

struct figures {
  double map_rate = 0, apply_us = 0;
};

figures measure(coproc::pool_options options) {
  return coproc::block_on([&]() -> coproc::awaitable<figures> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, options);
    (void)co_await pool.map(tiny, items(1000), 1); // warm: workers up, cost measured
    figures f;
    auto v = items(map_n);
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
      auto start = bench::clock::now();
      auto out = co_await pool.map(tiny, v);
      runs.push_back(map_n / bench::seconds_since(start));
      if (out[map_n - 1] != map_n) throw std::runtime_error("wrong map result");
    }
    f.map_rate = bench::median(runs);
    runs.clear();
    for (int r = 0; r < 5; ++r) {
      constexpr int n = 5000;
      auto start = bench::clock::now();
      for (int i = 0; i < n; ++i) co_await pool.apply(tiny, i);
      runs.push_back(bench::seconds_since(start) / n * 1e6);
    }
    f.apply_us = bench::median(runs);
    pool.close();
    co_await pool.join();
    co_return f;
  }());
}

coproc::pool_options remote(std::vector<std::string> launcher, std::string listen) {
  coproc::pool_options o;
  o.remote = coproc::remote_workers{
      .launcher = std::move(launcher), .processes = 2, .listen = std::move(listen)};
  return o;
}

// Dask is packaged for Debian's Python; its cluster's log lines go to stderr.
double dask(const char* mode) {
  return bench::python("remote_peer.py", std::string(mode) + " 2>/dev/null", "/usr/bin/python3");
}

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // the remote workers are this program
  double load[3] = {};
  if (::getloadavg(load, 3) == 3)
    std::printf("  (load average %.2f %.2f %.2f on %u CPUs)\n", load[0], load[1], load[2],
                coproc::cpu_count());
  const std::string map_name = "remote map 1M ints, default chunks, 2 workers";
  const std::string apply_name = "remote apply round trip, 2 workers";
  auto local = measure({.processes = 2});
  auto loopback = measure(remote({"sh", "-c", "\"$1\" & \"$1\" & wait", "sh"}, "127.0.0.1:0"));
  std::optional<figures> veth;
  std::string engines = COPROC_BENCH_DIR "/../test/support/engines.sh";
  // The namespaces stay if they were there (the remote tests' fixture made them).
  bool had_netns = std::system("ip netns exec cpr-a true >/dev/null 2>&1") == 0;
  if (::geteuid() == 0 && std::system((engines + " start-netns >/dev/null 2>&1").c_str()) == 0) {
    veth = measure(
        remote({"sh", "-c", "ip netns exec cpr-a \"$1\" & ip netns exec cpr-b \"$1\" & wait", "sh"},
               "10.213.1.1:0"));
    if (!had_netns) (void)std::system((engines + " stop-netns >/dev/null 2>&1").c_str());
  }
  double dask_map = dask("map"), dask_apply = dask("apply");
  bench::row(map_name, "coproc local workers", local.map_rate, "items/s", false);
  bench::row(map_name, "coproc remote loopback", loopback.map_rate, "items/s", false);
  if (veth) bench::row(map_name, "coproc remote veth", veth->map_rate, "items/s", false);
  bench::row(map_name, "Dask distributed", dask_map, "items/s", false);
  bench::ratio("remote loopback map vs local (target >= 0.5x)", loopback.map_rate, local.map_rate,
               false);
  if (veth) bench::ratio("remote veth map vs local", veth->map_rate, local.map_rate, false);
  bench::ratio("remote loopback map vs Dask (target >= 10x)", loopback.map_rate, dask_map, false);
  bench::row(apply_name, "coproc local workers", local.apply_us, "us", true);
  bench::row(apply_name, "coproc remote loopback", loopback.apply_us, "us", true);
  if (veth) bench::row(apply_name, "coproc remote veth", veth->apply_us, "us", true);
  bench::row(apply_name, "Dask distributed", dask_apply, "us", true);
  bench::ratio("remote loopback apply vs local (target <= 2x)", loopback.apply_us, local.apply_us,
               true);
  if (veth) bench::ratio("remote veth apply vs local", veth->apply_us, local.apply_us, true);
  bench::ratio("remote loopback apply vs Dask", loopback.apply_us, dask_apply, true);
  return 0;
}
