// Seed 004, "queues": a writer process puts 'A', 'B', 'C' into a queue, sleeping a random
// moment after each; once it has finished, a reader process gets them. Python's reader
// loops forever and is left running; here the parent closes the queue after the writer,
// so the reader drains the three items, gets queue_closed and ends by itself.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>

coproc::awaitable<void> writer(coproc::queue<std::string> q) {
  std::printf("Write Process: %d ...\n", coproc::getpid());
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> random_ms(0, 500);
  for (std::string value : {"A", "B", "C"}) {
    std::printf("Put %s to queue ...\n", value.c_str());
    co_await q.put(value);
    co_await coproc::sleep(std::chrono::milliseconds(random_ms(rng)));
  }
}

coproc::awaitable<void> reader(coproc::queue<std::string> q) {
  std::printf("Read Process: %d ...\n", coproc::getpid());
  try {
    for (;;) {
      std::string value = co_await q.get();
      std::printf("Get %s from queue ...\n", value.c_str());
    }
  } catch (const coproc::queue_closed&) {
    // drained: the writer is done
  }
}

int main() {
  coproc::queue<std::string> q;
  coproc::process pw(writer, q);
  coproc::process pr(reader, q);
  pw.start();
  coproc::block_on(pw.join());
  q.close();
  pr.start();
  coproc::block_on(pr.join());
}
