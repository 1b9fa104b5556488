// A crawler-style script: a pool whose workers run coroutine tasks, each awaiting a few
// commands (a "fetch" with some latency, then a "parse" of what it fetched), over a lazy
// input (a view: nothing is materialised, at most 16 pages are in flight), each page with
// a timeout of its own, the results printed as they complete (in page order, so the
// output is the same every run; the time goes to stderr).
//
//   for page in 1..40: body=$(timeout 1 fetch page); wc -c <<<"$body"   # 2 workers, 8 at once each
//
// Page 13's server never answers: at its timeout the worker cancels that task, which
// kills its fetch, and the task fails with task_timeout while the pages beside it go on.
// Serial, the 40 fetches of 100 ms would take 4 s; here they take about 1 s (the timeout).
#include <coproc/pool.hpp>
#include <coproc/run.hpp>
#include <coproc/subprocess.hpp>

#include <chrono>
#include <cstdio>
#include <ranges>
#include <string>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  while (!s.empty() && s.front() == ' ') s.erase(0, 1);
  return s;
}

// One page: runs in a worker, several at once on the worker's io_context.
coproc::awaitable<std::string> crawl(std::string page) {
  // The fetch: a command standing in for a download, latency included.
  bool hangs = page.ends_with("/13");
  std::vector<std::string> fetch{
      "sh", "-c", hangs ? "exec sleep 60" : "sleep 0.1; echo \"<html>$0</html>\"", page};
  coproc::run_options fetched{.capture_output = true, .check = true};
  auto body = co_await coproc::run(std::move(fetch), std::move(fetched));
  // The parse: what came back, through another command.
  std::vector<std::string> count{"wc", "-c"};
  coproc::run_options counted{.input = body.out, .capture_output = true, .check = true};
  auto bytes = co_await coproc::run(std::move(count), std::move(counted));
  co_return page + ": " + trimmed(bytes.out) + " bytes";
}

} // namespace

coproc::awaitable<int> script() {
  auto ex = co_await asio::this_coro::executor;
  coproc::pool pool(ex, {.processes = 2, .concurrency = 8, .buffersize = 16});
  auto pages = std::views::iota(1, 41) | std::views::transform([](int i) {
                 return "https://example.test/page/" + std::to_string(i);
               });
  auto t0 = std::chrono::steady_clock::now();
  auto results = pool.imap(coproc::task_options{.timeout = 1s}, crawl, pages);
  int done = 0, timed_out = 0;
  for (int i = 1;; ++i) {
    try {
      auto line = co_await results.next();
      if (!line) break;
      std::printf("%s\n", line->c_str());
      ++done;
    } catch (const coproc::task_timeout& e) {
      std::printf("https://example.test/page/%d: no answer within %lld s\n", i,
                  static_cast<long long>(
                      std::chrono::duration_cast<std::chrono::seconds>(e.timeout()).count()));
      ++timed_out;
    }
  }
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  std::printf("%d pages, %d timed out\n", done, timed_out);
  std::fprintf(stderr, "in %lld ms\n", static_cast<long long>(ms));
  pool.close();
  co_await pool.join();
  co_return done == 39 && timed_out == 1 ? 0 : 1;
}

int main() { return coproc::block_on(script()); }
