// Pool tasks beyond plain functions (coproc/pool.hpp): function objects whose state
// travels, coproc::partial, coroutine tasks with pool_options::concurrency, lazy inputs
// for imap with pool_options::buffersize, and large arguments and results.
#include <coproc/pool.hpp>
#include <coproc/subprocess.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/fresh_image.hpp"
#include "support/pool_tasks.hpp"
#include "support/preload_fork_server.hpp"
#include "support/timing.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define COPROC_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COPROC_TEST_ASAN 1
#endif
#endif
#if COPROC_TEST_ASAN
#include <sanitizer/allocator_interface.h>
#endif
#if defined(__SANITIZE_THREAD__)
#define COPROC_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COPROC_TEST_TSAN 1
#endif
#endif

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::elapsed_ms;
using coproc_test::failure_of;
using namespace coproc_test::pool_tasks;

namespace {

// Timing bounds stretch under the sanitizers on a loaded machine; each stays below what
// one task at a time would take, so it still proves the concurrency.
#if COPROC_TEST_ASAN || COPROC_TEST_TSAN
constexpr int slack = 2;
#else
constexpr int slack = 1;
#endif

constexpr coproc::start_method every_method[] = {
    coproc::start_method::fork, coproc::start_method::spawn, coproc::start_method::forkserver};

// A function object whose state travels through its serialize.
struct scaler {
  int factor = 1;
  std::string tag;
  std::string operator()(int x) const { return tag + std::to_string(x * factor); }
  template <class A> void serialize(A& a) { a(factor, tag); }
};

int scale(int factor, int x) { return factor * x; }
// Answers after 0 to 600 us, a different wait for neighbouring items: later items often
// answer first.
int jittered(int i) {
  ::usleep(static_cast<useconds_t>((i * 7919) % 13 * 50));
  return i;
}
std::string label(std::string prefix, int n, std::string suffix) {
  return prefix + std::to_string(n) + suffix;
}

// What the initializer left in the worker.
int initialized = 0;
void set_initialized(int a, int b) { initialized = a * 100 + b; }
int read_initialized() { return initialized; }

void append_line(std::string path, int i) { std::ofstream(path, std::ios::app) << i << "\n"; }
int append_then_nap(std::string path, int i) {
  append_line(path, i);
  nap(50);
  return i;
}
std::size_t lines_of(const std::string& path) {
  std::ifstream in(path);
  std::size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

coproc::awaitable<int> after_timer(int ms) {
  boost::asio::steady_timer timer(co_await boost::asio::this_coro::executor,
                                  std::chrono::milliseconds(ms));
  co_await timer.async_wait(boost::asio::use_awaitable);
  co_return ms;
}
coproc::awaitable<std::string> shell_echo(std::string word) {
  std::vector<std::string> args{"sh", "-c", "echo $0; echo $0-again", word};
  coproc::run_options options{.capture_output = true, .check = true};
  auto done = co_await coproc::run(std::move(args), std::move(options));
  std::vector<std::string> ls{"ls", "/"};
  coproc::run_options quiet{.capture_output = true, .check = true};
  auto listing = co_await coproc::run(std::move(ls), std::move(quiet));
  co_return done.out + (listing.out.find("proc") != std::string::npos ? "ls-ok" : "ls-bad");
}
coproc::awaitable<int> timer_then_throw(int ms) {
  co_await after_timer(ms);
  throw std::runtime_error("coroutine task failed after " + std::to_string(ms) + " ms");
}
coproc::awaitable<void> timer_void(int ms) { co_await after_timer(ms); }

long resident_kib() {
#if COPROC_TEST_ASAN
  __sanitizer_purge_allocator(); // freed memory waits in ASan's quarantine otherwise
#endif
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

std::uint64_t checksum(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  const std::size_t step = 4096 - 8;
  for (std::size_t i = 0; i < s.size(); i += step)
    h = (h ^ static_cast<unsigned char>(s[i])) * 1099511628211ull;
  return h ^ s.size();
}
std::string echo(std::string s) { return s; }

// ---- tasks for the shared-memory payloads ----
std::string pattern(std::size_t n, int seed) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i)
    s[i] = static_cast<char>(i * 131 + static_cast<std::size_t>(seed));
  return s;
}
std::uint64_t digest(std::string s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h ^ s.size();
}
std::uint64_t digest_of(const std::string& s) { return digest(s); }
std::string make_pattern(std::size_t n, int seed) { return pattern(n, seed); }
std::vector<double> doubled(std::vector<double> v) {
  for (auto& x : v) x *= 2;
  return v;
}
// Its encoding writes more than the shared-memory threshold, then fails (its decoding is
// never reached).
struct fails_half_way {
  std::string big = std::string(std::size_t(1) << 20, 'h');
  template <class Archive> void serialize(Archive& ar) {
    ar(big);
    if constexpr (std::is_same_v<Archive, coproc::wire::output_archive>)
      throw std::runtime_error("fails_half_way: encoding stopped");
  }
};
fails_half_way make_fails_half_way() { return {}; }
int take_fails_half_way(fails_half_way f) { return static_cast<int>(f.big.size()); }
int die_holding(std::string s) {
  if (!s.empty()) ::kill(::getpid(), SIGKILL);
  ::pause();
  return 0;
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

// ---- tasks with state ------------------------------------------------------------------

static_assert(coproc::detail::pool_travels<scaler>());
static_assert(coproc::detail::pool_travels<decltype(coproc::partial(scale, 3))>());
static_assert(coproc::detail::pool_travels<decltype(coproc::partial(scaler{}, 3))>());
// A lambda with captures cannot travel (pool::apply's static_assert says why).
inline auto capturing = [n = 3](int x) { return n * x; };
static_assert(!coproc::detail::pool_travels<decltype(capturing)>());
// Nor a partial binding something the wire format cannot carry.
static_assert(!coproc::detail::pool_travels<decltype(coproc::partial(scale, (int*)nullptr))>());

TEST_CASE("a function object's serialized state and a partial's bound arguments reach the worker") {
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 2, .method = method});
      CHECK(co_await pool.apply(scaler{3, "x"}, 5) == "x15");
      auto scaled = co_await pool.map(scaler{-2, ""}, std::vector<int>{1, 2, 3});
      CHECK(scaled == std::vector<std::string>{"-2", "-4", "-6"});
      CHECK(co_await pool.apply(coproc::partial(add3, 1, 20), 300) == 321);
      CHECK(co_await pool.apply(coproc::partial(label, std::string("<"), 7), std::string(">")) ==
            "<7>");
      auto tripled = co_await pool.map(coproc::partial(scale, 3), std::vector<int>{1, 2, 3, 4});
      CHECK(tripled == std::vector<int>{3, 6, 9, 12});
      // A partial of a stateful object, and a partial of a partial.
      CHECK(co_await pool.apply(coproc::partial(scaler{10, "s"}, 4)) == "s40");
      CHECK(co_await pool.apply(coproc::partial(coproc::partial(add3, 1), 2), 3) == 6);
      auto stars = co_await pool.starmap(coproc::partial(add3, 100),
                                         std::vector<std::tuple<int, int>>{{1, 2}, {3, 4}});
      CHECK(stars == std::vector<int>{103, 107});
      auto stream = pool.imap(coproc::partial(scale, -1), std::vector<int>{5, 6});
      CHECK(co_await stream.next() == -5);
      CHECK(co_await stream.next() == -6);
      CHECK(co_await stream.next() == std::nullopt);
    }());
  }
}

TEST_CASE("a partial of a plain function is an initializer with every start method") {
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 2,
                         .initializer = coproc::partial(set_initialized, 4, 2),
                         .method = method});
      CHECK(co_await pool.apply(read_initialized) == 402);
      // Replacements run it too.
      CHECK((co_await failure_of<coproc::worker_lost>(pool.apply(die_by_exit, 3))).exitcode() == 3);
      for (int i = 0; i < 4; ++i) CHECK(co_await pool.apply(read_initialized) == 402);
    }());
  }
  // One that cannot travel is still refused by the fresh-image methods, and named.
  coproc_test::run([]() -> coproc::awaitable<void> {
    int captured = 0;
    auto ex = co_await boost::asio::this_coro::executor;
    CHECK_THROWS_WITH_AS(coproc::pool(ex, {.processes = 1,
                                           .initializer = [&captured] { ++captured; },
                                           .method = coproc::start_method::spawn}),
                         doctest::Contains("partial"), std::invalid_argument);
  }());
}

// ---- coroutine tasks --------------------------------------------------------------------

TEST_CASE("coroutine tasks run concurrently in each worker") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .concurrency = 8});
    CHECK(co_await pool.apply(after_timer, 1) == 1); // the workers are up
    auto t0 = std::chrono::steady_clock::now();
    std::vector<coproc::async_result<int>> results;
    for (int i = 0; i < 32; ++i) results.push_back(pool.apply_async(after_timer, 200));
    for (auto& r : results) CHECK(co_await r.get() == 200);
    // One at a time it would take 3.2 s; 8 at once in each of 2 workers, 0.4 s.
    CHECK(elapsed_ms(t0) < 1000 * slack);
    // map and imap of coroutine tasks, and a void one.
    auto t1 = std::chrono::steady_clock::now();
    auto values = co_await pool.map(after_timer, std::vector<int>(32, 200), 1);
    CHECK(values == std::vector<int>(32, 200));
    CHECK(elapsed_ms(t1) < 1000 * slack);
    auto stream = pool.imap_unordered(after_timer, std::vector<int>{30, 10, 20});
    int sum = 0;
    while (auto v = co_await stream.next()) sum += *v;
    CHECK(sum == 60);
    co_await pool.apply(timer_void, 5);
  }());
}

TEST_CASE("a coroutine task may await coproc::run, and its exception is a remote_error") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .concurrency = 4});
    std::vector<coproc::async_result<std::string>> echoes;
    for (int i = 0; i < 6; ++i)
      echoes.push_back(pool.apply_async(shell_echo, "w" + std::to_string(i)));
    for (int i = 0; i < 6; ++i) {
      std::string w = "w" + std::to_string(i);
      CHECK(co_await echoes[i].get() == w + "\n" + w + "-again\nls-ok");
    }
    auto failing = pool.apply_async(timer_then_throw, 20);
    auto fine = pool.apply_async(after_timer, 40);
    auto e = co_await failure_of<coproc::remote_error>(failing.get());
    CHECK(e.type_name() == "std::runtime_error");
    CHECK(e.message() == "coroutine task failed after 20 ms");
    CHECK(co_await fine.get() == 40);
    // Plain tasks still run in the same workers, in between.
    CHECK(co_await pool.apply(square, 9) == 81);
  }());
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    CHECK_THROWS_AS(coproc::pool(ex, {.processes = 1, .concurrency = 0}), std::invalid_argument);
  }());
}

TEST_CASE("coroutine tasks run in spawned workers too") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 1, .method = coproc::start_method::spawn, .concurrency = 4});
    auto t0 = std::chrono::steady_clock::now();
    auto values = co_await pool.map(after_timer, std::vector<int>(4, 200), 1);
    CHECK(values == std::vector<int>(4, 200));
    CHECK(elapsed_ms(t0) < 700); // one at a time: 800 ms
  }());
}

// ---- lazy inputs ------------------------------------------------------------------------

TEST_CASE("imap over an endless range keeps memory flat") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .buffersize = 4096});
    auto stream = pool.imap(plus_one, std::views::iota(0), 256);
    long before = 0;
    for (int i = 0; i < 100'000; ++i) {
      auto v = co_await stream.next();
      REQUIRE(v == i + 1);
      if (i == 5'000) before = resident_kib();
    }
    long growth = resident_kib() - before;
    MESSAGE("RSS growth over 95 000 results: " << growth << " KiB");
    CHECK(growth < 32 * 1024);
  }());
}

TEST_CASE("imap with buffersize pulls lazily, at most buffersize in flight") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 2, .buffersize = 10});
    auto pulled = std::make_shared<std::atomic<int>>(0);
    auto counted = std::views::iota(0) | std::views::transform([pulled](int i) {
                     ++*pulled;
                     return i;
                   });
    {
      auto stream = pool.imap(square, counted, 4);
      CHECK(*pulled <= 10);
      for (int taken = 1; taken <= 50; ++taken) {
        CHECK(co_await stream.next() == (taken - 1) * (taken - 1));
        CHECK(*pulled - taken <= 10);
      }
    }
    int at_drop = *pulled;
    CHECK(co_await pool.apply(square, 3) == 9);
    CHECK(*pulled == at_drop); // a destroyed stream pulls no more

    // A finite unsized range ends; imap_unordered gives each item once.
    auto finite = std::views::iota(0) | std::views::take_while([](int i) { return i < 1000; });
    auto stream = pool.imap_unordered(square, finite, 7);
    std::vector<int> seen(1000, 0);
    int count = 0;
    while (auto v = co_await stream.next()) {
      int root = 0;
      while (root * root < *v) ++root;
      ++seen.at(root);
      ++count;
    }
    CHECK(count == 1000);
    CHECK(std::all_of(seen.begin(), seen.end(), [](int n) { return n == 1; }));
    CHECK(co_await stream.next() == std::nullopt);

    // A sized input with buffersize is lazy too; a failed item goes on to the next.
    auto mixed = pool.imap(fail_on_odd, std::vector<int>{2, 3, 4});
    CHECK(co_await mixed.next() == 2);
    CHECK((co_await failure_of<coproc::remote_error>(mixed.next())).message() == "odd item 3");
    CHECK(co_await mixed.next() == 4);
    CHECK(co_await mixed.next() == std::nullopt);
  }());
}

TEST_CASE("imap keeps item order when later items answer first, with and without buffersize") {
  for (std::size_t buffersize : {std::size_t(0), std::size_t(5), std::size_t(64)}) {
    CAPTURE(buffersize);
    coproc_test::run([buffersize]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 4, .buffersize = buffersize});
      auto items = std::views::iota(0, 600);
      const std::vector<int> expected(items.begin(), items.end());
      for (std::size_t chunksize : {std::size_t(1), std::size_t(3)}) {
        CAPTURE(chunksize);
        auto stream = pool.imap(jittered, items, chunksize);
        std::vector<int> got;
        while (auto v = co_await stream.next()) got.push_back(*v);
        CHECK(got == expected);
      }
    }());
  }
}

TEST_CASE("imap of an unsized range without buffersize is refused, a sized one is copied") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    CHECK_THROWS_WITH_AS(pool.imap(square, std::views::iota(0)), doctest::Contains("buffersize"),
                         std::invalid_argument);
    CHECK_THROWS_AS(pool.imap_unordered(square, std::views::iota(0)), std::invalid_argument);
    std::vector<int> items{1, 2, 3};
    auto stream = pool.imap(square, items);
    items.clear(); // copied at the call
    CHECK(co_await stream.next() == 1);
    CHECK(co_await stream.next() == 4);
    CHECK(co_await stream.next() == 9);
    pool.close();
    CHECK_THROWS_AS(pool.imap(square, std::views::iota(0)), std::logic_error);
    co_await pool.join();
  }());
}

TEST_CASE("destroying a lazy stream withdraws its unstarted items, close lets an open one finish") {
  coproc_test::fresh_image::temp_dir dir;
  std::string path = dir.file("ran");
  coproc_test::run([path]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 1, .buffersize = 16});
    {
      auto stream = pool.imap(coproc::partial(append_then_nap, path), std::views::iota(0), 1);
      CHECK(co_await stream.next() == 0);
    }
    pool.close();
    co_await pool.join();
    // The first, and the one or two running or sent when the stream went: not all 16.
    CHECK(lines_of(path) < 6);
  }());
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, {.processes = 2, .buffersize = 8});
    auto stream =
        pool.imap(square, std::views::iota(0, 200) | std::views::filter([](int) { return true; }));
    pool.close();
    int n = 0;
    while (auto v = co_await stream.next()) {
      CHECK(*v == n * n);
      ++n;
    }
    CHECK(n == 200);
    co_await pool.join();
  }());
}

TEST_CASE("a lazy stream that outlives its pool fails with pool_closed and ends") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    std::optional<coproc::result_stream<int>> stream;
    {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 1, .buffersize = 4});
      stream.emplace(pool.imap(nap_then, std::views::iota(1000) | std::views::take(100)));
    }
    int closed = 0;
    for (int i = 0; i < 100; ++i) {
      try {
        auto v = co_await stream->next();
        if (!v) break;
      } catch (const coproc::pool_closed&) {
        ++closed;
      }
    }
    CHECK(closed >= 1);
    CHECK(co_await stream->next() == std::nullopt);
  }());
}

// ---- large payloads ----------------------------------------------------------------------

// 1 GiB; less under the sanitizers, whose memcpy and byte loops are many times slower.
#if defined(__SANITIZE_THREAD__)
constexpr std::size_t large_size = std::size_t(32) << 20;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr std::size_t large_size = std::size_t(32) << 20;
#elif COPROC_TEST_ASAN
constexpr std::size_t large_size = std::size_t(128) << 20;
#else
constexpr std::size_t large_size = std::size_t(1) << 30;
#endif
#elif COPROC_TEST_ASAN
constexpr std::size_t large_size = std::size_t(128) << 20;
#else
constexpr std::size_t large_size = std::size_t(1) << 30;
#endif

TEST_CASE("a large argument and result round trip intact") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    constexpr std::size_t size = large_size;
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    std::string big(size, '\0');
    for (std::size_t i = 0; i < size; i += 4096 - 8) big[i] = static_cast<char>(i * 31 + 7);
    big.back() = 'z';
    auto sum = checksum(big);
    auto t0 = std::chrono::steady_clock::now();
    std::string back = co_await pool.apply(echo, big);
    MESSAGE(std::to_string(size >> 20) << " MiB there and back: " << elapsed_ms(t0) << " ms");
    REQUIRE(back.size() == size);
    CHECK(back.back() == 'z');
    CHECK(checksum(back) == sum);
    CHECK(back == big);
  }());
}

TEST_CASE("map over many large items is intact and takes memory for about one copy in flight") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
    std::vector<std::string> items;
    for (int i = 0; i < 32; ++i)
      items.emplace_back(std::size_t(1) << 20, static_cast<char>('a' + i % 26));
    long before = resident_kib();
    for (int round = 0; round < 3; ++round) {
      auto back = co_await pool.map(echo, items);
      CHECK(back == items);
    }
    // 32 MiB there and back: the items, their encodings and the results, not one more
    // copy for every time a slow worker's unstarted items were taken back.
    long growth = resident_kib() - before;
    MESSAGE("RSS growth: " << growth << " KiB");
    CHECK(growth < 512 * 1024);
  }());
}

// ---- shared memory (lib/pool_payload.hpp) ---------------------------------------------

// An apply's argument travels as [u64 part length][u64 string size][bytes], its result as
// [u64 string size][bytes]: these sizes put each side of the threshold on each side.
TEST_CASE("payloads on both sides of the shared-memory threshold arrive intact") {
  constexpr std::size_t t = coproc::detail::shared_payload_bytes;
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 2, .method = method});
      for (std::size_t n : {t - 17, t - 16, t - 15, t - 9, t - 8, t - 7, t + 1, 3 * t}) {
        CAPTURE(n);
        auto sent = pattern(n, static_cast<int>(n));
        CHECK(co_await pool.apply(echo, sent) == sent);
        // Large there and small back, small there and large back.
        CHECK(co_await pool.apply(digest, sent) == digest_of(sent));
        CHECK(co_await pool.apply(make_pattern, n, 7) == pattern(n, 7));
      }
      std::vector<double> numbers(std::size_t(3) << 20);
      for (std::size_t i = 0; i < numbers.size(); ++i) numbers[i] = static_cast<double>(i) / 3;
      auto back = co_await pool.apply(doubled, numbers);
      REQUIRE(back.size() == numbers.size());
      CHECK(back.back() == numbers.back() * 2);
      CHECK(back[12345] == numbers[12345] * 2);
    }());
  }
}

TEST_CASE("map over many large items, large and small mixed, is intact") {
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 2, .method = method});
      std::vector<std::string> items;
      for (int i = 0; i < 48; ++i)
        items.push_back(pattern(i % 3 == 0 ? 16 : (std::size_t(300) << 10) + std::size_t(i), i));
      for (std::size_t chunksize : {std::size_t(1), std::size_t(5)}) {
        CAPTURE(chunksize);
        auto back = co_await pool.map(echo, items, chunksize);
        CHECK(back == items);
      }
      // Items moved in (a container passed as an rvalue) arrive the same.
      auto moved = items;
      auto back = co_await pool.map(echo, std::move(moved));
      CHECK(back == items);
      auto digests = co_await pool.map(digest, items);
      for (std::size_t i = 0; i < items.size(); ++i) CHECK(digests[i] == digest_of(items[i]));
    }());
  }
}

TEST_CASE("an argument or a result whose encoding fails part way through a large value "
          "fails that task alone and large values after it are intact") {
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 1, .method = method});
      auto big = pattern(std::size_t(3) << 20, 5);
      for (int round = 0; round < 3; ++round) {
        // In the parent, when the task is sent: its own error, nothing sent.
        auto e = co_await failure_of<std::runtime_error>(
            pool.apply(take_fails_half_way, fails_half_way{}));
        CHECK(std::string(e.what()) == "fails_half_way: encoding stopped");
        CHECK(co_await pool.apply(echo, big) == big);
        // In the worker, as it answers: a remote_error naming it.
        auto r = co_await failure_of<coproc::remote_error>(pool.apply(make_fails_half_way));
        CHECK(std::string(r.what()).find("fails_half_way: encoding stopped") != std::string::npos);
        CHECK(co_await pool.apply(echo, big) == big);
        CHECK(co_await pool.apply(digest, big) == digest_of(big));
      }
    }());
  }
}

TEST_CASE("a worker killed while it holds a shared argument fails with worker_lost, the pool "
          "goes on") {
  for (auto method : every_method) {
    CAPTURE(static_cast<int>(method));
    coproc_test::run([method]() -> coproc::awaitable<void> {
      coproc::pool pool(co_await boost::asio::this_coro::executor,
                        {.processes = 1, .method = method});
      auto big = pattern(std::size_t(4) << 20, 3);
      for (int round = 0; round < 3; ++round) {
        auto lost = pool.apply_async(die_holding, big);
        // Queued behind it on the same worker: it goes to the replacement intact.
        auto queued = pool.apply_async(echo, big);
        auto e = co_await failure_of<coproc::worker_lost>(lost.get());
        CHECK(e.exitcode() == -SIGKILL);
        CHECK(co_await queued.get() == big);
      }
      CHECK(co_await pool.apply(echo, big) == big);
    }());
  }
}
