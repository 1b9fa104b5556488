// A worker dies in the middle of a task (here it kills itself with SIGKILL, as the OOM
// killer would). Only that task fails, with worker_lost; the other tasks finish, a
// replacement worker starts, and the pool goes on. (Python's Pool hangs forever here.)
#include <coproc/coproc.hpp>
#include <coproc/pool.hpp>

#include <csignal>
#include <cstdio>
#include <thread>
#include <vector>

int slow_square(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return x * x;
}

int crash(int) {
  std::printf("worker %d: about to be killed\n", coproc::getpid());
  std::fflush(stdout);
  std::raise(SIGKILL);
  return 0;
}

coproc::awaitable<void> amain() {
  coproc::pool pool(co_await boost::asio::this_coro::executor, 2);
  std::vector<coproc::async_result<int>> squares;
  for (int i = 0; i < 6; ++i) squares.push_back(pool.apply_async(slow_square, i));
  auto doomed = pool.apply_async(crash, 0);

  try {
    co_await doomed.get();
  } catch (const coproc::worker_lost& e) {
    std::printf("the crashing task failed: %s (exitcode %d)\n", e.what(), e.exitcode());
  }
  for (int i = 0; i < 6; ++i) std::printf("square(%d) = %d\n", i, co_await squares[i].get());

  std::vector<int> items{7, 8, 9};
  auto more = co_await pool.map(slow_square, items);
  std::printf("the pool goes on: map gives %d %d %d\n", more[0], more[1], more[2]);
  pool.close();
  co_await pool.join();
  std::printf("done\n");
}

int main() { coproc::block_on(amain()); }
