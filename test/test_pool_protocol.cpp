// The pool's wire protocol under attack and at its limits (lib/pool_protocol.hpp): frame
// lengths past 32 bits, frames whose lengths disagree or whose offsets name no code,
// records the parent cannot believe; and the scheduling and start-up defects found with
// them (maxtasksperchild with work stealing, a spawn initializer that cannot run).
#include <coproc/pool.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/plugin.hpp"
#include "support/pool_tasks.hpp"
#include "support/timing.hpp"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <cstddef>
#include <cstring>
#include <ctime>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coproc_test::elapsed_ms;
using coproc_test::failure_of;
using coproc_test::sleep_for;
using namespace coproc_test::pool_tasks;

// Tests that move gigabytes are skipped under ASan and TSan: their shadow memory and
// checked copies would multiply the footprint (several GiB here) and the time by 5-20x.
// They are skipped in the COPROC_CHILD_WATCH=sigchld run too (child watching plays no
// part in them, and ctest -j would run both at once). Their cost is fresh memory: on the
// project's VMs the kernel takes about 1.5 s of system time per GiB first touched (a
// plain memset of 2 GiB of new memory: 3.5 s), so the 5 GiB round trip (about 40 GiB
// touched: the copies of argument and result in both processes) takes 70 s of CPU there
// and runs only when COPROC_TEST_GIGABYTES=1.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COPROC_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define COPROC_TEST_SANITIZED 1
#endif
#endif
#ifdef COPROC_TEST_SANITIZED
constexpr bool sanitized_build = true;
#else
constexpr bool sanitized_build = false;
#endif

namespace {

constexpr std::size_t gib = std::size_t(1) << 30;

// Why a gigabytes test does not run here, or nullptr.
const char* gigabytes_skip_reason(bool opt_in) {
  if (sanitized_build) return "skipped under a sanitizer (gigabytes of shadow memory)";
  const char* watch = std::getenv("COPROC_CHILD_WATCH");
  if (watch && std::string(watch) == "sigchld")
    return "skipped in the sigchld run (no child watching involved)";
  const char* wanted = std::getenv("COPROC_TEST_GIGABYTES");
  if (opt_in && !(wanted && std::string(wanted) == "1"))
    return "skipped: set COPROC_TEST_GIGABYTES=1 to run it";
  return nullptr;
}

// MemAvailable of /proc/meminfo, in bytes.
std::size_t available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::size_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(64, '\n');
  }
  return 0;
}

// Held while a test uses gigabytes, so that its twin (this file's COPROC_CHILD_WATCH=sigchld
// run, which ctest -j may start at the same time) waits instead of doubling the peak. The
// lock is an abstract socket name: nothing to clean up if the holder dies.
class gigabytes_lock {
public:
  gigabytes_lock() : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const char name[] = "coproc-test-pool-gigabytes";
    std::memcpy(addr.sun_path + 1, name, sizeof name - 1);
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + sizeof name);
    auto deadline = std::chrono::steady_clock::now() + 100s;
    while (!(held_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0) &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(50ms); // polls the condition: the other run released the name
  }
  ~gigabytes_lock() { ::close(fd_); }
  gigabytes_lock(const gigabytes_lock&) = delete;
  gigabytes_lock& operator=(const gigabytes_lock&) = delete;
  bool held() const { return held_; }

private:
  int fd_;
  bool held_ = false;
};

// A string of n zero bytes (n >= 2 GiB) with, at offset 64, a record for the next task in
// the 32-bit format the pool once used ([u32 length][int 666]). Misreading the length of
// this result as an error flag, and its bytes as further records, delivers 666 to the next
// task.
std::string planted_record(std::size_t n) {
  std::string s(n, '\0');
  std::uint32_t len = 4;
  int planted = 666;
  std::memcpy(s.data() + 64, &len, 4);
  std::memcpy(s.data() + 68, &planted, 4);
  return s;
}
int seven() { return 7; }

// Whether s[from, to) holds only c (a block at a time: fast also in a debug build).
bool all_bytes_are(const std::string& s, std::size_t from, std::size_t to, char c) {
  static const std::string block(1 << 20, '\0');
  std::string same(block.size(), c);
  for (std::size_t at = from; at < to; at += same.size())
    if (std::memcmp(s.data() + at, same.data(), std::min(same.size(), to - at)) != 0) return false;
  return true;
}

// The 5 GiB argument: 1 MiB blocks of 'a'..'z' in turn, and at offset n - 4 GiB a frame in
// the 32-bit format the pool once used (see below).
constexpr std::size_t pattern_block = 1 << 20;
char pattern_of(std::size_t at) { return static_cast<char>('a' + (at / pattern_block) % 26); }
std::string echo(std::string s) { return s; }
int plant(int slot) {
  shared_slots()[slot].store(::getpid());
  return slot;
}

// A frame as the pool once framed them: [u32 length][i64 trampoline][i64 target][u32 count]
// then [u32 length][bytes] per item, parts [u32 length][bytes]. With 32-bit lengths the
// frame of an argument of n = 4 GiB + x bytes ended after x of them, and the worker read
// the last 4 GiB as frames of their own: this one calls plant(slot).
std::string old_frame_calling_plant(int slot, std::size_t size) {
  std::string f;
  auto put = [&f](auto v) { f.append(reinterpret_cast<const char*>(&v), sizeof v); };
  put(static_cast<std::uint32_t>(size - 4));
  put(static_cast<std::int64_t>(
      coproc::detail::pool_image_offset(&coproc::detail::apply_trampoline<int (*)(int), int>)));
  put(static_cast<std::int64_t>(coproc::detail::pool_target(&plant)));
  put(std::uint32_t{1});
  put(std::uint32_t{8});
  put(std::uint32_t{4});
  put(slot);
  return f;
}

std::string patterned(std::size_t n, std::size_t plant_at, const std::string& planted) {
  std::string s(n, '\0');
  for (std::size_t at = 0; at < n; at += pattern_block)
    std::memset(s.data() + at, pattern_of(at), std::min(pattern_block, n - at));
  std::memcpy(s.data() + plant_at, planted.data(), planted.size());
  return s;
}

bool is_patterned(const std::string& s, std::size_t plant_at, const std::string& planted) {
  for (std::size_t at = 0; at < s.size(); at += pattern_block) {
    std::size_t end = std::min(at + pattern_block, s.size());
    if (plant_at >= at && plant_at < end) {
      if (!all_bytes_are(s, at, plant_at, pattern_of(at)) ||
          s.compare(plant_at, planted.size(), planted) != 0 ||
          !all_bytes_are(s, plant_at + planted.size(), end, pattern_of(at)))
        return false;
    } else if (!all_bytes_are(s, at, end, pattern_of(at))) {
      return false;
    }
  }
  return true;
}

// ---- forged frames: a task replaces its worker's link with a socket holding bytes of
// its choosing, which the worker then reads as if the parent had sent them.

// In a forked worker: the socket to the parent, the only socket it holds.
int worker_link() {
  int found = -1;
  for (int fd = 3; fd < 1024; ++fd) {
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    if (found >= 0) return -1;
    found = fd;
  }
  return found;
}

// The worker reads `bytes` next, then the end of its input; what it answers goes nowhere
// and the parent sees the link end, so this task fails with worker_lost and the worker's
// exit code.
int feed_worker(std::string bytes) {
  int link = worker_link();
  int sv[2];
  if (link < 0 || ::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return -1;
  if (::write(sv[1], bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) return -1;
  ::shutdown(sv[1], SHUT_WR);
  ::dup2(sv[0], link);
  ::close(sv[0]);
  return 0; // sv[1] stays open: the worker's answer to this task must not fail with EPIPE
}

// A record that is no record the worker would send, on the link to the parent.
int send_bad_record(int kind) {
  coproc::detail::record_header header{0, static_cast<coproc::detail::record_kind>(kind)};
  ::write(worker_link(), &header, sizeof header);
  return 1;
}

int g_data_word = 1; // data, not code: no frame may name it as a function

struct forged_frame {
  std::int64_t trampoline =
      coproc::detail::pool_image_offset(&coproc::detail::apply_trampoline<int (*)(int), int>);
  std::int64_t target = coproc::detail::pool_target(&plant);
  std::uint64_t count = 1;
  std::string items;            // the item bytes, [u64 length][bytes] each
  std::int64_t length_skew = 0; // added to the true length

  std::string bytes() const {
    coproc::detail::task_frame_header h{items.size() + static_cast<std::uint64_t>(length_skew),
                                        trampoline, target, count};
    std::string out(reinterpret_cast<const char*>(&h), sizeof h);
    return out + items;
  }
};

std::string item_bytes(const std::string& bytes, std::int64_t length_skew = 0) {
  std::uint64_t n = bytes.size() + static_cast<std::uint64_t>(length_skew);
  return std::string(reinterpret_cast<const char*>(&n), sizeof n) + bytes;
}

// A shared item (lib/pool_payload.hpp) naming `length` bytes at `offset` in the arguments
// region, its descriptor `size` bytes long.
std::string shared_item(std::uint64_t offset, std::uint64_t length,
                        std::size_t size = sizeof(coproc::detail::shared_payload)) {
  std::uint64_t n = coproc::detail::item_shared | size;
  coproc::detail::shared_payload p{offset, length};
  std::string descriptor(reinterpret_cast<const char*>(&p), sizeof p);
  descriptor.resize(size);
  return std::string(reinterpret_cast<const char*>(&n), sizeof n) + descriptor;
}

std::string plant_args(int slot) {
  std::string out;
  coproc::detail::encode_parts(out, slot);
  return out;
}

// Barrier tasks: task i of n announces itself in slot 10 + i and waits (20 s at most) until
// all n have. True if they met, i.e. they ran at the same time in different workers.
bool meet(int i, int n) {
  shared_slots()[10 + i].store(::getpid());
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < deadline) {
    bool all = true;
    for (int j = 0; j < n; ++j) all = all && shared_slots()[10 + j].load() != 0;
    if (all) return true;
    ::usleep(200);
  }
  return false;
}
bool less_than(int a, int b) { return a < b; } // the same trampoline as meet: a fast task

void init_noexcept() noexcept { ++g_inits; }
int square_noexcept(int x) noexcept { return x * x; }
worker_report report_noexcept(int ms) noexcept {
  nap(ms);
  return {::getpid(), g_inits};
}

} // namespace

TEST_CASE("a result of 2 GiB or more is not read as an error or as further records") {
  if (const char* why = gigabytes_skip_reason(false)) {
    MESSAGE(std::string(why));
    return;
  }
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    gigabytes_lock lock;
    if (!lock.held() || available_memory() < 9 * gib) {
      MESSAGE("skipped: needs about 8 GiB of free memory");
      co_return;
    }
    std::size_t n = 2 * gib + 16;
    auto big = pool.apply_async(planted_record, n);
    auto next = pool.apply_async(seven);
    CHECK(co_await next.get() == 7);
    auto s = co_await big.get();
    REQUIRE(s.size() == n);
    CHECK(s.substr(64, 8) == planted_record(80).substr(64, 8));
    CHECK(all_bytes_are(s, 72, s.size(), '\0'));
  }());
}

TEST_CASE("maxtasksperchild workers lend queued tasks to idle ones and still take more") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor,
                      {.processes = 3, .maxtasksperchild = 3});
    // A fast task of meet's trampoline: the parent then queues several in one worker.
    for (int i = 0; i < 3; ++i) CHECK(co_await pool.apply(less_than, i, 5));
    for (int round = 0; round < 2; ++round) {
      CAPTURE(round);
      for (int j = 0; j < 3; ++j) shared_slots()[10 + j].store(0);
      std::vector<coproc::async_result<bool>> met;
      for (int i = 0; i < 3; ++i) met.push_back(pool.apply_async(meet, i, 3));
      for (auto& m : met) CHECK(co_await m.get());
      std::set<int> pids;
      for (int j = 0; j < 3; ++j) pids.insert(shared_slots()[10 + j].load());
      CHECK(pids.size() == 3);
    }
    pool.close();
    co_await pool.join();
  }());
}

// Forkserver pools take the same checks (support/spawn_helper.cpp runs them).
TEST_CASE("spawn refuses an initializer or a task in a library dlopened after main_guard, and "
          "runs libc's") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    // A fresh worker loads what the program loads before main_guard, not the plugin.
    auto* outside = coproc_test::plugin_function<void()>("coproc_test_plugin_init");
    auto* triple = coproc_test::plugin_function<int(int)>("coproc_test_plugin_triple");
    auto spawn = coproc::start_method::spawn;
    coproc::pool_options options{.processes = 1, .initializer = outside, .method = spawn};
    CHECK_THROWS_WITH_AS(coproc::pool(ex, options),
                         doctest::Contains("initializer is in " COPROC_TEST_PLUGIN),
                         std::invalid_argument);
    CHECK_THROWS_WITH_AS(coproc::pool(ex, options), doctest::Contains("after main_guard"),
                         std::invalid_argument);
    // Declared noexcept: the same refusal, not "not a plain function".
    options.initializer = reinterpret_cast<void (*)() noexcept>(outside);
    CHECK_THROWS_WITH_AS(coproc::pool(ex, options), doctest::Contains(COPROC_TEST_PLUGIN),
                         std::invalid_argument);
    // libc is another object than the executable, placed apart from it in the worker.
    coproc::pool pool(ex, {.processes = 1, .initializer = &::tzset, .method = spawn});
    CHECK_THROWS_WITH_AS(co_await pool.apply(triple, 3),
                         doctest::Contains("task is in " COPROC_TEST_PLUGIN),
                         std::invalid_argument);
    CHECK(co_await pool.apply(::toupper, 'q') == 'Q');
    CHECK(co_await pool.apply(square, 12) == 144);
    pool.close();
    co_await pool.join();
    // Data is no code, whichever object holds it.
    auto* data = reinterpret_cast<void (*)()>(&g_data_word);
    CHECK_THROWS_WITH_AS(
        coproc::pool(ex,
                     {.processes = 1, .initializer = data, .method = coproc::start_method::spawn}),
        doctest::Contains("is not code in any loaded object"), std::invalid_argument);
    // Fork workers have the plugin: its code runs there.
    coproc::pool forked(ex, {.processes = 1, .initializer = outside});
    CHECK(co_await forked.apply(triple, 3) == 9);
    forked.close();
    co_await forked.join();
  }());
}

TEST_CASE("an initializer that always fails fails the tasks with its error instead of hanging") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    for (auto method : {coproc::start_method::fork, coproc::start_method::spawn}) {
      CAPTURE(static_cast<int>(method));
      coproc::pool pool(ex, {.processes = 2, .initializer = failing_init, .method = method});
      auto start = std::chrono::steady_clock::now();
      auto r = pool.apply_async(square, 2);
      auto e = co_await failure_of<coproc::error>(r.get(20s));
      CHECK(elapsed_ms(start) < 10000);
      CHECK(std::string(e.what()).find("initializer refused") != std::string::npos);
      CHECK(std::string(e.what()).find("std::runtime_error") != std::string::npos);
      CHECK(std::string(e.what()).find("exit") != std::string::npos);
      // Later tasks fail the same way at once.
      auto later = co_await failure_of<coproc::error>(pool.apply(square, 3));
      CHECK(std::string(later.what()) == e.what());
      auto mapped = co_await failure_of<coproc::error>(pool.map(square, range_of(10)));
      CHECK(std::string(mapped.what()) == e.what());
      pool.close();
      co_await pool.join();
    }
    CHECK(coproc_test::live_children().empty());
  }());
}

TEST_CASE("noexcept plain functions are accepted as initializers and as tasks") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    auto ex = co_await boost::asio::this_coro::executor;
    for (auto method : {coproc::start_method::fork, coproc::start_method::spawn}) {
      CAPTURE(static_cast<int>(method));
      coproc::pool pool(ex, {.processes = 2, .initializer = init_noexcept, .method = method});
      CHECK(co_await pool.apply(square_noexcept, 5) == 25);
      CHECK((co_await pool.apply(report_noexcept, 0)).inits == 1);
      CHECK(co_await pool.map(square_noexcept, range_of(4)) == std::vector<int>{0, 1, 4, 9});
      pool.close();
      co_await pool.join();
    }
  }());
}

TEST_CASE("a 5 GiB argument and result cross intact and the argument is never read as frames") {
  if (const char* why = gigabytes_skip_reason(true)) {
    MESSAGE(std::string(why));
    return;
  }
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    gigabytes_lock lock;
    // At the peak the parent keeps the argument (for a retry) while the worker holds the
    // received bytes and their decoded copy: 3 x 5 GiB.
    if (!lock.held() || available_memory() < 17 * gib) {
      MESSAGE("skipped: needs about 16 GiB of free memory");
      co_return;
    }
    std::size_t n = 5 * gib;
    std::size_t plant_at = n - 4 * gib;
    shared_slots()[40].store(0);
    auto planted = old_frame_calling_plant(40, 4 * gib);
    auto start = std::chrono::steady_clock::now();
    auto back = co_await pool.apply(echo, patterned(n, plant_at, planted));
    MESSAGE("5 GiB echoed in " << elapsed_ms(start) << " ms");
    CHECK(back.size() == n);
    CHECK(is_patterned(back, plant_at, planted));
    CHECK(shared_slots()[40].load() == 0);
    back = {};
    CHECK(co_await pool.apply(square, 12) == 144); // the same worker goes on
  }());
}

TEST_CASE("a worker refuses a frame whose lengths disagree or whose offsets name no code") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    auto data_offset =
        reinterpret_cast<std::intptr_t>(&g_data_word) - coproc::detail::pool_anchor_address();
    // The check of the method itself: a well-formed forged frame is called.
    forged_frame valid{.items = item_bytes(plant_args(20))};
    shared_slots()[20].store(0);
    auto called = co_await failure_of<coproc::worker_lost>(pool.apply(feed_worker, valid.bytes()));
    CHECK(called.exitcode() == 0);
    CHECK(shared_slots()[20].load() != 0);

    struct bad_case {
      const char* what;
      forged_frame frame;
    };
    std::vector<bad_case> cases{
        {"trailing bytes", {.items = item_bytes(plant_args(21)) + std::string(8, 'x')}},
        {"more items announced than sent", {.count = 2, .items = item_bytes(plant_args(21))}},
        {"no items", {.count = 0, .items = ""}},
        {"an item longer than the frame", {.items = item_bytes(plant_args(21), 100)}},
        {"a frame shorter than its item", {.items = item_bytes(plant_args(21)), .length_skew = -2}},
        {"a frame longer than anything sent",
         {.items = item_bytes(plant_args(21)), .length_skew = 1 << 20}},
        {"a trampoline in data", {.trampoline = data_offset, .items = item_bytes(plant_args(21))}},
        {"a target in data", {.target = data_offset, .items = item_bytes(plant_args(21))}},
        {"a trampoline nowhere",
         {.trampoline = std::int64_t(1) << 44, .items = item_bytes(plant_args(21))}},
        {"a target nowhere",
         {.target = -(std::int64_t(1) << 60), .items = item_bytes(plant_args(21))}},
        {"a shared item past its region",
         {.items = shared_item(coproc::detail::payload_region_bytes - 8, 16)}},
        {"a shared item beyond any region", {.items = shared_item(~std::uint64_t(0) - 4, 8)}},
        {"a shared item with a short descriptor", {.items = shared_item(0, 8, 12)}},
    };
    for (auto& c : cases) {
      CAPTURE(c.what);
      shared_slots()[21].store(0);
      auto e = co_await failure_of<coproc::worker_lost>(pool.apply(feed_worker, c.frame.bytes()));
      // "a frame longer than anything sent" ends with the input: the worker exits 0 having run
      // nothing.
      if (c.frame.length_skew == (1 << 20)) CHECK(e.exitcode() == 0);
      else CHECK(e.exitcode() == coproc::detail::pool_protocol_error_exit);
      CHECK(shared_slots()[21].load() == 0);
      CHECK(co_await pool.apply(square, 4) == 16); // a replacement took over
    }
  }());
}

TEST_CASE("the parent ends the link of a worker that sends a record it cannot believe") {
  coproc_test::run([]() -> coproc::awaitable<void> {
    coproc::pool pool(co_await boost::asio::this_coro::executor, 1);
    for (int kind : {99, static_cast<int>(coproc::detail::record_kind::started),
                     static_cast<int>(coproc::detail::record_kind::shared_value)}) {
      CAPTURE(kind);
      auto e = co_await failure_of<coproc::worker_lost>(pool.apply(send_bad_record, kind));
      CHECK(e.exitcode() == -SIGKILL);
      CHECK(co_await pool.apply(square, 5) == 25);
    }
  }());
}
