// A three-stage pipeline across processes: a producer reads "lines", a parser process
// turns each into words, a counter process tallies them. Each stage passes its results
// down a queue; when a stage's input queue is closed and drained, it closes its output
// queue, so the end of the input flows down the pipeline and every process ends cleanly.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

coproc::awaitable<void> produce(coproc::queue<std::string> lines) {
  const char* text[] = {"the quick brown fox", "jumps over the lazy dog", "the dog sleeps",
                        "the fox runs away"};
  for (const char* line : text) {
    std::printf("[producer %d] %s\n", coproc::getpid(), line);
    co_await lines.put(line);
  }
  lines.close(); // no more input: the parser drains what is queued, then stops
}

coproc::awaitable<void> parse(coproc::queue<std::string> lines,
                              coproc::queue<std::vector<std::string>> words) {
  try {
    for (;;) {
      std::istringstream in(co_await lines.get());
      std::vector<std::string> split;
      for (std::string w; in >> w;) split.push_back(w);
      co_await words.put(std::move(split));
    }
  } catch (const coproc::queue_closed&) {
  }
  words.close();
}

coproc::awaitable<int> count(coproc::queue<std::vector<std::string>> words,
                             coproc::queue<std::map<std::string, int>> result) {
  std::map<std::string, int> tally;
  int batches = 0;
  try {
    for (;;) {
      for (auto& w : co_await words.get()) ++tally[w];
      ++batches;
    }
  } catch (const coproc::queue_closed&) {
  }
  std::printf("[counter %d] %d lines counted\n", coproc::getpid(), batches);
  co_await result.put(std::move(tally));
  co_return 0;
}

coproc::awaitable<void> main_coroutine() {
  coproc::queue<std::string> lines(2); // small bounds: the stages run in lockstep
  coproc::queue<std::vector<std::string>> words(2);
  coproc::queue<std::map<std::string, int>> result;
  coproc::process producer({.name = "producer"}, produce, lines);
  coproc::process parser({.name = "parser"}, parse, lines, words);
  coproc::process counter({.name = "counter"}, count, words, result);
  producer.start();
  parser.start();
  counter.start();
  auto tally = co_await result.get();
  for (auto* p : {&producer, &parser, &counter}) {
    int code = co_await p->join();
    std::printf("%s exited with %d\n", p->name().c_str(), code);
  }
  for (auto& [word, n] : tally)
    if (n > 1) std::printf("%-6s %d\n", word.c_str(), n);
}

int main() { coproc::block_on(main_coroutine()); }
