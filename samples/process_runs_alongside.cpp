// Seed 000, "Process": a child prints "test" every second while the main process
// prints its own line. The seed loops forever; this twin stops after three rounds
// by terminating the child.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

using namespace std::chrono_literals;

void test() {
  for (;;) {
    std::printf("test\n");
    std::fflush(stdout);
    std::this_thread::sleep_for(1s);
  }
}

coproc::awaitable<void> main_process() {
  coproc::process p(test);
  p.start();
  for (int round = 0; round < 3; ++round) {
    std::printf("---主进程程序---\n");
    std::fflush(stdout);
    co_await coproc::sleep(1s);
  }
  p.terminate();
  co_await p.join();
}

int main() { coproc::block_on(main_process()); }
