// coproc::pool's wave-2 tasks vs Python's multiprocessing.Pool and ProcessPoolExecutor,
// with the raw limit, in the same run: large payloads (apply(echo, 64 MiB) and map over
// 64 x 1 MiB items, GB/s of payload there and back, against two memcpy of it; the
// arguments moved in, the results fed back, and the arguments copied), imap over
// 10 M items with buffersize vs map with the same chunksize (items/s and the parent's
// peak RSS, beside Python's Pool.imap), and coroutine tasks (10 000 tasks awaiting a
// 10 ms timer on 2 workers with concurrency 100, against asyncio in ProcessPoolExecutor
// workers running the same coroutines 100 at a time, aiomultiprocess's model).
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include "common.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cstring>
#include <fstream>
#include <ranges>
#include <sstream>

namespace {

constexpr unsigned processes = 2;
constexpr std::size_t mib = std::size_t(1) << 20;

std::string echo(std::string s) { return s; }
long tiny(long x) { return x + 1; }
coproc::awaitable<int> ten_ms(int i) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor,
                              std::chrono::milliseconds(10));
  co_await t.async_wait(boost::asio::use_awaitable);
  co_return i;
}

template <class F> double with_pool(coproc::pool_options options, F body) {
  return coproc::block_on([&]() -> coproc::awaitable<double> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, options);
    (void)co_await pool.apply(tiny, 1); // workers up
    double r = co_await body(pool);
    co_return r;
  }());
}

// GB/s of payload there and back. Moved: each round's results are the next round's
// arguments (data = co_await pool.apply(echo, std::move(data))), as a program that passes
// on a large value does; else the arguments are lvalues, which the pool copies first.
double coproc_echo_gbs(std::size_t size, std::size_t count, bool moved) {
  return with_pool({.processes = processes}, [&](coproc::pool& pool) -> coproc::awaitable<double> {
    std::vector<std::string> data(count, std::string(size, 'x'));
    std::vector<double> runs;
    for (int r = 0; r < 5; ++r) {
      std::vector<std::string> back;
      auto start = bench::clock::now();
      if (count == 1 && moved) data[0] = co_await pool.apply(echo, std::move(data[0]));
      else if (count == 1) back.push_back(co_await pool.apply(echo, data[0]));
      else if (moved) data = co_await pool.map(echo, std::move(data));
      else back = co_await pool.map(echo, data);
      double s = bench::seconds_since(start);
      if (!moved && back != data) throw std::runtime_error("wrong echo");
      if (data.size() != count || data.back().size() != size || data.back()[size / 2] != 'x')
        throw std::runtime_error("wrong echo");
      runs.push_back(2.0 * double(size * count) / s / 1e9);
    }
    co_return bench::median(runs);
  });
}

double memcpy_gbs(std::size_t size) {
  std::string a(size, 'x'), b(size, '\0'), c(size, '\0');
  return bench::median_of(5, [&] {
    auto start = bench::clock::now();
    std::memcpy(b.data(), a.data(), size);
    std::memcpy(c.data(), b.data(), size);
    double s = bench::seconds_since(start);
    if (c[size - 1] != 'x') throw std::runtime_error("memcpy");
    return 2.0 * double(size) / s / 1e9;
  });
}

// The parent's peak RSS since the last reset, MiB (VmHWM; reset by clear_refs 5).
void reset_peak() { std::ofstream("/proc/self/clear_refs") << "5"; }
double peak_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024;
  return 0;
}

struct stream_figures {
  double rate, peak;
};

stream_figures coproc_imap(long n, std::size_t chunksize, std::size_t buffersize) {
  std::vector<double> rates, peaks;
  for (int r = 0; r < 3; ++r) {
    reset_peak();
    rates.push_back(with_pool({.processes = processes, .buffersize = buffersize},
                              [&](coproc::pool& pool) -> coproc::awaitable<double> {
                                auto start = bench::clock::now();
                                auto stream = pool.imap(tiny, std::views::iota(0L, n), chunksize);
                                long total = 0;
                                while (auto v = co_await stream.next()) total += *v;
                                double s = bench::seconds_since(start);
                                if (total != n * (n + 1) / 2) throw std::runtime_error("imap");
                                co_return double(n) / s;
                              }));
    peaks.push_back(peak_mib());
  }
  return {bench::median(rates), bench::median(peaks)};
}

// What one co_await of an awaitable that is ready at once costs (a coroutine frame and
// Asio's pump), ns: the least next() can cost per item above map's own work.
coproc::awaitable<std::optional<long>> ready_item(long& at) { co_return at++; }
double ready_await_ns() {
  constexpr long n = 10'000'000;
  return bench::median_of(3, [] {
    return coproc::block_on([]() -> coproc::awaitable<double> {
      long at = 0, total = 0;
      auto start = bench::clock::now();
      for (long i = 0; i < n; ++i) total += *co_await ready_item(at);
      double s = bench::seconds_since(start);
      if (total != n * (n - 1) / 2) throw std::runtime_error("ready_item");
      co_return s / double(n) * 1e9;
    }());
  });
}

stream_figures coproc_map(long n, std::size_t chunksize) {
  std::vector<double> rates, peaks;
  for (int r = 0; r < 3; ++r) {
    reset_peak();
    rates.push_back(
        with_pool({.processes = processes}, [&](coproc::pool& pool) -> coproc::awaitable<double> {
          auto start = bench::clock::now();
          auto out = co_await pool.map(tiny, std::views::iota(0L, n), chunksize);
          double s = bench::seconds_since(start);
          if (out.back() != n) throw std::runtime_error("map");
          co_return double(n) / s;
        }));
    peaks.push_back(peak_mib());
  }
  return {bench::median(rates), bench::median(peaks)};
}

double coproc_coroutines_s(int n, unsigned concurrency) {
  return with_pool({.processes = processes, .concurrency = concurrency},
                   [&](coproc::pool& pool) -> coproc::awaitable<double> {
                     std::vector<int> items(static_cast<std::size_t>(n));
                     for (int i = 0; i < n; ++i) items[static_cast<std::size_t>(i)] = i;
                     std::vector<double> runs;
                     for (int r = 0; r < 3; ++r) {
                       auto start = bench::clock::now();
                       auto out = co_await pool.map(ten_ms, items, 1);
                       runs.push_back(bench::seconds_since(start));
                       if (out.back() != n - 1) throw std::runtime_error("coroutines");
                     }
                     co_return bench::median(runs);
                   });
}

std::vector<double> numbers(const std::string& line) {
  std::istringstream in(line);
  std::vector<double> out;
  for (double d; in >> d;) out.push_back(d);
  return out;
}

// The last line the peer prints, as numbers.
std::vector<double> python_numbers(const std::string& args) {
  return numbers(bench::last_line("python3 " COPROC_BENCH_DIR "/pool_tasks_peer.py " + args));
}

} // namespace

int main(int argc, char** argv) {
  // `bench_pool_tasks payloads`: only the large payload rows.
  bool only_payloads = argc > 1 && std::string(argv[1]) == "payloads";
  std::printf("pool tasks: %u workers\n", processes);

  // The streams first, in a process that has not held the payloads yet: the peak RSS of
  // imap is then the program's own, as the Python peer's (a fresh process) is.
  if (!only_payloads) {
    constexpr long n = 10'000'000;
    constexpr std::size_t chunk = 1000, buffer = 100'000;
    auto imap = coproc_imap(n, chunk, buffer);
    auto map = coproc_map(n, chunk);
    double await_ns = ready_await_ns();
    // An imap whose parent did map's work plus that one await per item and nothing else.
    double bound = 1 / (1 / map.rate + await_ns * 1e-9);
    auto py = python_numbers("pool_imap " + std::to_string(n) + " " + std::to_string(chunk));
    bench::row("imap 10M, chunksize 1000, buffersize 1e5", "coproc", imap.rate, "items/s", false);
    bench::row("map 10M, chunksize 1000", "coproc", map.rate, "items/s", false);
    bench::row("imap 10M, chunksize 1000", "python Pool", py.at(0), "items/s", false);
    bench::row("imap 10M, chunksize 1000", "bound: map + 1 await/item", bound, "items/s", false);
    bench::row("imap 10M peak RSS", "coproc", imap.peak, "MiB", true);
    bench::row("map 10M peak RSS", "coproc", map.peak, "MiB", true);
    bench::row("imap 10M peak RSS", "python Pool", py.at(1), "MiB", true);
    bench::ratio("imap with buffersize vs map (same chunksize)", imap.rate, map.rate, false);
    bench::ratio("imap vs python Pool.imap", imap.rate, py.at(0), false);
    std::printf("  => one ready co_await %.1f ns; that bound is %.0f%% of map, imap %.0f%%\n",
                await_ns, 100 * bound / map.rate, 100 * imap.rate / map.rate);
  }

  for (auto [size, count, name] : {std::tuple{64 * mib, std::size_t(1), "apply(echo, 64 MiB)"},
                                   std::tuple{mib, std::size_t(64), "map(echo, 64 x 1 MiB)"}}) {
    double moved = coproc_echo_gbs(size, count, true);
    double copied = coproc_echo_gbs(size, count, false);
    std::string args = std::to_string(size) + " " + std::to_string(count);
    double pool = python_numbers("pool_echo_gbs " + args).at(0);
    double ppe = python_numbers("ppe_echo_gbs " + args).at(0);
    double raw = memcpy_gbs(size * count);
    for (auto [ours, how] : {std::pair{moved, ""}, std::pair{copied, ", arguments copied,"}}) {
      std::string what = std::string(name) + how + " GB/s there+back";
      bench::row(what, "coproc", ours, "GB/s", false);
      bench::row(what, "python Pool", pool, "GB/s", false);
      bench::row(what, "python PPE", ppe, "GB/s", false);
      bench::row(what, "raw 2x memcpy", raw, "GB/s", false);
      bench::ratio(std::string(name) + how + " vs Pool", ours, pool, false);
      bench::ratio(std::string(name) + how + " vs PPE", ours, ppe, false);
      bench::ratio(std::string(name) + how + " vs memcpy", ours, raw, false);
    }
  }

  if (only_payloads) return 0;

  constexpr int tasks = 10'000;
  constexpr unsigned concurrency = 100;
  double ours = coproc_coroutines_s(tasks, concurrency);
  double theirs = python_numbers("ppe_coroutines_s " + std::to_string(tasks) + " " +
                                 std::to_string(concurrency))
                      .at(0);
  std::string what = "10000 coroutine tasks (10 ms timer), concurrency 100";
  bench::row(what, "coproc", ours, "s", true);
  bench::row(what, "asyncio + PPE", theirs, "s", true);
  bench::row(what + " tasks/s", "coproc", tasks / ours, "tasks/s", false);
  bench::row(what + " tasks/s", "asyncio + PPE", tasks / theirs, "tasks/s", false);
  bench::ratio("coroutine tasks vs asyncio + PPE", ours, theirs, true);
  bench::row(what + " ideal", "50 rounds of 10 ms", 0.5, "s", true);
  return 0;
}
