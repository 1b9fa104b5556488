// Shared state between processes: four workers start together at a barrier, increment a
// shared value under its lock until it reaches the target, and the one that reaches it
// sets an event that stops the others. Every increment is counted exactly once, whoever
// made it, so the output is the same on every run.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <vector>

constexpr int workers = 4;
constexpr long target = 10000;

coproc::awaitable<void> worker(int me, coproc::barrier start, coproc::value<long> counter,
                               coproc::array<long> made, coproc::event stop) {
  co_await start.wait(); // all four (and the parent) at once
  auto lock = counter.get_lock();
  for (;;) {
    co_await lock.acquire();
    if (stop.is_set()) {
      lock.release();
      break;
    }
    counter.store(counter.load() + 1);
    made.view()[me] += 1;
    if (counter.load() == target) stop.set();
    lock.release();
  }
}

int main() {
  coproc::barrier start(workers + 1);
  coproc::value<long> counter(0);
  coproc::array<long> made(workers);
  coproc::event stop;
  std::vector<coproc::process> procs;
  for (int i = 0; i < workers; ++i) procs.emplace_back(worker, i, start, counter, made, stop);
  for (auto& p : procs) p.start();
  coproc::block_on([&]() -> coproc::awaitable<void> {
    co_await start.wait();
    std::printf("%d workers started together\n", workers);
    for (auto& p : procs) co_await p.join();
  }());
  long sum = 0;
  for (long n : made.view()) sum += n;
  std::printf("counter: %ld (target %ld)\n", counter.load(), target);
  std::printf("the workers' own counts add up to %ld\n", sum);
  std::printf("stop event set: %s\n", stop.is_set() ? "yes" : "no");
  return counter.load() == target && sum == target ? 0 : 1;
}
