// An HTTP/1.1 server (Boost.Beast) that embeds coproc: CPU-heavy requests go to a
// process pool, a command runs through coproc::run, and every other request keeps being
// served meanwhile, on one io_context run by 4 threads.
//
// Threads and fork do not mix (a lock another thread holds at the fork stays held forever
// in the child), so the pool's workers are forked by coproc's fork server
// (start_method::forkserver, started before the io threads by forkserver_preload), and
// main begins with coproc::main_guard, where the server's fresh image starts. Commands are
// started by posix_spawn, which is safe from any thread. Each connection runs on a strand
// of its own; the listener and the shutdown on another; the list of open connections is
// shared between them under a mutex.
//
//   http_server                 demo: serve on an ephemeral port, send itself a few
//                               requests, print the answers, shut down as on SIGTERM
//   http_server --serve [PORT]  serve on 127.0.0.1:PORT (0: any free port) until
//                               SIGINT/SIGTERM; prints "listening on 127.0.0.1:<port>"
//
// Endpoints: GET /health (cheap), GET /primes?n=N (primes below N, counted in the pool),
// GET /uname (`uname -a`). Anything else is a 4xx with a message, never a crash.
// Shutdown on SIGINT/SIGTERM: stop accepting, let in-flight requests finish, close idle
// connections, close and join the pool, exit 0 — no orphaned worker.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>
#include <coproc/subprocess.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <charconv>
#include <csignal>
#include <cstdio>
#include <exception>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

namespace {

constexpr auto use_tuple = net::as_tuple(net::use_awaitable);
constexpr long max_n = 50'000'000;
constexpr int io_threads = 4;

// Runs in a pool worker: the number of primes below n (sieve of Eratosthenes).
long count_primes(long n) {
  if (n < 3) return 0;
  std::vector<bool> composite(static_cast<std::size_t>(n), false);
  long count = 0;
  for (long i = 2; i < n; ++i) {
    if (composite[i]) continue;
    ++count;
    for (long j = i * i; j < n; j += i) composite[j] = true;
  }
  return count;
}

struct reply {
  http::status status;
  std::string body;
};

// The query parameter `name` of a target like "/primes?n=10".
std::optional<std::string_view> query_param(std::string_view target, std::string_view name) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  auto query = target.substr(q + 1);
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

class server {
public:
  // strand: where the listener, the shutdown and the drain timer run (the caller's
  // executor); io: the threaded io_context's executor, for the pool and the connections.
  server(net::any_io_executor strand, net::any_io_executor io, unsigned short port)
      : io_(io), acceptor_(strand, {net::ip::make_address("127.0.0.1"), port}), pool_(io, 2),
        drained_(strand, net::steady_timer::time_point::max()) {}

  unsigned short port() const { return acceptor_.local_endpoint().port(); }

  net::awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(net::make_strand(io_), use_tuple);
      if (ec) co_return; // the acceptor was closed: shutting down
      auto conn = std::make_shared<connection>(std::move(socket));
      {
        // Listed before it runs, so a shutdown after this accept sees it; one accepted as
        // the shutdown began is closed unserved (the shutdown would not wait for it).
        std::lock_guard lock(mutex_);
        if (stopping_) co_return;
        connections_.insert(conn);
      }
      net::co_spawn(conn->stream.get_executor(), session(conn), net::detached);
    }
  }

  // Stop accepting, finish what is in flight, then close and join the pool. Runs on the
  // listener's strand, where the drain timer's cancel is posted: it cannot come between
  // the check below and the wait.
  net::awaitable<void> shutdown() {
    beast::error_code ignored;
    acceptor_.close(ignored);
    std::set<std::shared_ptr<connection>> open;
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      open = connections_;
    }
    // A connection's socket is its strand's: idle ones are closed there.
    for (auto& c : open)
      net::post(c->stream.get_executor(), [c] {
        beast::error_code ignored;
        if (!c->busy) c->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      });
    if (!open.empty()) co_await drained_.async_wait(use_tuple);
    pool_.close();
    co_await pool_.join();
  }

private:
  struct connection {
    explicit connection(tcp::socket socket) : stream(std::move(socket)) {}
    beast::tcp_stream stream;
    bool busy = false; // on the connection's strand only
  };

  bool stopping() {
    std::lock_guard lock(mutex_);
    return stopping_;
  }

  net::awaitable<void> session(std::shared_ptr<connection> conn) {
    beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      conn->stream.expires_after(30s);
      auto [ec, bytes] = co_await http::async_read(conn->stream, buffer, req, use_tuple);
      if (ec) {
        // A request that does not parse gets a 400 before the connection closes.
        if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
            ec != http::error::end_of_stream) {
          reply bad{http::status::bad_request, "malformed request: " + ec.message() + "\n"};
          co_await send(*conn, 11, false, std::move(bad));
        }
        break;
      }
      conn->busy = true;
      auto answer = co_await handle(req);
      bool keep_alive = req.keep_alive() && !stopping();
      bool sent = co_await send(*conn, req.version(), keep_alive, std::move(answer));
      conn->busy = false;
      if (!sent || !keep_alive) break;
    }
    beast::error_code ignored;
    conn->stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    bool last = false;
    {
      std::lock_guard lock(mutex_);
      connections_.erase(conn);
      last = stopping_ && connections_.empty();
    }
    // Once posted, the server may be gone as soon as the drain is seen: nothing after.
    if (last) net::post(drained_.get_executor(), [this] { drained_.cancel(); });
  }

  net::awaitable<bool> send(connection& conn, unsigned version, bool keep_alive, reply r) {
    http::response<http::string_body> res{r.status, version};
    res.set(http::field::server, "coproc-sample");
    res.set(http::field::content_type, "text/plain");
    res.keep_alive(keep_alive);
    res.body() = std::move(r.body);
    res.prepare_payload();
    auto [ec, n] = co_await http::async_write(conn.stream, res, use_tuple);
    co_return !ec;
  }

  net::awaitable<reply> handle(const http::request<http::string_body>& req) {
    std::string_view target(req.target().data(), req.target().size());
    auto path = target.substr(0, target.find('?'));
    if (req.method() != http::verb::get)
      co_return reply{http::status::method_not_allowed, "only GET is served\n"};
    if (path == "/health") co_return reply{http::status::ok, "ok\n"};
    if (path == "/primes") {
      auto text = query_param(target, "n");
      long n = 0;
      auto [end, err] = text ? std::from_chars(text->data(), text->data() + text->size(), n)
                             : std::from_chars_result{nullptr, std::errc::invalid_argument};
      if (err != std::errc{} || end != text->data() + text->size() || n < 1 || n > max_n)
        co_return reply{http::status::bad_request,
                        "n must be an integer from 1 to " + std::to_string(max_n) + "\n"};
      long count = co_await pool_.apply(count_primes, n);
      co_return reply{http::status::ok,
                      "primes below " + std::to_string(n) + ": " + std::to_string(count) + "\n"};
    }
    if (path == "/uname") {
      auto r = co_await coproc::run({"uname", "-a"}, {.capture_output = true, .timeout = 5s});
      co_return reply{r.returncode == 0 ? http::status::ok : http::status::internal_server_error,
                      r.out};
    }
    co_return reply{http::status::not_found, "no such endpoint: " + std::string(path) + "\n"};
  }

  net::any_io_executor io_;
  tcp::acceptor acceptor_;
  coproc::pool pool_;
  std::mutex mutex_; // connections_ and stopping_: every strand reads them
  std::set<std::shared_ptr<connection>> connections_;
  bool stopping_ = false;
  net::steady_timer drained_;
};

// Serves until SIGINT or SIGTERM, then shuts down gracefully. Runs on a strand of io.
net::awaitable<void> serve(net::any_io_executor io, unsigned short port, bool announce) {
  auto ex = co_await net::this_coro::executor;
  net::signal_set signals(ex, SIGINT, SIGTERM);
  server s(ex, io, port);
  if (announce) {
    std::printf("listening on 127.0.0.1:%u\n", s.port());
    std::fflush(stdout);
  }
  net::co_spawn(ex, s.accept_loop(), net::detached);
  auto [ec, sig] = co_await signals.async_wait(use_tuple);
  std::printf("signal %d: finishing in-flight requests\n", sig);
  co_await s.shutdown();
  std::printf("shut down cleanly\n");
}

// One request on a fresh connection; "STATUS body".
net::awaitable<std::string> get(unsigned short port, std::string target) {
  beast::tcp_stream stream(co_await net::this_coro::executor);
  co_await stream.async_connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port),
                                net::use_awaitable);
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  co_await http::async_write(stream, req, net::use_awaitable);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  co_await http::async_read(stream, buffer, res, net::use_awaitable);
  co_return std::to_string(res.result_int()) + " " + res.body();
}

// The demo: a server on a free port, requests to it, then a SIGTERM to ourselves.
net::awaitable<void> demo(net::any_io_executor io) {
  auto ex = co_await net::this_coro::executor;
  net::signal_set signals(ex, SIGINT, SIGTERM);
  server s(ex, io, 0);
  net::co_spawn(ex, s.accept_loop(), net::detached);
  std::printf("demo server on 127.0.0.1:%u\n", s.port());

  std::vector<std::string> targets = {"/primes?n=2000000", "/primes?n=3000000", "/health", "/uname",
                                      "/primes?n=many",    "/nowhere"};
  std::vector<net::awaitable<std::string>> requests;
  for (auto& t : targets) requests.push_back(get(s.port(), t));
  auto answers = co_await coproc::gather(std::move(requests));
  for (std::size_t i = 0; i < targets.size(); ++i)
    std::printf("GET %-18s -> %s", targets[i].c_str(), answers[i].c_str());

  ::raise(SIGTERM);
  auto [ec, sig] = co_await signals.async_wait(use_tuple);
  std::printf("signal %d: finishing in-flight requests\n", sig);
  co_await s.shutdown();
  std::printf("shut down cleanly\n");
}

// Runs main on a strand of an io_context served by io_threads threads, until no work is
// left; rethrows what main threw.
void run_threaded(net::awaitable<void> (*main)(net::any_io_executor, unsigned short, bool),
                  unsigned short port, bool announce) {
  net::io_context io(io_threads);
  std::exception_ptr failure;
  net::co_spawn(net::make_strand(io), main(io.get_executor(), port, announce),
                [&](std::exception_ptr e) { failure = e; });
  std::vector<std::thread> threads;
  for (int i = 1; i < io_threads; ++i) threads.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

net::awaitable<void> run_demo(net::any_io_executor io, unsigned short, bool) { co_await demo(io); }

} // namespace

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // the fork server starts here, as a fresh image
  coproc::set_start_method(coproc::start_method::forkserver);
  coproc::forkserver_preload(); // while this process has one thread
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    run_threaded(run_demo, 0, false);
    return 0;
  }
  if (args[0] != "--serve" || args.size() > 2) {
    std::fprintf(stderr, "usage: http_server [--serve [PORT]]\n");
    return 2;
  }
  unsigned port = args.size() == 2 ? static_cast<unsigned>(std::stoul(args[1])) : 8080;
  run_threaded(serve, static_cast<unsigned short>(port), true);
}
