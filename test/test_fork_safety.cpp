// Why spawn exists: in a program whose other threads hold locks, a forked child can wait
// forever on a lock that was held at fork() by a thread it does not have. Here 4 threads
// lock a std::mutex and malloc and free without pause while children that take the same
// mutex and malloc start: every spawn or forkserver child exits 0; forked ones are counted (for
// the record, not asserted: how many hang depends on timing).
#include <coproc/process.hpp>
#include <coproc/run.hpp>

#include <doctest/doctest.h>

#include "support/checks.hpp"
#include "support/preload_fork_server.hpp"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define COPROC_TEST_TSAN 1 // TSan does not support fork in a threaded process
#else
#define COPROC_TEST_TSAN 0
#endif

using namespace std::chrono_literals;
using coproc_test::run;

namespace {

// The start methods that must be safe from a threaded program.
constexpr std::array threaded_methods{coproc::start_method::spawn,
                                      coproc::start_method::forkserver};

std::mutex g_shared; // what the parent's threads hammer and every child takes

// The child's work: the contended mutex, then the allocator.
int lock_and_allocate() {
  std::lock_guard lock(g_shared);
  for (std::size_t size = 16; size <= std::size_t{1} << 20; size *= 4) {
    void* p = std::malloc(size);
    if (!p) return 2;
    std::memset(p, 1, size);
    std::free(p);
  }
  return 0;
}

// 4 threads that lock g_shared and malloc/free in a loop until destroyed. At the lowest
// priority, so they take what the children leave of the CPU rather than starve them (and
// are often preempted holding the mutex, which is what a fork must survive).
class hammering {
public:
  hammering() {
    for (int t = 0; t < 4; ++t)
      threads_.emplace_back([this, t] {
        ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19);
        std::size_t size = 24 + 40 * static_cast<std::size_t>(t);
        while (!stop_.load(std::memory_order_relaxed)) {
          {
            std::lock_guard lock(g_shared);
            void* p = std::malloc(size);
            std::memset(p, 0, size);
            std::free(p);
          }
          void* q = std::malloc(size * 3);
          std::memset(q, 0, size * 3);
          std::free(q);
          size = size % 4000 + 24;
        }
      });
  }
  hammering(const hammering&) = delete;
  hammering& operator=(const hammering&) = delete;
  ~hammering() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }

private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

struct outcome {
  int clean = 0;  // exited 0
  int hung = 0;   // still running at the limit: killed
  int failed = 0; // any other exit code
};

// Starts n children of lock_and_allocate with method, at_once at a time; each group has
// `limit` to exit, and a child still running then is killed, reaped and counted as hung.
outcome start_children(coproc::start_method method, int n, int at_once, coproc::duration limit) {
  return run([=]() -> coproc::awaitable<outcome> {
    outcome out;
    for (int first = 0; first < n; first += at_once) {
      std::vector<coproc::process> group;
      for (int i = first; i < std::min(first + at_once, n); ++i) {
        group.emplace_back(coproc::process_options{.method = method}, lock_and_allocate);
        group.back().start();
      }
      std::vector<coproc::awaitable<std::optional<int>>> joins;
      for (auto& p : group) joins.push_back(p.join(limit));
      auto codes = co_await coproc::gather(std::move(joins));
      for (std::size_t i = 0; i < group.size(); ++i) {
        if (!codes[i]) {
          ++out.hung;
          group[i].kill();
          co_await group[i].join();
        } else if (*codes[i] == 0) {
          ++out.clean;
        } else {
          ++out.failed;
        }
      }
    }
    co_return out;
  }());
}

} // namespace

DOCTEST_REGISTER_LISTENER("preload_fork_server", 2, coproc_test::preload_fork_server);

TEST_CASE("children started with spawn or forkserver while 4 threads hammer a mutex and malloc all "
          "exit 0") {
  for (auto method : threaded_methods) {
    CAPTURE(static_cast<int>(method));
    hammering threads;
    auto out = start_children(method, 500, 4, 60s);
    CHECK(out.clean == 500);
    CHECK(out.hung == 0);
    CHECK(out.failed == 0);
  }
}

#if !COPROC_TEST_TSAN
TEST_CASE("for the record: children forked while 4 threads hammer a mutex and malloc") {
  constexpr int n = 200;
  outcome out;
  {
    hammering threads;
    out = start_children(coproc::start_method::fork, n, 50, 2s);
  }
  MESSAGE("fork from a threaded program: ", out.hung, " of ", n,
          " children hung (killed after 2 s), ", out.clean, " exited 0, ", out.failed,
          " failed otherwise");
  CHECK(out.clean + out.hung + out.failed == n);
}
#endif
