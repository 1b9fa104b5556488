// The real-use samples, run as users run them.
// - http_server (4 io threads, a forkserver pool) under a bounded loopback load: started on
//   an ephemeral port, driven by a fixed number of concurrent clients for a fixed time, fed
//   bad requests, and shut down with SIGTERM while a request is in flight.
// - checksum_tree on a directory it must get right, and interrupted with SIGINT.
#include <coproc/coproc.hpp>
#include <coproc/subprocess.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

namespace {

struct response {
  int status = 0;
  std::string body;
};

net::awaitable<response> get(unsigned short port, std::string target) {
  beast::tcp_stream stream(co_await net::this_coro::executor);
  stream.expires_after(30s);
  co_await stream.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port),
                                net::use_awaitable);
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  co_await http::async_write(stream, req, net::use_awaitable);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  co_await http::async_read(stream, buffer, res, net::use_awaitable);
  co_return response{static_cast<int>(res.result_int()), res.body()};
}

// Sends raw bytes and returns the status line the server answers with.
net::awaitable<std::string> raw_request(unsigned short port, std::string bytes) {
  tcp::socket socket(co_await net::this_coro::executor);
  co_await socket.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port),
                                net::use_awaitable);
  co_await net::async_write(socket, net::buffer(bytes), net::use_awaitable);
  std::string reply;
  co_await net::async_read_until(socket, net::dynamic_buffer(reply), "\r\n",
                                 net::as_tuple(net::use_awaitable));
  co_return reply.substr(0, reply.find("\r\n"));
}

std::vector<int> children_of(int pid) {
  std::vector<int> out;
  std::ifstream children("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) +
                         "/children");
  int child;
  while (children >> child) out.push_back(child);
  return out;
}

// CPU time (utime + stime, in clock ticks) the processes have used so far.
long cpu_ticks(const std::vector<int>& pids) {
  long total = 0;
  for (int pid : pids) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 13; ++i) rest >> field; // state .. cmajflt
    long utime = 0, stime = 0;
    rest >> utime >> stime;
    total += utime + stime;
  }
  return total;
}

// The server, started on an ephemeral port; its port is read from its first line.
struct running_server {
  coproc::popen proc;
  unsigned short port = 0;
};

net::awaitable<running_server> start_server() {
  auto ex = co_await net::this_coro::executor;
  running_server s{
      coproc::popen(ex, {COPROC_HTTP_SERVER, "--serve", "0"}, {.out = coproc::stdio::pipe})};
  std::string line;
  co_await net::async_read_until(s.proc.stdout_pipe(), net::dynamic_buffer(line), "\n",
                                 net::use_awaitable);
  auto colon = line.rfind(':');
  REQUIRE(line.rfind("listening on 127.0.0.1:", 0) == 0);
  s.port = static_cast<unsigned short>(std::stoi(line.substr(colon + 1)));
  co_return s;
}

} // namespace

TEST_CASE("server sample: a saturated pool leaves cheap requests fast and every answer right") {
  coproc::block_on([]() -> net::awaitable<void> {
    auto s = co_await start_server();
    auto deadline = std::chrono::steady_clock::now() + 1500ms;
    int primes_ok = 0, primes_bad = 0;
    std::vector<double> health_ms;

    // Four clients keep the two pool workers busy for a fixed time.
    auto heavy = [&]() -> net::awaitable<void> {
      while (std::chrono::steady_clock::now() < deadline) {
        auto r = co_await get(s.port, "/primes?n=3000000");
        (r.status == 200 && r.body == "primes below 3000000: 216816\n" ? primes_ok : primes_bad)++;
      }
    };
    auto cheap = [&]() -> net::awaitable<void> {
      while (std::chrono::steady_clock::now() < deadline) {
        auto start = std::chrono::steady_clock::now();
        auto r = co_await get(s.port, "/health");
        health_ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                .count());
        CHECK(r.status == 200);
        CHECK(r.body == "ok\n");
        co_await coproc::sleep(10ms);
      }
    };
    std::vector<net::awaitable<void>> load;
    for (int i = 0; i < 4; ++i) load.push_back(heavy());
    load.push_back(cheap());
    co_await coproc::gather(std::move(load));

    CHECK(primes_ok >= 4);
    CHECK(primes_bad == 0);
    REQUIRE(health_ms.size() >= 10);
    std::sort(health_ms.begin(), health_ms.end());
    double median = health_ms[health_ms.size() / 2];
    MESSAGE("health latency while saturated: median " << median << " ms, max " << health_ms.back()
                                                      << " ms over " << health_ms.size()
                                                      << " requests");
    // Generous: a primes request takes tens of ms of CPU; health must not wait for one.
    CHECK(median < 50);

    auto uname = co_await get(s.port, "/uname");
    CHECK(uname.status == 200);
    CHECK(uname.body.rfind("Linux", 0) == 0);

    s.proc.terminate();
    CHECK(co_await s.proc.wait() == 0);
  }());
}

TEST_CASE("server sample: bad requests get a 4xx with a message") {
  coproc::block_on([]() -> net::awaitable<void> {
    auto s = co_await start_server();
    for (auto target :
         {"/primes", "/primes?n=0", "/primes?n=abc", "/primes?n=99999999999", "/primes?n=12x"}) {
      auto r = co_await get(s.port, target);
      CHECK_MESSAGE(r.status == 400, target);
      CHECK(r.body == "n must be an integer from 1 to 50000000\n");
    }
    auto missing = co_await get(s.port, "/nowhere");
    CHECK(missing.status == 404);
    CHECK(missing.body == "no such endpoint: /nowhere\n");
    CHECK(co_await raw_request(s.port,
                               "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") ==
          "HTTP/1.1 405 Method Not Allowed");
    CHECK(co_await raw_request(s.port, "GARBAGE\r\n\r\n") == "HTTP/1.1 400 Bad Request");
    CHECK(co_await raw_request(s.port, "GET / HTTP/1.1\r\nX: " + std::string(20000, 'a') +
                                           "\r\n\r\n") == "HTTP/1.1 400 Bad Request");
    // Still serving after all that.
    CHECK((co_await get(s.port, "/health")).status == 200);
    s.proc.terminate();
    CHECK(co_await s.proc.wait() == 0);
  }());
}

TEST_CASE("server sample: SIGTERM finishes the request in flight and leaves no worker behind") {
  coproc::block_on([]() -> net::awaitable<void> {
    auto s = co_await start_server();
    // The server's one child is its fork server, whose children are the pool's workers.
    auto servers = children_of(s.proc.pid());
    REQUIRE(servers.size() == 1);
    auto workers = children_of(servers[0]);
    CHECK(workers.size() == 2);
    auto ex = co_await net::this_coro::executor;
    response r;
    auto slow = [&]() -> net::awaitable<void> { r = co_await get(s.port, "/primes?n=40000000"); };
    // SIGTERM once the request is in flight: a worker has started computing it.
    auto stop = [&]() -> net::awaitable<void> {
      long idle = cpu_ticks(workers);
      while (cpu_ticks(workers) < idle + 2) co_await coproc::sleep(5ms);
      s.proc.terminate();
    };
    std::vector<net::awaitable<void>> both;
    both.push_back(slow());
    both.push_back(stop());
    co_await coproc::gather(std::move(both));
    CHECK(r.status == 200);
    CHECK(r.body == "primes below 40000000: 2433654\n");
    CHECK(co_await s.proc.wait() == 0);
    // The workers were joined before the server exited, and the fork server exits once its
    // requester is gone; neither is our child, so their end (reaped, not just exited) is
    // polled for.
    auto helpers = workers;
    helpers.push_back(servers[0]);
    auto any_left = [&] {
      return std::any_of(helpers.begin(), helpers.end(), coproc_test::pid_exists);
    };
    auto until = std::chrono::steady_clock::now() + 10s;
    while (any_left() && std::chrono::steady_clock::now() < until) co_await coproc::sleep(5ms);
    for (int pid : helpers) CHECK_FALSE(coproc_test::pid_exists(pid));
    // Nothing listens any more.
    tcp::socket probe(ex);
    auto [ec] =
        co_await probe.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), s.port),
                                     net::as_tuple(net::use_awaitable));
    CHECK(ec == net::error::connection_refused);
  }());
}

TEST_CASE("checksum script: every file counted with plain progress lines when not a tty") {
  auto dir = std::filesystem::temp_directory_path() / ("coproc-tree-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "sub");
  for (int i = 0; i < 40; ++i)
    std::ofstream(dir / (i % 2 ? "sub" : ".") / ("f" + std::to_string(i)))
        << std::string(1000 + i, 'x');
  auto [out, err] = coproc::block_on([&]() -> net::awaitable<std::pair<std::string, std::string>> {
    coproc::popen p(co_await net::this_coro::executor, {COPROC_CHECKSUM_TREE, dir.string()},
                    {.out = coproc::stdio::pipe, .err = coproc::stdio::pipe});
    auto r = co_await p.communicate();
    CHECK(co_await p.wait() == 0);
    co_return r;
  }());
  std::filesystem::remove_all(dir);
  CHECK(err.empty());
  CHECK(out.find("progress: 40/40 files") != std::string::npos);
  CHECK(out.find("40 files, 0.0 MB, tree checksum ") != std::string::npos);
  CHECK(out.find("[count] 40 (exit 0)") != std::string::npos);
  CHECK(out.find("\r") == std::string::npos);
}

// On the single-host Slurm cluster of test/support/engines.sh (started here if it is not
// running, and then stopped again).
TEST_CASE("checksum script: --workers-on 'srun --ntasks=4' runs the pool on Slurm tasks") {
  std::string engines = std::string(COPROC_SOURCE_DIR) + "/test/support/engines.sh";
  bool running = std::filesystem::exists("/tmp/coproc-engines/slurm/slurmd.pid");
  REQUIRE(std::system((engines + " start-slurm >/dev/null").c_str()) == 0);
  ::setenv("SLURM_CONF", "/tmp/coproc-engines/slurm/slurm.conf", 1);
  auto dir = std::filesystem::temp_directory_path() / ("coproc-tree-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "sub");
  for (int i = 0; i < 40; ++i)
    std::ofstream(dir / (i % 2 ? "sub" : ".") / ("f" + std::to_string(i)))
        << std::string(1000 + i, 'x');
  auto outputs = [&](std::vector<std::string> args) {
    return coproc::block_on([&]() -> net::awaitable<std::string> {
      coproc::popen p(co_await net::this_coro::executor, args, {.out = coproc::stdio::pipe});
      auto r = co_await p.communicate();
      CHECK(co_await p.wait() == 0);
      co_return r.first;
    }());
  };
  auto remote = outputs({COPROC_CHECKSUM_TREE, "--workers-on", "srun --ntasks=4", dir.string()});
  auto local = outputs({COPROC_CHECKSUM_TREE, dir.string()});
  std::filesystem::remove_all(dir);
  if (!running) (void)std::system((engines + " stop >/dev/null 2>&1").c_str());
  CHECK(remote.find("with remote workers (srun --ntasks=4)") != std::string::npos);
  auto summary = [](const std::string& out) {
    auto at = out.find("\n40 files, ");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at + 1) - at);
  };
  CHECK(!summary(remote).empty());
  CHECK(summary(remote) == summary(local)); // the same tree checksum
}

TEST_CASE("checksum script: SIGINT kills and reaps its workers and commands and reports partial "
          "results") {
  coproc::block_on([]() -> net::awaitable<void> {
    coproc::popen p(co_await net::this_coro::executor, {COPROC_CHECKSUM_TREE, "/usr"},
                    {.out = coproc::stdio::pipe});
    // Its first line comes once the pool's workers run and SIGINT is handled.
    std::string first;
    co_await net::async_read_until(p.stdout_pipe(), net::dynamic_buffer(first), "workers\n",
                                   net::use_awaitable);
    auto helpers = children_of(p.pid());
    CHECK(helpers.size() >= 2); // the pool's workers, and commands still running
    p.send_signal(SIGINT);
    auto [out, err] = co_await p.communicate();
    out = first + out;
    CHECK(co_await p.wait() == 130);
    CHECK(out.find("interrupted by signal 2 after ") != std::string::npos);
    for (int pid : helpers) CHECK_FALSE(coproc_test::pid_exists(pid));
  }());
}

TEST_CASE("checksum script: a missing directory is a usage error") {
  auto code = coproc::block_on(
      coproc::call({COPROC_CHECKSUM_TREE, "/no/such/dir"}, {.err = coproc::stdio::devnull}));
  CHECK(code == 2);
}
