#include "os.hpp"

#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <new>
#include <system_error>
#include <thread>

namespace coproc::detail {

void flush_stdio() {
  std::cout.flush();
  std::cerr.flush();
  std::clog.flush();
  std::fflush(nullptr);
}

void exit_child(int code) {
  flush_stdio();
  for (;;) ::syscall(SYS_exit_group, code);
}

void die_with_parent(int parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
}

namespace {

// One job at a time: a start is a fork or a posix_spawn, and callers wait for it anyway.
// Made at load time (a forked child must not build it behind another thread's guard);
// leaked, as the thread may run while static destructors do.
struct starter {
  std::mutex callers; // held by the one caller whose job runs or waits
  std::mutex mutex;
  std::condition_variable posted, finished;
  void (*job)(void*) = nullptr;
  void* context = nullptr;
  bool running = false;
};

starter* const the_starter = [] {
  auto* s = new starter;
  // The thread is not in a forked child: it starts afresh there, made on first use. The
  // fork may have happened on the starter thread itself, or while a caller held the
  // mutexes, so they are made anew rather than unlocked.
  ::pthread_atfork(nullptr, nullptr, [] { ::new (static_cast<void*>(the_starter)) starter; });
  return s;
}();

void serve(starter* s) {
  ::pthread_setname_np(::pthread_self(), "coproc-starter");
  std::unique_lock lock(s->mutex);
  for (;;) {
    s->posted.wait(lock, [s] { return s->job != nullptr; });
    auto* job = s->job;
    lock.unlock();
    job(s->context);
    lock.lock();
    s->job = nullptr;
    s->finished.notify_all();
  }
}

} // namespace

void run_on_starter_thread(void (*job)(void*), void* context) {
  starter* s = the_starter;
  std::lock_guard turn(s->callers);
  std::unique_lock lock(s->mutex);
  if (!s->running) {
    without_signals([s] { std::thread(serve, s).detach(); });
    s->running = true;
  }
  s->job = job;
  s->context = context;
  s->posted.notify_one();
  s->finished.wait(lock, [s] { return s->job == nullptr; });
}

void print_process_error(const std::string& name, const std::string& error) {
  std::cerr << "Process " << name << ":\n" << error << std::endl;
}

sigset_t every_signal() noexcept {
  sigset_t all;
  std::memset(&all, 0xff, sizeof all);
  return all;
}

void throw_errno(int err, const std::string& what) {
  throw std::system_error(err, std::generic_category(), what);
}

} // namespace coproc::detail
