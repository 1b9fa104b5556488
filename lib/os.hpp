// lib/os.hpp — small pieces the library's sources share (private: not installed).
// Their home is lib/os.cpp.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <exception>
#include <optional>
#include <string>

namespace coproc::detail {

// Flushes the standard iostreams and every C stdio stream: before fork (so nothing
// buffered is printed twice), before _exit (which skips stdio's flush), and before a
// pool worker's answer (what a task printed comes before its result).
void flush_stdio();

// Leaves a child as _exit does (no atexit handlers, no static destructors), after
// flush_stdio. Through syscall(), which the parent has called already: a forked child's
// first call of a function through the PLT resolves it, in every child, and the parent
// never calls _exit.
[[noreturn]] void exit_child(int code);

// In a fresh child: the kernel kills it with SIGKILL when its parent dies, even by
// SIGKILL; it exits at once (_exit(1)) if the parent, whose pid is `parent`, already
// died before the request took effect.
void die_with_parent(int parent);

// Whether this build runs under a sanitizer (g++ defines __SANITIZE_*, clang-16 answers
// __has_feature).
#if defined(__has_feature)
#define COPROC_DETAIL_HAS_FEATURE(feature) __has_feature(feature)
#else
#define COPROC_DETAIL_HAS_FEATURE(feature) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || COPROC_DETAIL_HAS_FEATURE(address_sanitizer)
inline constexpr bool address_sanitized = true;
#else
inline constexpr bool address_sanitized = false;
#endif
#if defined(__SANITIZE_THREAD__) || COPROC_DETAIL_HAS_FEATURE(thread_sanitizer)
inline constexpr bool thread_sanitized = true;
#else
inline constexpr bool thread_sanitized = false;
#endif
#undef COPROC_DETAIL_HAS_FEATURE

// A sequentially consistent fence: what a commit needs between publishing its position
// and looking for sleepers, so that either it sees a sleeper or the sleeper sees it. On
// x86-64 a locked RMW on the stack orders every ordinary load and store as mfence does,
// and it is what g++ and Linux's smp_mb() use; clang-16 lowers
// std::atomic_thread_fence(seq_cst) to mfence, which costs 18 ns on these AMD EPYC
// machines against 2.5 ns (docs/platform.md). ThreadSanitizer sees only the standard fence.
inline void full_fence() noexcept {
#if defined(__x86_64__)
  if constexpr (!thread_sanitized) {
    asm volatile("lock orl $0, (%%rsp)" ::: "memory", "cc");
    return;
  }
#endif
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

// Runs f (which starts a thread) with every signal blocked, so coproc's threads never
// run the program's signal handlers.
template <class F> auto without_signals(F f) {
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  struct restore {
    sigset_t& old;
    ~restore() { ::pthread_sigmask(SIG_SETMASK, &old, nullptr); }
  } guard{old};
  return f();
}

// Runs `job(context)` on coproc's starter thread (made on first use, never ended), the
// caller waiting; on_lasting_thread's way there.
void run_on_starter_thread(void (*job)(void*), void* context);

// Runs `f` on a thread that lasts as long as this process, and returns what it returns or
// throws what it throws: on the calling thread if it is the main thread, otherwise on the
// starter thread. A child's PR_SET_PDEATHSIG follows the *thread* that forked or spawned
// it, not its process (prctl(2)): a daemon started from a thread that ends first (a
// std::thread's job, a thread pool's worker) would be killed with that thread. A child
// forked inside `f` on the starter thread goes on running `f` there, and must never return.
template <class F> auto on_lasting_thread(F f) -> decltype(f()) {
  if (::gettid() == ::getpid()) return f();
  std::optional<decltype(f())> result;
  std::exception_ptr error;
  auto run = [&] {
    try {
      result.emplace(f());
    } catch (...) {
      error = std::current_exception();
    }
  };
  run_on_starter_thread([](void* context) { (*static_cast<decltype(run)*>(context))(); }, &run);
  if (error) std::rethrow_exception(error);
  return std::move(*result);
}

// What a child prints when its body fails, as Python's multiprocessing does:
// "Process <name>:" and then `error` on the next line, on std::cerr.
void print_process_error(const std::string& name, const std::string& error);

// A set holding every signal number, glibc's internal ones (32, 33: thread
// cancellation, setxid) too. sigfillset leaves those two out, so a child spawned with
// POSIX_SPAWN_SETSIGDEF from it gets them ignored (glibc's spawn helper sets SIG_IGN for
// internal signals not in the set), and an ignored disposition survives exec:
// /proc/<child>/status would show SigIgn 0000000180000000.
sigset_t every_signal() noexcept;

// std::system_error(err, std::generic_category(), what).
[[noreturn]] void throw_errno(int err, const std::string& what);

} // namespace coproc::detail
