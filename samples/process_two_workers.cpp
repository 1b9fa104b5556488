// Seed 001, "multiprocessing": two workers with arguments, one named "mark1";
// is_alive before and after joining the slower one.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

void test(const char* label, int interval) {
  std::printf("%s子进程运行中，pid=%d，父进程：%d\n", label, coproc::getpid(), coproc::getppid());
  auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(interval));
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("%s执行时间：%0.2f秒\n", label, took.count());
}

coproc::awaitable<void> main_process() {
  std::printf("父进程%d\n", coproc::getpid());
  coproc::process p1(test, "test1", 1);
  coproc::process p2({.name = "mark1"}, test, "test2", 2);
  p1.start();
  p2.start();

  std::printf("p2是否在运行： %s\n", p2.is_alive() ? "True" : "False");

  co_await p2.join();
  std::printf("p2是否在运行： %s\n", p2.is_alive() ? "True" : "False");
  co_await p1.join();
}

int main() { coproc::block_on(main_process()); }
