// Seed 003, "实例2": two workers, the second named "dongGe"; names, pids, is_alive.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

void worker(const char* label, int interval) {
  std::printf("%s,父进程(%d),当前进程(%d)\n", label, coproc::getppid(), coproc::getpid());
  auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(interval)); // suspended for `interval` s
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("%s,执行时间为'%0.2f'秒\n", label, took.count());
}

coproc::awaitable<void> main_process() {
  std::printf("进程ID：%d\n", coproc::getpid());

  // Unnamed processes are called Process-N, N counting from 1.
  coproc::process p1(worker, "worker_1", 2);
  coproc::process p2({.name = "dongGe"}, worker, "worker_2", 1);

  p1.start();
  p2.start();

  std::printf("p2.is_alive=%s\n", p2.is_alive() ? "True" : "False");

  std::printf("p1.name=%s\n", p1.name().c_str());
  std::printf("p1.pid=%d\n", p1.pid());
  std::printf("p2.name=%s\n", p2.name().c_str());
  std::printf("p2.pid=%d\n", p2.pid());
  std::fflush(stdout);

  // Waits for p1 (2 s); with co_await p1.join(1s) instead, p1 would still be alive below.
  co_await p1.join();
  std::printf("p1.is_alive=%s\n", p1.is_alive() ? "True" : "False");
  co_await p2.join();
}

int main() { coproc::block_on(main_process()); }
