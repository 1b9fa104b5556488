// Seed 000, "join": join() waits for the child; join(1s) waits at most one second.
// The seed's child loops forever, so its join never returns; here the child prints
// three times, and a second, endless child shows join with a timeout.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>

using namespace std::chrono_literals;

void test(int rounds) {
  for (int i = 0; i < rounds; ++i) {
    std::printf("test\n");
    std::fflush(stdout);
    std::this_thread::sleep_for(300ms);
  }
}

coproc::awaitable<void> main_process() {
  coproc::process p(test, 3);
  p.start();
  co_await p.join(); // waits until the child has finished

  coproc::process endless(test, 1000);
  endless.start();
  auto code = co_await endless.join(1s); // at most 1 s
  std::printf("join(1s) returned %s\n", code ? "an exit code" : "nothing: still running");
  std::printf("主进程程序\n");
  endless.terminate();
  co_await endless.join();
}

int main() { coproc::block_on(main_process()); }
