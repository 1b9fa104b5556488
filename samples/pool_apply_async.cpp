// Seed 001's Pool example: five workers, seven tasks with random sleeps, close, join.
//
//   pool = Pool(5)
//   for xx in range(0, 7):
//       pool.apply_async(test1, ("mark" + str(xx),))
//   print("--start--"); pool.close(); pool.join(); print("--end--")
//
// The sleeps are up to 1 s here (3 s in the seed) so the sample ends quickly.
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

void test1(std::string name) {
  std::printf("%s running, pid=%d, parent: %d\n", name.c_str(), coproc::getpid(),
              coproc::getppid());
  std::fflush(stdout);
  auto start = std::chrono::steady_clock::now();
  std::mt19937 rng(std::random_device{}());
  std::this_thread::sleep_for(
      std::chrono::duration<double>(std::uniform_real_distribution<>(0, 1)(rng)));
  std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  std::printf("%s took %0.2f s\n", name.c_str(), took.count());
}

coproc::awaitable<void> amain() {
  coproc::pool pool(co_await boost::asio::this_coro::executor, 5);
  for (int xx = 0; xx < 7; ++xx) pool.apply_async(test1, "mark" + std::to_string(xx));
  std::printf("--start--\n");
  std::fflush(stdout); // before the workers' lines, also when stdout is a pipe
  pool.close();
  co_await pool.join();
  std::printf("--end--\n");
}

int main() { coproc::block_on(amain()); }
