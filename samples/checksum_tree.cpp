// A script a user would run by hand: checksum every file under a directory with a
// process pool while a few shell commands run concurrently, with a live progress line.
//
//   checksum_tree [--workers-on 'LAUNCHER'] [DIR]     (default /usr/include/boost/asio)
//
// --workers-on runs the pool's workers on other hosts, started by LAUNCHER (split at
// spaces), e.g. --workers-on 'srun --ntasks=4' inside a Slurm allocation, or
// 'mpirun -np 4': each host runs this same program (coproc/remote_workers.hpp).
//
// On a terminal the progress line (done/total, rate, ETA) is redrawn in place; when
// stdout is not a terminal, plain lines are printed at each quarter instead. Ctrl-C
// (SIGINT) or SIGTERM cancels cleanly: the pool's workers and the running commands are
// killed and reaped, the partial result is reported, and the exit status is 130.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>
#include <coproc/subprocess.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <unistd.h>

#include <cinttypes>
#include <cstring>
#include <optional>
#include <sstream>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

namespace fs = std::filesystem;
namespace net = boost::asio;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// Runs in a pool worker: {path, size, 64-bit FNV-1a of the contents}. An unreadable
// file hashes as empty, so one permission error does not stop the run.
std::tuple<std::string, std::uint64_t, std::uint64_t> checksum_file(std::string path) {
  std::uint64_t hash = 1469598103934665603ull, size = 0;
  std::ifstream in(path, std::ios::binary);
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    for (std::streamsize i = 0; i < in.gcount(); ++i)
      hash = (hash ^ static_cast<unsigned char>(buf[i])) * 1099511628211ull;
    size += static_cast<std::uint64_t>(in.gcount());
  }
  return {std::move(path), size, hash};
}

struct progress {
  std::size_t total = 0, done = 0;
  std::uint64_t bytes = 0, tree_hash = 0;
  clock_type::time_point start = clock_type::now(), last_draw{};
  int quarter = 0;
  bool tty = ::isatty(1) != 0;

  void update(bool force = false) {
    auto now = clock_type::now();
    double elapsed = std::chrono::duration<double>(now - start).count();
    double rate = elapsed > 0 ? done / elapsed : 0;
    double eta = rate > 0 ? (total - done) / rate : 0;
    if (tty) {
      if (!force && now - last_draw < 100ms) return;
      last_draw = now;
      std::printf("\r[%zu/%zu] %3.0f%%  %7.0f files/s  ETA %5.1fs ", done, total,
                  total ? 100.0 * done / total : 100.0, rate, eta);
    } else {
      int q = total ? static_cast<int>(4 * done / total) : 4;
      if (q <= quarter && !force) return;
      quarter = q;
      std::printf("progress: %zu/%zu files, %.0f files/s, ETA %.1fs\n", done, total, rate, eta);
    }
    std::fflush(stdout);
  }
};

// Lists regular files, yielding to the loop now and then so Ctrl-C is seen at once.
net::awaitable<std::vector<std::string>> list_files(const fs::path& root) {
  std::vector<std::string> files;
  auto ex = co_await net::this_coro::executor;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec),
       end;
       it != end; it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) files.push_back(it->path().string());
    if (files.size() % 512 == 0) co_await net::post(ex, net::use_awaitable);
  }
  co_return files;
}

net::awaitable<void> checksum_all(coproc::pool& pool, const fs::path& root, progress& p) {
  auto files = co_await list_files(root);
  p.total = files.size();
  p.start = clock_type::now();
  auto results = pool.imap_unordered(checksum_file, files, 16);
  while (auto r = co_await results.next()) {
    auto& [path, size, hash] = *r;
    p.done += 1;
    p.bytes += size;
    p.tree_hash ^= hash * 31 + std::hash<std::string>{}(path);
    p.update();
  }
  p.update(true);
  if (p.tty) std::printf("\n");
}

// A command whose output is printed, prefixed, when it ends.
net::awaitable<void> command(std::string label, std::vector<std::string> args) {
  auto r = co_await coproc::run(std::move(args), {.capture_output = true});
  std::string out = r.out.empty() ? r.err : r.out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  std::printf("%s[%s] %s (exit %d)\n", ::isatty(1) ? "\r" : "", label.c_str(), out.c_str(),
              r.returncode);
  std::fflush(stdout);
}

net::awaitable<void> work(coproc::pool& pool, fs::path root, progress& p) {
  std::vector<net::awaitable<void>> jobs;
  jobs.push_back(checksum_all(pool, root, p));
  jobs.push_back(command("du", {"du", "-sh", root.string()}));
  jobs.push_back(command("count", {"sh", "-c", "find \"$0\" -type f | wc -l", root.string()}));
  jobs.push_back(command("kernel", {"uname", "-sr"}));
  co_await coproc::gather(std::move(jobs));
}

net::awaitable<int> main_task(fs::path root, std::optional<std::string> workers_on) {
  using namespace net::experimental::awaitable_operators;
  auto ex = co_await net::this_coro::executor;
  net::signal_set signals(ex, SIGINT, SIGTERM);
  coproc::pool_options options;
  if (workers_on) {
    std::istringstream words(*workers_on);
    coproc::remote_workers remote;
    for (std::string w; words >> w;) remote.launcher.push_back(w);
    options.remote = std::move(remote);
  }
  coproc::pool pool(ex, std::move(options));
  progress p;
  if (workers_on)
    std::printf("checksumming %s with remote workers (%s)\n", root.c_str(), workers_on->c_str());
  else std::printf("checksumming %s with %zu workers\n", root.c_str(), pool.size());
  std::fflush(stdout);

  // Whichever ends first: the work, or a signal. A signal cancels the work, which kills
  // and reaps the commands it is running; the pool's workers are killed too.
  auto stop = [&]() -> net::awaitable<int> {
    int sig = co_await signals.async_wait(net::use_awaitable);
    pool.terminate();
    co_return sig;
  };
  auto first = co_await (work(pool, root, p) || stop());
  if (first.index() == 0) {
    pool.close();
    co_await pool.join();
    std::printf("%zu files, %.1f MB, tree checksum %016" PRIx64 "\n", p.done, p.bytes / 1e6,
                p.tree_hash);
    co_return 0;
  }
  co_await pool.join();
  std::printf(
      "%sinterrupted by signal %d after %zu of %zu files (%.1f MB); partial checksum %016" PRIx64
      "\n",
      p.tty ? "\n" : "", std::get<1>(first), p.done, p.total, p.bytes / 1e6, p.tree_hash);
  co_return 130;
}

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // a remote worker becomes one here
  std::optional<std::string> workers_on;
  int first = 1;
  if (argc > 2 && std::strcmp(argv[1], "--workers-on") == 0) {
    workers_on = argv[2];
    first = 3;
  }
  fs::path root = argc > first ? argv[first] : "/usr/include/boost/asio";
  if (argc > first + 1 || !fs::is_directory(root) || (workers_on && workers_on->empty())) {
    std::fprintf(stderr,
                 "usage: checksum_tree [--workers-on 'LAUNCHER'] [DIR]  (%s is not a "
                 "directory)\n",
                 root.c_str());
    return 2;
  }
  return coproc::block_on(main_task(root, workers_on));
}
