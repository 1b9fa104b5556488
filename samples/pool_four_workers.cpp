// Seed 004's Pool example: four workers, five tasks that sleep random() * i seconds.
//
//   p = Pool(4)
//   for i in range(5):
//       p.apply_async(test_pool, args=(i,))
//   print("Waiting for all sub-processes done ...!"); p.close(); p.join()
//
// The sleeps are halved here so the sample ends within about 2 s.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

void test_pool(int i) {
  std::printf("Run tasks as process (%d)\n", coproc::getpid());
  std::fflush(stdout);
  auto start = std::chrono::steady_clock::now();
  std::mt19937 rng(std::random_device{}());
  double random = std::uniform_real_distribution<>(0, 1)(rng);
  std::this_thread::sleep_for(std::chrono::duration<double>(random * i / 2));
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("Tasks %d runs %0.2f seconds.\n", coproc::getpid(), took.count());
}

coproc::awaitable<void> amain() {
  std::printf("Process(%d) started\n", coproc::getpid());
  coproc::pool p(co_await boost::asio::this_coro::executor, 4);
  for (int i = 0; i < 5; ++i) p.apply_async(test_pool, i);
  std::printf("Waiting for all sub-processes done ...!\n");
  std::fflush(stdout); // before the workers' lines, also when stdout is a pipe
  p.close();
  co_await p.join();
  std::printf("All tasks completed ...!\n");
}

int main() { coproc::block_on(amain()); }
