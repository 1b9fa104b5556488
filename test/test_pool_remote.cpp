// A pool whose workers run elsewhere (coproc/remote_workers.hpp), launched by real engines:
// Slurm's srun on a single-host cluster, Open MPI's mpirun, ssh against an sshd on
// loopback, and workers in network namespaces of their own (test/support/engines.sh).
#include <coproc/errors.hpp>
#include <coproc/pool.hpp>
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <doctest/doctest.h>

#include "../lib/sha256.hpp"
#include "support/checks.hpp"
#include "support/task_traces.hpp"
#include "support/timing.hpp"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <ranges>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::failure_of;
using coproc_test::run;
using coproc_test::traces::alive;
using coproc_test::traces::hang_with_grandchildren;
using coproc_test::traces::numbers_in;
using coproc_test::traces::processes_with_argv0;
using coproc_test::traces::touch_after_go;
using coproc_test::traces::touch_now;
using coproc_test::traces::write_file;

namespace {

const std::string engines_script = std::string(COPROC_SOURCE_DIR) + "/test/support/engines.sh";

// The engines, started once per test process; stopped at exit if this process started
// them (under ctest a fixture test starts and stops them around all cases).
class engines {
public:
  static engines& get() {
    static engines e;
    return e;
  }
  std::string ssh_key, ssh_port;

private:
  engines() {
    bool running = std::filesystem::exists("/tmp/coproc-engines/slurm/slurmd.pid");
    std::string out = shell(engines_script + " start");
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      auto key = line.substr(0, eq), value = line.substr(eq + 1);
      if (key == "SLURM_CONF") ::setenv("SLURM_CONF", value.c_str(), 1);
      if (key == "SSH_KEY") ssh_key = value;
      if (key == "SSH_PORT") ssh_port = value;
    }
    REQUIRE_MESSAGE(!ssh_key.empty(), "engines.sh start printed: " << out);
    owner_ = !running;
  }
  ~engines() {
    if (owner_) (void)std::system((engines_script + " stop >/dev/null 2>&1").c_str());
  }
  static std::string shell(const std::string& command) {
    std::string out;
    FILE* p = ::popen(command.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    int status = ::pclose(p);
    REQUIRE_MESSAGE(status == 0, command << " failed: " << out);
    return out;
  }
  bool owner_ = false;
};

int square(int x) { return x * x; }
int whose_pid(int) { return ::getpid(); }
int fails(int x) {
  if (x == 3) throw std::runtime_error("three is right out");
  return x;
}
// Writes its pid to path, then sleeps for seconds.
int report_then_sleep(std::string path, int seconds) {
  {
    std::ofstream out(path + ".tmp");
    out << ::getpid() << '\n';
  }
  std::filesystem::rename(path + ".tmp", path);
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  return seconds;
}

coproc::awaitable<void> pause(std::chrono::milliseconds d) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor, d);
  co_await t.async_wait(boost::asio::use_awaitable);
}

// (Awaitable: the pool runs on this thread meanwhile.)
coproc::awaitable<int> wait_for_pid_file(std::string path) {
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(path);
    int pid = 0;
    if (in >> pid && pid > 0) co_return pid;
    co_await pause(5ms);
  }
  co_return 0;
}

// Until n workers are connected (at most 30 s): whether they are.
coproc::awaitable<bool> connected(coproc::pool& pool, std::size_t n) {
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (pool.size() != n && std::chrono::steady_clock::now() < deadline) co_await pause(5ms);
  co_return pool.size() == n;
}

// Processes running this test program (other than this one): remote workers left behind.
std::vector<int> workers_left() {
  std::vector<int> out;
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  DIR* dir = ::opendir("/proc");
  while (auto* entry = ::readdir(dir)) {
    int pid = std::atoi(entry->d_name);
    if (pid <= 0 || pid == ::getpid()) continue;
    auto exe = std::filesystem::read_symlink("/proc/" + std::string(entry->d_name) + "/exe", ec);
    if (ec || exe != self) continue;
    std::ifstream stat("/proc/" + std::string(entry->d_name) + "/stat");
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    if (close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z') continue;
    out.push_back(pid);
  }
  ::closedir(dir);
  return out;
}

// Every remote worker gone within a few seconds.
bool no_workers_left() {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (workers_left().empty()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

coproc::pool_options remote(std::vector<std::string> launcher, unsigned processes = 0) {
  coproc::pool_options o;
  o.remote = coproc::remote_workers{.launcher = std::move(launcher),
                                    .processes = processes,
                                    .listen = "127.0.0.1:0",
                                    .heartbeat = 200ms,
                                    .connect_timeout = 20s};
  return o;
}

std::vector<int> one_to(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 1);
  return v;
}

} // namespace

TEST_CASE("remote: SHA-256 and HMAC-SHA-256 match their standards' test vectors") {
  using coproc::detail::to_hex;
  CHECK(to_hex(coproc::detail::sha256("abc")) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(to_hex(coproc::detail::sha256("")) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  // RFC 4231 test case 2.
  CHECK(to_hex(coproc::detail::hmac_sha256("Jefe", "what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST_CASE("remote: srun --ntasks=4 runs a map on four Slurm tasks") {
  engines::get();
  run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=4"}, 4));
    auto items = one_to(1000);
    auto squares = co_await pool.map(square, items);
    for (std::size_t i = 0; i < items.size(); ++i) CHECK(squares[i] == items[i] * items[i]);
    CHECK(co_await connected(pool, 4));
    auto pids = co_await pool.map(whose_pid, one_to(64), 1);
    std::sort(pids.begin(), pids.end());
    pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
    CHECK(pids.size() >= 2);
    CHECK(std::find(pids.begin(), pids.end(), ::getpid()) == pids.end());
    // Errors come back as for local workers.
    auto op = pool.map(fails, one_to(5));
    CHECK_THROWS_WITH_AS(co_await std::move(op), doctest::Contains("three is right out"),
                         coproc::remote_error);
    auto stream = pool.imap(square, one_to(10));
    int n = 0;
    while (auto v = co_await stream.next()) {
      ++n;
      CHECK(*v == n * n);
    }
    CHECK(n == 10);
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: mpirun starts the workers (-x forwards the address and secret)") {
  run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      remote({"mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "2"}, 2));
    auto squares = co_await pool.map(square, one_to(100));
    CHECK(squares[99] == 10000);
    CHECK(co_await pool.apply(square, 7) == 49);
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: a launcher that exits early fails the tasks naming it and quoting stderr") {
  run([]() -> coproc::awaitable<void> {
    auto start = std::chrono::steady_clock::now();
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      remote({"sh", "-c", "echo no nodes for you >&2; exit 3", "launcher"}));
    auto op = pool.apply(square, 2);
    CHECK_THROWS_WITH_AS(
        co_await std::move(op),
        doctest::Contains("exited with status 3, its stderr: \"no nodes for you\""), coproc::error);
    CHECK(std::chrono::steady_clock::now() - start < 10s); // not connect_timeout
    auto again = pool.apply(square, 2);
    CHECK_THROWS_WITH_AS(co_await std::move(again), doctest::Contains("sh -c"), coproc::error);
    pool.terminate();
    co_await pool.join();
  }());
}

TEST_CASE("remote: no worker within connect_timeout fails the tasks naming the launcher") {
  run([]() -> coproc::awaitable<void> {
    auto o = remote({"sh", "-c", "echo waiting >&2; exec sleep 30", "launcher"});
    o.remote->connect_timeout = 500ms;
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    auto op = pool.apply(square, 2);
    CHECK_THROWS_WITH_AS(co_await std::move(op),
                         doctest::Contains("no remote worker connected within 0.5 s"),
                         coproc::error);
    pool.terminate();
    co_await pool.join(); // the launcher was ended
  }());
}

TEST_CASE("remote: a worker started by hand with a wrong secret or address exits 1 and says why") {
  run([]() -> coproc::awaitable<void> {
    // A pool whose launcher starts nothing: the workers below are started by hand.
    auto o = remote({"sh", "-c", "exec sleep 30", "launcher"});
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    // Its address: a worker with the right address but a wrong secret.
    // (The launcher's environment is the only place the address is published; find it in
    // /proc of the launcher.)
    std::string address;
    for (int i = 0; i < 500 && address.empty(); ++i) {
      for (int pid : coproc_test::live_children()) {
        std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
        std::string all((std::istreambuf_iterator<char>(env)), {});
        auto at = all.find("COPROC_REMOTE_ADDRESS=");
        if (at != std::string::npos) address = all.substr(at + 22, all.find('\0', at) - at - 22);
      }
      if (address.empty()) co_await pause(10ms);
    }
    REQUIRE(!address.empty());
    std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    coproc::run_options ro;
    ro.capture_output = true;
    ro.env = std::map<std::string, std::string>{{"COPROC_REMOTE_ADDRESS", address},
                                                {"COPROC_REMOTE_SECRET", "not the secret"}};
    auto wrong = coproc::run({self}, ro);
    auto r = co_await std::move(wrong);
    CHECK(r.returncode == 1);
    CHECK(r.err.find("did not prove the secret") != std::string::npos);
    ro.env = std::map<std::string, std::string>{{"COPROC_REMOTE_ADDRESS", "127.0.0.1:1"},
                                                {"COPROC_REMOTE_SECRET", "x"}};
    auto nowhere = coproc::run({self}, ro);
    r = co_await std::move(nowhere);
    CHECK(r.returncode == 1);
    CHECK(r.err.find("cannot connect to the pool at 127.0.0.1:1") != std::string::npos);
    CHECK(pool.size() == 0);
    pool.terminate();
    co_await pool.join();
  }());
}

namespace {
std::string temp_file(const char* name) {
  static std::string dir = [] {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "coproc-remote-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    return pattern;
  }();
  std::string path = dir + "/" + name;
  std::filesystem::remove(path);
  return path;
}

// A worker that is killed or stopped mid-task: exactly that task fails with worker_lost,
// the rest of the work runs on the other worker.
void lose_a_busy_worker(coproc::pool_options o, int sig, const char* why) {
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    std::string path = temp_file("busy");
    REQUIRE(co_await connected(pool, 2));
    auto busy = pool.apply_async(report_then_sleep, path, 60);
    int pid = co_await wait_for_pid_file(path);
    REQUIRE(pid > 0);
    auto before = co_await pool.map(square, one_to(50), 1);
    CHECK(before[49] == 2500);
    auto start = std::chrono::steady_clock::now();
    ::kill(pid, sig);
    auto get = busy.get();
    CHECK_THROWS_WITH_AS(co_await std::move(get), doctest::Contains(why), coproc::worker_lost);
    CHECK(std::chrono::steady_clock::now() - start < 5s); // a few 200 ms heartbeats
    auto after = co_await pool.map(square, one_to(50));
    CHECK(after[0] == 1);
    CHECK(pool.size() >= 1);
    if (sig == SIGSTOP) ::kill(pid, SIGCONT); // it learns its connection was reset, and exits
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}
} // namespace

TEST_CASE("remote: a SIGKILLed srun worker fails exactly its started task and the pool goes on") {
  engines::get();
  lose_a_busy_worker(remote({"srun", "--ntasks=2"}, 2), SIGKILL, "was lost while running");
}

TEST_CASE("remote: a SIGSTOPped worker misses its heartbeats and is lost") {
  engines::get();
  lose_a_busy_worker(remote({"srun", "--ntasks=2"}, 2), SIGSTOP, "no heartbeat for");
}

TEST_CASE("remote: ssh per_worker relaunches a lost worker") {
  auto& e = engines::get();
  run([&]() -> coproc::awaitable<void> {
    auto o = remote({"ssh", "-p", e.ssh_port, "-i", e.ssh_key, "-o", "StrictHostKeyChecking=no",
                     "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
                     "LogLevel=ERROR", "root@127.0.0.1"},
                    2);
    o.remote->per_worker = true;
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    auto pids = co_await pool.map(whose_pid, one_to(40), 1);
    CHECK(pids[0] != ::getpid());
    CHECK(co_await connected(pool, 2));
    ::kill(pids[0], SIGKILL);
    auto deadline = std::chrono::steady_clock::now() + 20s;
    for (;;) {
      auto now = co_await pool.map(whose_pid, one_to(8), 1);
      bool killed_gone = std::find(now.begin(), now.end(), pids[0]) == now.end();
      if (killed_gone && pool.size() == 2) break;
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      co_await pause(50ms);
    }
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: workers in their own network namespaces and a link taken down mid-task") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    coproc::pool_options o;
    o.remote = coproc::remote_workers{
        .launcher = {"sh", "-c", "ip netns exec cpr-a \"$@\" & ip netns exec cpr-b \"$@\" & wait",
                     "sh"},
        .processes = 2,
        .listen = "10.213.1.1:0",
        .heartbeat = 200ms,
        .connect_timeout = 20s};
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    auto squares = co_await pool.map(square, one_to(200));
    CHECK(squares[199] == 40000);
    CHECK(co_await connected(pool, 2));
    // One long task on each worker; the link of the one in cpr-b goes down.
    std::string a = temp_file("ns-a"), b = temp_file("ns-b");
    auto first = pool.apply_async(report_then_sleep, a, 3);
    int pid_a = co_await wait_for_pid_file(a);
    auto second = pool.apply_async(report_then_sleep, b, 60);
    int pid_b = co_await wait_for_pid_file(b);
    REQUIRE(pid_a > 0);
    REQUIRE(pid_b > 0);
    // Which namespace each is in decides which link to take down.
    std::string link = "cpr-h2";
    {
      auto r = co_await coproc::run({"ip", "netns", "identify", std::to_string(pid_b)},
                                    {.capture_output = true});
      if (r.out.find("cpr-a") != std::string::npos) link = "cpr-h1";
    }
    co_await coproc::check_call({"ip", "link", "set", link, "down"});
    auto lost = second.get();
    CHECK_THROWS_WITH_AS(co_await std::move(lost), doctest::Contains("no heartbeat"),
                         coproc::worker_lost);
    co_await coproc::check_call({"ip", "link", "set", link, "up"});
    if (link == "cpr-h2") {
      CHECK(co_await first.get() == 3); // the other worker's task is unaffected
      auto more = co_await pool.map(square, one_to(20));
      CHECK(more[19] == 400);
    }
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: a peer that sends garbage or a wrong proof gets no task and is logged") {
  run([]() -> coproc::awaitable<void> {
    auto o = remote({"sh", "-c", "exec sleep 30", "launcher"});
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    std::string address;
    for (int i = 0; i < 500 && address.empty(); ++i) {
      for (int pid : coproc_test::live_children()) {
        std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
        std::string all((std::istreambuf_iterator<char>(env)), {});
        auto at = all.find("COPROC_REMOTE_ADDRESS=");
        if (at != std::string::npos) address = all.substr(at + 22, all.find('\0', at) - at - 22);
      }
      if (address.empty()) co_await pause(10ms);
    }
    REQUIRE(!address.empty());
    auto port = address.substr(address.rfind(':') + 1);
    // Garbage: 200 bytes of it; the pool closes the connection.
    auto r = co_await coproc::run(
        {"bash", "-c",
         "exec 3<>/dev/tcp/127.0.0.1/" + port +
             "; head -c 200 /dev/zero | tr '\\0' x >&3; timeout 5 cat <&3 >/dev/null; echo closed"},
        {.capture_output = true});
    CHECK(r.out == "closed\n");
    CHECK(pool.size() == 0);
    pool.terminate();
    co_await pool.join();
  }());
}

TEST_CASE("remote: a pool destroyed mid-task (an exception) ends every worker and srun") {
  engines::get();
  CHECK_THROWS(run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=2"}, 2));
    auto busy = pool.apply_async(report_then_sleep, temp_file("x"), 60);
    co_await pool.map(square, one_to(10));
    throw std::runtime_error("user error");
  }()));
  CHECK(no_workers_left());
}

// ---- task timeouts and cancellation --------------------------------------------------------

namespace {

// Until the condition holds (at most 20 s): whether it did.
template <class F> coproc::awaitable<bool> eventually(F condition) {
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) co_return false;
    co_await pause(5ms);
  }
  co_return true;
}

// x, except that item `slow` hangs.
int hang_on(std::pair<int, int> item) {
  if (item.first == item.second)
    for (;;) ::pause();
  return item.first;
}

std::string fresh_dir(const char* name) {
  std::string dir = temp_file(name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directory(dir);
  return dir;
}

std::string this_host() {
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  return name;
}

} // namespace

TEST_CASE("remote: a task past its timeout is stopped with its grandchildren, the pool goes on") {
  engines::get();
  std::string marker = "coproc-remote-timeout-marker-" + std::to_string(::getpid());
  std::string report = temp_file("timeout-report");
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=2"}, 2));
    REQUIRE(co_await connected(pool, 2));
    std::string other_file = temp_file("timeout-other");
    auto other = pool.apply_async(report_then_sleep, other_file, 2); // unaffected
    REQUIRE(co_await wait_for_pid_file(other_file) > 0);
    auto start = std::chrono::steady_clock::now();
    auto e = co_await failure_of<coproc::task_timeout>(
        pool.apply(coproc::task_options{600ms}, hang_with_grandchildren, marker, report));
    CHECK(std::chrono::steady_clock::now() - start >= 600ms);
    CHECK(e.timeout() == 600ms);
    std::string what = e.what();
    CHECK(what.find("0.6 s") != std::string::npos);
    CHECK(what.find("on host " + this_host()) != std::string::npos);
    auto pids = numbers_in(report);
    REQUIRE(pids.size() == 3); // the grandchildren had started
    CHECK(e.pid() == pids[0]);
    CHECK(what.find(std::to_string(pids[0])) != std::string::npos);
    CHECK(co_await eventually([&] {
      return processes_with_argv0(marker).empty() && !alive(pids[0]) && !alive(pids[1]) &&
             !alive(pids[2]);
    }));
    CHECK(co_await other.get() == 2);
    // The stopped worker's supervisor connected a new runner: two workers again.
    CHECK(co_await connected(pool, 2));
    auto squares = co_await pool.map(square, one_to(100));
    CHECK(squares[99] == 10000);
    pool.close();
    co_await pool.join();
  }());
  CHECK(processes_with_argv0(marker).empty());
  CHECK(no_workers_left());
}

TEST_CASE("remote: each item of a timed chunk has its own clock and only the late one fails") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    auto o = remote({"srun", "--ntasks=2"}, 2);
    o.task_timeout = 800ms; // the pool's default
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    std::vector<std::pair<int, int>> items;
    for (int i = 0; i < 24; ++i) items.emplace_back(i, 5);
    auto results = pool.map_async(hang_on, items, 4);
    auto e = co_await failure_of<coproc::task_timeout>(results.get());
    CHECK(e.timeout() == 800ms);
    // Only item 5 failed: a map of the rest and a second map without the late item run.
    for (auto& item : items) item.second = -1;
    auto all = co_await pool.map(hang_on, items, 4);
    CHECK(all[23] == 23);
    CHECK(co_await pool.apply(coproc::task_options{30s}, square, 9) == 81);
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: a timed map loses no item that had not started to the stopped worker") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=2"}, 2));
    REQUIRE(co_await connected(pool, 2));
    std::vector<std::pair<int, int>> items;
    for (int i = 0; i < 40; ++i) items.emplace_back(i, 0);
    auto results = pool.map_async(coproc::task_options{700ms}, hang_on, items, 10);
    // Items 1..9 shared item 0's frame: they ran (or were retried) elsewhere.
    auto e = co_await failure_of<coproc::task_timeout>(results.get());
    CHECK(std::string(e.what()).find("0.7 s") != std::string::npos);
    items[0].second = -1;
    auto again = co_await pool.map(coproc::task_options{30s}, hang_on, items, 10);
    CHECK(std::accumulate(again.begin(), again.end(), 0) == 39 * 40 / 2);
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: cancel() stops a running task and withdraws a queued one") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=2"}, 2));
    REQUIRE(co_await connected(pool, 2));
    std::string running = fresh_dir("cancel-running"), other = fresh_dir("cancel-other");
    std::string queued = temp_file("cancel-queued");
    auto a = pool.apply_async(touch_after_go, running);
    auto b = pool.apply_async(touch_after_go, other);
    CHECK(co_await eventually([&] {
      return std::filesystem::exists(running + "/started") &&
             std::filesystem::exists(other + "/started");
    }));
    auto c = pool.apply_async(touch_now, queued); // both workers are busy: queued
    CHECK(c.cancel());
    auto pid = numbers_in(running + "/started").at(0);
    CHECK(a.cancel());
    CHECK_FALSE(a.cancel()); // once
    auto get = a.get();
    CHECK_THROWS_WITH_AS(co_await std::move(get), doctest::Contains("Operation canceled"),
                         boost::system::system_error);
    CHECK(co_await eventually([&] { return !alive(pid); }));
    write_file(running + "/go", "go");
    write_file(other + "/go", "go");
    CHECK(co_await b.get() == 1); // the other task is unaffected
    CHECK(co_await connected(pool, 2));
    CHECK(co_await pool.apply(square, 5) == 25);
    // The stopped task's later side effect never happened, nor did the queued task's.
    CHECK_FALSE(std::filesystem::exists(running + "/done"));
    CHECK_FALSE(std::filesystem::exists(queued));
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: cancelling the await of apply stops the task (terminal cancellation)") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=1"}, 1));
    std::string dir = fresh_dir("cancel-await");
    // The await of apply ends once the task has started (and cannot finish: no "go").
    auto started = [&]() -> coproc::awaitable<bool> {
      co_return co_await eventually([&] { return std::filesystem::exists(dir + "/started"); });
    };
    using namespace boost::asio::experimental::awaitable_operators;
    auto which = co_await (pool.apply(touch_after_go, dir) || started());
    CHECK(which.index() == 1);
    auto pid = numbers_in(dir + "/started").at(0);
    CHECK(co_await eventually([&] { return !alive(pid); }));
    write_file(dir + "/go", "go");
    CHECK(co_await pool.apply(square, 4) == 16); // a new runner
    CHECK_FALSE(std::filesystem::exists(dir + "/done"));
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: cancel racing completion: each result is its value or aborted, once") {
  engines::get();
  run([&]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, remote({"srun", "--ntasks=2"}, 2));
    REQUIRE(co_await connected(pool, 2));
    int values = 0, aborted = 0;
    for (int i = 0; i < 200; ++i) {
      auto r = pool.apply_async(square, i);
      if (i % 3 == 0) co_await pause(std::chrono::milliseconds(0));
      bool cancelled = r.cancel();
      try {
        int value = co_await r.get();
        CHECK(value == i * i);
        CHECK_FALSE(cancelled);
        ++values;
      } catch (const boost::system::system_error& e) {
        CHECK(e.code() == boost::asio::error::operation_aborted);
        CHECK(cancelled);
        ++aborted;
      }
    }
    CHECK(values + aborted == 200);
    CHECK(aborted > 0);
    CHECK(co_await pool.apply(square, 3) == 9);
    pool.close();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: a timeout of zero or less is std::invalid_argument") {
  run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    auto bad = remote({"sh", "-c", "exec sleep 30", "launcher"});
    bad.task_timeout = 0ms;
    CHECK_THROWS_WITH_AS(coproc::pool(ex, bad), doctest::Contains("task_timeout must be positive"),
                         std::invalid_argument);
    coproc::pool pool(ex, remote({"sh", "-c", "exec sleep 30", "launcher"}));
    CHECK_THROWS_WITH_AS((void)pool.apply(coproc::task_options{0ms}, square, 1),
                         doctest::Contains("timeout must be positive"), std::invalid_argument);
    CHECK_THROWS_WITH_AS((void)pool.apply_async(coproc::task_options{-1s}, square, 1),
                         doctest::Contains("timeout must be positive"), std::invalid_argument);
    pool.terminate();
    co_await pool.join();
  }());
}

TEST_CASE("remote: a lazy imap pulls an endless input as results come, close lets it finish") {
  engines::get();
  run([]() -> coproc::awaitable<void> {
    auto o = remote({"srun", "--ntasks=2"}, 2);
    o.buffersize = 10;
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    auto pulled = std::make_shared<std::atomic<int>>(0);
    auto counted = std::views::iota(0) | std::views::transform([pulled](int i) {
                     ++*pulled;
                     return i;
                   });
    {
      auto stream = pool.imap(square, counted, 4);
      for (int taken = 1; taken <= 2000; ++taken) {
        CHECK(co_await stream.next() == (taken - 1) * (taken - 1));
        CHECK(*pulled - taken <= 10);
      }
    }
    int at_drop = *pulled;
    CHECK(co_await pool.apply(square, 3) == 9);
    CHECK(*pulled == at_drop); // a destroyed stream pulls no more

    // Opened before close(): the workers stay until it has pulled and answered everything.
    auto finite = std::views::iota(0) | std::views::take_while([](int i) { return i < 500; });
    auto stream = pool.imap_unordered(square, finite, 7);
    pool.close();
    std::vector<int> seen(500, 0);
    while (auto v = co_await stream.next()) {
      int root = 0;
      while (root * root < *v) ++root;
      ++seen.at(static_cast<std::size_t>(root));
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
    CHECK_THROWS_AS(pool.imap(square, std::views::iota(0)), std::logic_error);
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}

TEST_CASE("remote: a lazy imap whose every worker is lost fails its next item instead of waiting") {
  engines::get();
  run([]() -> coproc::awaitable<void> {
    auto o = remote({"srun", "--ntasks=2"}, 2);
    o.buffersize = 10;
    coproc::pool pool(co_await boost::asio::this_coro::executor, o);
    REQUIRE(co_await connected(pool, 2));
    auto stream = pool.imap(square, std::views::iota(0));
    for (int i = 0; i < 100; ++i) CHECK(co_await stream.next() == i * i);
    // Supervisors and runners alike: one srun step, so no worker comes back.
    for (int pid : workers_left()) ::kill(pid, SIGKILL);
    using namespace boost::asio::experimental::awaitable_operators;
    auto drain = [&]() -> coproc::awaitable<std::string> {
      try {
        while (co_await stream.next()) {
        }
        co_return "the stream ended";
      } catch (const coproc::worker_lost&) {
        co_return "worker_lost"; // an item that had started on a killed worker
      } catch (const coproc::error& e) {
        co_return e.what(); // one that had not: no worker is left to run it
      }
    };
    // Answers already on their way may come first; then an item fails.
    auto outcome = co_await (drain() || pause(60s));
    REQUIRE(outcome.index() == 0);
    auto what = std::get<0>(outcome);
    CAPTURE(what);
    CHECK((what == "worker_lost" ||
           what.find("every remote worker was lost and the launcher ended; launcher 'srun "
                     "--ntasks=2") != std::string::npos));
    CHECK(pool.size() == 0);
    pool.terminate();
    co_await pool.join();
  }());
  CHECK(no_workers_left());
}
