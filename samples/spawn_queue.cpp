// Three spawn children share one queue, passed to each as an argument: each sums the
// squares of its hundred numbers and puts its result; the parent gets the three results
// (in whatever order they come) and prints them by worker. A spawn child is a fresh image
// of this program: main_guard, the first statement of main, runs its work there, and the
// queue's shared memory and descriptors travel with it.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <map>
#include <vector>

struct result {
  int worker;
  long sum;
};

coproc::awaitable<void> sum_squares(coproc::queue<result> results, int worker, int first,
                                    int last) {
  long sum = 0;
  for (long i = first; i <= last; ++i) sum += i * i;
  result r{worker, sum};
  co_await results.put(r);
}

coproc::awaitable<void> gather(coproc::queue<result> results, int count) {
  std::map<int, long> by_worker;
  for (int i = 0; i < count; ++i) {
    result r = co_await results.get();
    by_worker[r.worker] = r.sum;
  }
  long total = 0;
  for (auto [worker, sum] : by_worker) {
    std::printf("worker %d: %ld\n", worker, sum);
    total += sum;
  }
  std::printf("total: %ld\n", total);
}

int main(int argc, char** argv) {
  coproc::main_guard(argc, argv); // in a spawn child, the child's work runs here
  coproc::queue<result> results;
  std::vector<coproc::process> workers;
  for (int w = 0; w < 3; ++w)
    workers.emplace_back(coproc::process_options{.method = coproc::start_method::spawn},
                         sum_squares, results, w, w * 100 + 1, w * 100 + 100);
  for (auto& p : workers) p.start();
  coproc::block_on(gather(results, 3));
  for (auto& p : workers) coproc::block_on(p.join());
}
